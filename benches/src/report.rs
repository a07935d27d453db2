//! What a run measured: the [`Report`] and its parts, the verdict on whether
//! the run passed, and its two outputs, a human-readable table and one JSON
//! object (whose field names `benches/compare.sh` and the smoke test read).

use crate::args::Transport;
use crate::stats::{DeliveryStats, Summary};
use serde::Serialize;

/// How many distinct error messages to keep for the report.
const KEPT_ERRORS: usize = 5;

/// Keeps the first few distinct error messages: thousands of clients failing
/// usually fail the same way.
pub(crate) fn keep_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < KEPT_ERRORS && !errors.contains(&e) {
        errors.push(e);
    }
}

/// Everything one run measured; printed as a table or as JSON.
#[derive(Debug, Serialize)]
pub struct Report {
    pub(crate) url: String,
    /// The nodes the readers connected to, as WebSocket URLs (whatever
    /// their transport, so that the nodes keep their names).
    pub(crate) ws_urls: Vec<String>,
    pub(crate) mode: &'static str,
    /// How the readers received the events.
    pub(crate) transport: Transport,
    pub(crate) interval_ms: Option<u64>,
    pub(crate) clients: usize,
    pub(crate) events: usize,
    pub(crate) run_id: String,
    /// Where the events were POSTed.
    pub(crate) post_path: String,
    /// Readers that should receive every event; the others, none.
    pub(crate) recipients: usize,
    pub(crate) connect: ConnectReport,
    pub(crate) posts_failed: usize,
    pub(crate) post_errors: Vec<String>,
    pub(crate) deliveries: DeliveryStats,
    /// Each node's figures, given more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) nodes: Vec<NodeReport>,
    pub(crate) duplicates: u64,
    pub(crate) out_of_order: u64,
    pub(crate) foreign_frames: u64,
    /// Messages received by readers that should receive none.
    pub(crate) non_member_frames: u64,
    pub(crate) disconnected: u64,
    pub(crate) server: Option<ServerReport>,
    /// Why server figures are missing although `--server-pid` was given.
    pub(crate) server_error: Option<String>,
    /// The load generator's own CPU time per delivery, to judge whether the
    /// client side was the bottleneck.
    pub(crate) loadgen_cpu_us_per_delivery: Option<f64>,
    /// The load generator's own peak RSS.
    pub(crate) loadgen_peak_rss_kib: Option<u64>,
    pub(crate) slow: Option<SlowReport>,
    pub(crate) elapsed_s: f64,
    pub(crate) failures: Vec<String>,
    pub(crate) ok: bool,
}

/// The connection phase: how the readers connected.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectReport {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) bad_welcome: u64,
    pub(crate) retries: u64,
    /// Host-wide listen-queue overflows while connecting (each a 1 s stall).
    pub(crate) listen_overflows: Option<u64>,
    pub(crate) seconds: f64,
    pub(crate) rate_per_s: f64,
    pub(crate) errors: Vec<String>,
}

/// One node's readers, when they connected to several.
#[derive(Debug, Serialize)]
pub(crate) struct NodeReport {
    pub(crate) ws_url: String,
    /// Readers that connected to this node, or tried to.
    pub(crate) clients: usize,
    /// Of them, those that should receive every event.
    pub(crate) recipients: usize,
    /// Events that every recipient of this node received.
    pub(crate) events_complete: usize,
    /// Per event, time from its POST until the last recipient of this node had it.
    pub(crate) all_clients_ms: Option<Summary>,
}

/// The server process's figures, read from `/proc` given `--server-pid`.
#[derive(Debug, Serialize)]
pub(crate) struct ServerReport {
    pub(crate) pid: u32,
    pub(crate) rss_baseline_kib: u64,
    pub(crate) rss_connected_kib: u64,
    pub(crate) rss_per_idle_conn_kib: f64,
    pub(crate) rss_end_kib: u64,
    /// RSS `--settle-ms` after the last delivery.
    pub(crate) rss_drained_kib: u64,
    pub(crate) rss_per_conn_drained_kib: f64,
    pub(crate) rss_peak_kib: u64,
    /// From the first POST to the last delivery, as are the two below.
    pub(crate) cpu_ms: f64,
    pub(crate) cpu_us_per_delivery: Option<f64>,
    /// Per successful POST: what one publish costs, however many it reaches.
    pub(crate) cpu_us_per_publish: Option<f64>,
    /// From the first connection attempt until every client was greeted
    /// (or failed): accepting, the handshake and the welcome.
    pub(crate) connect_cpu_ms: f64,
    /// Per client connected.
    pub(crate) cpu_us_per_connect: Option<f64>,
}

/// What became of the clients that never read (`--slow-clients`).
#[derive(Debug, Serialize)]
pub(crate) struct SlowReport {
    pub(crate) requested: usize,
    pub(crate) failed_to_open: u64,
    pub(crate) closed_with_close_frame: usize,
    pub(crate) closed_without_close_frame: usize,
    pub(crate) closed: usize,
    pub(crate) still_open: usize,
    /// Bytes queued in the server's kernel send buffers (all its connections
    /// on the port) after the run, before the slow clients are drained: what
    /// the server left to the kernel instead of dropping a slow client.
    pub(crate) server_send_queue_kib: Option<f64>,
    /// The longest single server-side send queue, in KiB.
    pub(crate) server_send_queue_max_kib: Option<f64>,
}

