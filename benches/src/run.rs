//! One load-generator run, phase by phase: connect the readers, open the
//! slow clients, create the products, wait for the deliveries, then read the
//! receive table and the server's figures into a [`Report`].
//!
//! Against the rooms example's channel, only the first `--channel-members`
//! readers are recipients (with `--broadcast`, all are): the receive table
//! has a row per recipient, and the other readers only count what they
//! receive, which should be nothing.
//!
//! With several `--ws-url` nodes, reader `i` connects to node `i mod n`,
//! and the report adds each node's time until all its clients have an
//! event. A `--listen-only` run skips the POSTs and waits for the events of
//! another loadgen with the same `--run-id`, which say when they were sent.

use crate::args::{Args, Target};
use crate::clients::{open_slow_clients, probe_slow, reader, Shared, SlowFate, ATTEMPT_TIMEOUT};
use crate::procfs;
use crate::products::{mint_token, post_all};
use crate::report::{failures, ConnectReport, NodeReport, Report, ServerReport, SlowReport};
use crate::stats::{self, Sent, Summary};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};

/// The runtime for [`run`], with `--threads` worker threads (one by default).
pub fn runtime(args: &Args) -> std::io::Result<Runtime> {
    // One thread by default: the client shares the machine with the server,
    // and a single core keeps the client's share of it the same for every server.
    if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
}