/// Why a run counts as failed; empty when it passed.
pub(crate) fn failures(r: &Report) -> Vec<String> {
    let mut f: Vec<String> = r.server_error.iter().cloned().collect();
    let mut check = |n: u64, what: &str| {
        if n > 0 {
            f.push(format!("{n} {what}"));
        }
    };
    check(r.connect.failed, "connections failed");
    check(r.connect.bad_welcome, "bad or missing welcome frames");
    check(r.posts_failed as u64, "POSTs failed");
    check(r.deliveries.lost, "deliveries lost");
    check(r.duplicates, "duplicate deliveries");
    check(r.out_of_order, "out-of-order deliveries");
    check(
        r.non_member_frames,
        "messages to readers that should get none",
    );
    check(r.disconnected, "readers disconnected during the run");
    check(
        r.slow.as_ref().map_or(0, |s| s.failed_to_open),
        "slow clients failed to open",
    );
    f
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

impl Report {
    /// Whether nothing was lost, duplicated, reordered or failed; the
    /// process exits 1 otherwise.
    pub fn passed(&self) -> bool {
        self.ok
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serializes")
    }

    /// Prints the report as a table on stdout.
    pub fn print_table(&self) {
        let mut mode = match self.interval_ms {
            Some(ms) => format!("interval {ms} ms"),
            None => self.mode.into(),
        };
        if self.transport == Transport::Sse {
            mode.push_str(", Server-Sent Events");
        }
        println!("loadgen run {} against {} ({mode})", self.run_id, self.url);
        if self.ws_urls.len() > 1 {
            println!("  nodes            {}", self.ws_urls.join(" "));
        }
        println!(
            "  publish          POST {}, for {} of the {} readers",
            self.post_path, self.recipients, self.clients
        );
        let c = &self.connect;
        println!(
        "  connect          {} connected, {} failed, {} bad welcome, {} retries, {} listen overflows; {:.2} s = {:.0} clients/s",
        c.ok,
        c.failed,
        c.bad_welcome,
        c.retries,
        c.listen_overflows.map_or("?".into(), |n| n.to_string()),
        c.seconds,
        c.rate_per_s
    );
        let d = &self.deliveries;
        println!(
            "  deliveries       expected {}, received {}, lost {}, duplicates {}, out of order {}",
            d.expected, d.received, d.lost, self.duplicates, self.out_of_order
        );
        println!(
            "  latency          p50 {}, p99 {}, max {}",
            ms(d.latency_ms.map(|s| s.p50)),
            ms(d.latency_ms.map(|s| s.p99)),
            ms(d.latency_ms.map(|s| s.max))
        );
        let all = if self.recipients < self.clients {
            "members"
        } else {
            "clients"
        };
        println!(
            "  all {all} have {}/{} events: p50 {}, p99 {}, max {}",
            d.events_complete,
            self.events,
            ms(d.all_clients_ms.map(|s| s.p50)),
            ms(d.all_clients_ms.map(|s| s.p99)),
            ms(d.all_clients_ms.map(|s| s.max))
        );
        for n in &self.nodes {
            println!(
                "  node {}: all {} of {} have {}/{} events: p50 {}, p99 {}, max {}",
                n.ws_url,
                n.recipients,
                n.clients,
                n.events_complete,
                self.events,
                ms(n.all_clients_ms.map(|s| s.p50)),
                ms(n.all_clients_ms.map(|s| s.p99)),
                ms(n.all_clients_ms.map(|s| s.max))
            );
        }
        println!(
            "  throughput       {} deliveries/s",
            d.deliveries_per_s.map_or("-".into(), |v| format!("{v:.0}"))
        );
        match &self.server {
            Some(s) => {
                println!(
                "  server RSS       {} KiB idle, {} KiB connected = {:.2} KiB per idle connection; end {} KiB, \
                 drained {} KiB = {:.2} KiB per connection, peak {} KiB",
                s.rss_baseline_kib, s.rss_connected_kib, s.rss_per_idle_conn_kib, s.rss_end_kib,
                s.rss_drained_kib, s.rss_per_conn_drained_kib, s.rss_peak_kib
            );
                let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} µs"));
                println!(
                    "  server CPU       {:.1} ms = {} per delivery, {} per publish",
                    s.cpu_ms,
                    us(s.cpu_us_per_delivery),
                    us(s.cpu_us_per_publish)
                );
                println!(
                    "  server CPU       {:.1} ms to accept and greet = {} per client",
                    s.connect_cpu_ms,
                    us(s.cpu_us_per_connect)
                );
            }
            None => match &self.server_error {
                Some(e) => println!("  server           {e}"),
                None => println!("  server           (no --server-pid: RSS and CPU not measured)"),
            },
        }
        println!(
            "  loadgen          {} CPU per delivery, peak RSS {} KiB",
            self.loadgen_cpu_us_per_delivery
                .map_or("-".into(), |v| format!("{v:.2} µs")),
            self.loadgen_peak_rss_kib
                .map_or("-".into(), |v| v.to_string())
        );
        if let Some(s) = &self.slow {
            println!(
            "  slow clients     {} requested, {} failed to open, {} closed by the server ({} with a Close frame), {} still open",
            s.requested, s.failed_to_open, s.closed, s.closed_with_close_frame, s.still_open
        );
            if let (Some(total), Some(max)) = (s.server_send_queue_kib, s.server_send_queue_max_kib)
            {
                println!(
                "  server send queues {total:.0} KiB in the kernel after the run (longest {max:.0} KiB)"
            );
            }
        }
        if self.foreign_frames > 0 {
            println!("  other frames     {}", self.foreign_frames);
        }
        if self.non_member_frames > 0 {
            println!("  to non-members   {}", self.non_member_frames);
        }
        for e in c.errors.iter().chain(&self.post_errors) {
            println!("  error            {e}");
        }
        println!("  elapsed          {:.1} s", self.elapsed_s);
        if self.ok {
            println!("  result           OK");
        } else {
            println!("  result           FAILED: {}", self.failures.join(", "));
        }
    }
}