/// Runs the load against `args.url` and measures it.
///
/// Errors (a bad `--url`, no server listening, a token that cannot be minted)
/// mean the run could not start; everything that went wrong during the run is
/// in the report instead. Returns as soon as the figures are taken, with the
/// client tasks still on the [`runtime`]: tearing thousands of them down one
/// by one takes a while, so the binary leaves them to the process exit.
pub async fn run(args: Args) -> Result<Report, String> {
    // Every reader task reads its settings from them.
    let args = Arc::new(args);
    let target = Arc::new(Target::from_url(&args.url)?);
    let nodes = args
        .ws_bases()
        .into_iter()
        .map(|url| Target::from_url(url).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    // Minted before thousands of clients connect, so a bad secret fails
    // at once. A listen-only run sends none.
    let token = match &args.token {
        _ if args.listen_only => String::new(),
        Some(t) => t.clone(),
        None => mint_token(&args.jwt_secret)?,
    };
    let run_id = match &args.run_id {
        Some(id) => id.clone(),
        None => {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_nanos();
            format!(
                "{:08x}",
                (nanos as u32) ^ std::process::id().rotate_left(16)
            )
        }
    };
    let pid = args.server_pid;
    let mut probe = ServerProbe { pid, error: None };

    let recipients = args.recipients();
    let shared = Arc::new(Shared::new(&run_id, recipients, args.events));
    let clock = shared.clock;

    // Fail fast when nothing listens, instead of retrying every client.
    for node in &nodes {
        reachable(node.addr).await?;
    }
    if !args.listen_only {
        reachable(target.addr).await?;
    }

    // Connect phase.
    let baseline = probe.memory();
    let ws_urls: Vec<String> = nodes.iter().map(|n| n.ws_url("/")).collect();
    let reader_urls: Vec<String> = nodes.iter().map(|n| n.reader_url(args.transport)).collect();
    let poster = if args.listen_only {
        "another loadgen POSTs"
    } else {
        "we POST"
    };
    eprintln!(
        "loadgen {run_id}: connecting {} clients to {} ({} mode), events {poster} to {} for {recipients} of them",
        args.clients,
        reader_urls.join(" "),
        args.mode(),
        args.post_path(),
    );
    let overflows_before = procfs::listen_overflows().ok();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let connect_cpu_before = probe.cpu();
    let connect_start = shared.now_us();
    for client in 0..args.clients {
        let node = &nodes[args.node_of(client)];
        tokio::spawn(reader(
            shared.clone(),
            args.clone(),
            node.clone(),
            client,
            gate.clone(),
        ));
    }
    while shared.connect.settled.load(Relaxed) < args.clients as u64 {
        sleep(Duration::from_millis(10)).await;
    }
    // Taken as soon as the last client settled: accepting and greeting.
    let connect_cpu_after = probe.cpu();
    let c = &shared.connect;
    let connect_s = f64::from(c.last_us.load(Relaxed).saturating_sub(connect_start)) / 1e6;
    let connected = c.ok.load(Relaxed);
    let listen_overflows = match (overflows_before, procfs::listen_overflows().ok()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    eprintln!(
        "loadgen {run_id}: {connected} connected, {} failed in {connect_s:.2} s",
        c.failed.load(Relaxed)
    );
    sleep(Duration::from_millis(args.settle_ms)).await;
    let after_connect = probe.memory();

    let (slow_clients, slow_failed) = open_slow_clients(&args, &nodes, &shared).await;

    // Event phase.
    let cpu_before = probe.cpu();
    let self_cpu_before = procfs::cpu_time(None).ok();
    let (sent, post_errors) = if args.listen_only {
        // The line another process may wait for before it POSTs.
        eprintln!("loadgen {run_id}: listening for {} events", args.events);
        let wanted = args.events as u64 * c.ok_recipients.load(Relaxed);
        let idle = Duration::from_secs(args.timeout_s);
        let (mut received, mut since) = (0, Instant::now());
        while received < wanted && since.elapsed() < idle {
            sleep(Duration::from_millis(2)).await;
            let now = shared.received.load(Relaxed);
            if now > received {
                (received, since) = (now, Instant::now());
            }
        }
        (shared.stamped_sends(), Vec::new())
    } else {
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        {
            let (args, target, token, run_id) =
                (args.clone(), target.clone(), token.clone(), run_id.clone());
            std::thread::spawn(move || {
                let results = post_all(&args, &target, &token, &run_id, &clock);
                let _ = done_tx.send(results);
            });
        }
        let posts = loop {
            if let Ok(posts) = done_rx.try_recv() {
                break posts;
            }
            sleep(Duration::from_millis(2)).await;
        };
        let created = posts.sent.iter().filter(|s| **s != Sent::Failed).count();
        let wanted = created as u64 * c.ok_recipients.load(Relaxed);
        let deadline = posts.finished + Duration::from_secs(args.timeout_s);
        while shared.received.load(Relaxed) < wanted && Instant::now() < deadline {
            sleep(Duration::from_millis(2)).await;
        }
        (posts.sent, posts.errors)
    };
    let created = sent.iter().filter(|s| **s != Sent::Failed).count();
    let cpu_after = probe.cpu();
    let self_cpu_after = procfs::cpu_time(None).ok();
    let end_memory = probe.memory();
    // Once every event has drained, a connection should be back to its idle size.
    sleep(Duration::from_millis(args.settle_ms)).await;
    let drained_memory = probe.memory();
    shared.stopping.store(true, Relaxed);

    let recv: Vec<u32> = shared.recv.iter().map(|a| a.load(Relaxed)).collect();
    let deliveries = stats::analyze(&recv, &sent);
    let node_reports = if nodes.len() > 1 {
        nodes
            .iter()
            .enumerate()
            .map(|(node, target)| {
                let mut complete: Vec<u32> =
                    stats::all_have(&recv, &sent, (node..recipients).step_by(nodes.len()))
                        .into_iter()
                        .flatten()
                        .collect();
                NodeReport {
                    ws_url: target.ws_url("/"),
                    clients: (node..args.clients).step_by(nodes.len()).len(),
                    recipients: (node..recipients).step_by(nodes.len()).len(),
                    events_complete: complete.len(),
                    all_clients_ms: Summary::from_micros(&mut complete),
                }
            })
            .collect()
    } else {
        Vec::new()
    };

    let slow = if args.slow_clients > 0 {
        let ports: Vec<u16> = nodes.iter().map(|n| n.addr.port()).collect();
        let queues = procfs::send_queues(&ports).ok();
        let mut set = JoinSet::new();
        for ws in slow_clients {
            set.spawn(probe_slow(ws));
        }
        let fates: Vec<SlowFate> = set.join_all().await;
        let count = |f: SlowFate| fates.iter().filter(|&&x| x == f).count();
        let (frame, dropped) = (count(SlowFate::CloseFrame), count(SlowFate::Dropped));
        Some(SlowReport {
            requested: args.slow_clients,
            failed_to_open: slow_failed,
            closed_with_close_frame: frame,
            closed_without_close_frame: dropped,
            closed: frame + dropped,
            still_open: count(SlowFate::Open),
            server_send_queue_kib: queues.map(|q| q.bytes as f64 / 1024.0),
            server_send_queue_max_kib: queues.map(|q| q.max_bytes as f64 / 1024.0),
        })
    } else {
        None
    };

    let server = match (
        pid,
        baseline,
        after_connect,
        end_memory,
        drained_memory,
        cpu_before,
        cpu_after,
        connect_cpu_before.zip(connect_cpu_after),
    ) {
        (
            Some(pid),
            Some(base),
            Some(conn),
            Some(end),
            Some(drained),
            Some(cpu0),
            Some(cpu1),
            Some((connect0, connect1)),
        ) => {
            let per_client =
                |kib: u64| (kib as f64 - base.rss_kib as f64) / args.clients.max(1) as f64;
            let cpu = cpu1.saturating_sub(cpu0);
            let connect_cpu = connect1.saturating_sub(connect0);
            Some(ServerReport {
                pid,
                rss_baseline_kib: base.rss_kib,
                rss_connected_kib: conn.rss_kib,
                rss_per_idle_conn_kib: per_client(conn.rss_kib),
                rss_end_kib: end.rss_kib,
                rss_drained_kib: drained.rss_kib,
                rss_per_conn_drained_kib: per_client(drained.rss_kib),
                rss_peak_kib: end.peak_kib,
                cpu_ms: cpu.as_secs_f64() * 1e3,
                cpu_us_per_delivery: cpu_us_per(cpu, deliveries.received),
                cpu_us_per_publish: cpu_us_per(cpu, created as u64),
                connect_cpu_ms: connect_cpu.as_secs_f64() * 1e3,
                cpu_us_per_connect: cpu_us_per(connect_cpu, connected),
            })
        }
        _ => None,
    };
    let loadgen_cpu = match (self_cpu_before, self_cpu_after) {
        (Some(a), Some(b)) => cpu_us_per(b.saturating_sub(a), deliveries.received),
        _ => None,
    };

    let c = &shared.connect;
    let mut report = Report {
        url: args.url.clone(),
        ws_urls,
        mode: args.mode(),
        transport: args.transport,
        interval_ms: (!args.back_to_back && !args.listen_only).then_some(args.interval_ms),
        clients: args.clients,
        events: args.events,
        run_id,
        post_path: args.post_path(),
        recipients,
        connect: ConnectReport {
            ok: connected,
            failed: c.failed.load(Relaxed),
            bad_welcome: c.bad_welcome.load(Relaxed),
            retries: c.retries.load(Relaxed),
            listen_overflows,
            seconds: connect_s,
            rate_per_s: if connect_s > 0.0 {
                connected as f64 / connect_s
            } else {
                0.0
            },
            errors: c.errors.lock().unwrap().clone(),
        },
        posts_failed: args.events - created,
        post_errors,
        deliveries,
        nodes: node_reports,
        duplicates: shared.duplicates.load(Relaxed),
        out_of_order: shared.out_of_order.load(Relaxed),
        foreign_frames: shared.foreign.load(Relaxed),
        non_member_frames: shared.non_member_frames.load(Relaxed),
        disconnected: shared.disconnected.load(Relaxed),
        server,
        server_error: probe.error.take(),
        loadgen_cpu_us_per_delivery: loadgen_cpu,
        loadgen_peak_rss_kib: procfs::memory(None).ok().map(|m| m.peak_kib),
        slow,
        elapsed_s: clock.elapsed().as_secs_f64(),
        failures: Vec::new(),
        ok: false,
    };
    report.failures = failures(&report);
    report.ok = report.failures.is_empty();
    Ok(report)
}

/// Fails unless something accepts connections at `addr`.
async fn reachable(addr: SocketAddr) -> Result<(), String> {
    match timeout(ATTEMPT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
        Err(_) => Err(format!("cannot connect to {addr}: timed out")),
    }
}

/// Samples the server process's figures. A failed read (the server died) is
/// remembered and reported instead of aborting the run.
struct ServerProbe {
    pid: Option<u32>,
    error: Option<String>,
}

impl ServerProbe {
    fn memory(&mut self) -> Option<procfs::Memory> {
        let pid = self.pid?;
        self.keep(procfs::memory(Some(pid)), pid)
    }

    fn cpu(&mut self) -> Option<Duration> {
        let pid = self.pid?;
        self.keep(procfs::cpu_time(Some(pid)), pid)
    }

    fn keep<T>(&mut self, result: std::io::Result<T>, pid: u32) -> Option<T> {
        result
            .map_err(|e| {
                self.error
                    .get_or_insert_with(|| format!("cannot read /proc/{pid} (server gone?): {e}"));
            })
            .ok()
    }
}

/// Server or loadgen CPU time per delivery or per publish, in µs.
fn cpu_us_per(cpu: Duration, count: u64) -> Option<f64> {
    (count > 0).then(|| cpu.as_secs_f64() * 1e6 / count as f64)
}
