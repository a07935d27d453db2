//! The clients: the receive table they share with the coordinator
//! ([`Shared`]), opening connections from spread source addresses with
//! retries, the reading clients (WebSocket, or Server-Sent Events with
//! `--sse`), and the slow WebSocket clients that never read.

use crate::args::{Args, Target, Transport};
use crate::clock::Clock;
use crate::products::sent_stamp;
use crate::report::keep_error;
use crate::sse::{EventStream, Item};
use crate::stats::{Sent, UNSET};
use futures_util::StreamExt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

/// The first frame every server under test sends to a new client; over
/// Server-Sent Events, the first comment.
const WELCOME: &str = r#"{"message":"Connecté au WebSocket"}"#;
/// Tries per client connection (TCP connect + WebSocket handshake or
/// event-stream request).
const CONNECT_ATTEMPTS: u32 = 5;
/// Bound on one connection attempt, handshake included.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for its welcome frame.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// A slow client still silent after draining this long was not closed.
const SLOW_PROBE_IDLE: Duration = Duration::from_secs(2);

/// A client's WebSocket connection.
type Ws = WebSocketStream<TcpStream>;

/// State shared by the client tasks and the coordinator. Client tasks write
/// their own row of `recv` only, so plain relaxed atomics suffice.
pub(crate) struct Shared {
    pub(crate) clock: Clock,
    events: usize,
    /// Clients `0..recipients` should receive every event, the others none.
    recipients: usize,
    /// `lg-<run id>-`: every slug of this run starts with it, and nothing else
    /// in an event frame contains it, so finding it identifies the event
    /// without parsing the JSON.
    slug_prefix: String,
    /// Row-major `recipients × events` receive instants (µs since `clock`'s
    /// epoch) or [`UNSET`].
    pub(crate) recv: Box<[AtomicU32]>,
    /// Per event, the send time (µs since the UNIX epoch) the POSTing
    /// loadgen wrote in it, read from the first frame of it that arrives; 0
    /// until then. A listen-only run, which POSTs nothing, has no other.
    stamps: Box<[AtomicU64]>,
    pub(crate) received: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) out_of_order: AtomicU64,
    /// Text frames after the welcome that name no event of this run.
    pub(crate) foreign: AtomicU64,
    /// Messages received by clients that should receive none.
    pub(crate) non_member_frames: AtomicU64,
    /// Readers whose connection ended before the run was over.
    pub(crate) disconnected: AtomicU64,
    /// Set once results are taken, so that ending connections no longer count.
    pub(crate) stopping: AtomicBool,
    pub(crate) connect: ConnectCounters,
}

/// Outcome counters of the connection phase.
#[derive(Default)]
pub(crate) struct ConnectCounters {
    pub(crate) ok: AtomicU64,
    /// Of `ok`, the clients that should receive the events.
    pub(crate) ok_recipients: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Clients whose welcome was wrong or missing.
    pub(crate) bad_welcome: AtomicU64,
    pub(crate) retries: AtomicU64,
    /// Connections whose attempt is over, successful or not.
    pub(crate) settled: AtomicU64,
    /// Instant (µs since epoch) the latest welcome arrived.
    pub(crate) last_us: AtomicU32,
    pub(crate) errors: Mutex<Vec<String>>,
}

impl ConnectCounters {
    fn note_error(&self, e: String) {
        keep_error(&mut self.errors.lock().unwrap(), e);
    }
}

impl Shared {
    /// Counts a reader's connection attempt that is over: its connection,
    /// or `None` if it failed.
    fn opened<T>(&self, attempt: Result<T, String>) -> Option<T> {
        let c = &self.connect;
        attempt
            .map_err(|e| {
                c.note_error(e);
                c.failed.fetch_add(1, Relaxed);
                c.settled.fetch_add(1, Relaxed);
            })
            .ok()
    }

    /// Counts reader `client` as connected, its welcome checked: the end of
    /// its connection phase.
    fn welcomed(&self, client: usize, welcome: Result<(), String>) {
        let c = &self.connect;
        if let Err(e) = welcome {
            c.note_error(e);
            c.bad_welcome.fetch_add(1, Relaxed);
        }
        c.ok.fetch_add(1, Relaxed);
        if client < self.recipients {
            c.ok_recipients.fetch_add(1, Relaxed);
        }
        c.last_us.fetch_max(self.now_us(), Relaxed);
        c.settled.fetch_add(1, Relaxed);
    }

    /// Fresh state for `recipients` of `events` events of run `run_id`.
    pub(crate) fn new(run_id: &str, recipients: usize, events: usize) -> Shared {
        Shared {
            clock: Clock::start(),
            events,
            recipients,
            slug_prefix: format!("lg-{run_id}-"),
            recv: (0..recipients * events)
                .map(|_| AtomicU32::new(UNSET))
                .collect(),
            stamps: (0..events).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            non_member_frames: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            connect: ConnectCounters::default(),
        }
    }

    pub(crate) fn now_us(&self) -> u32 {
        self.clock.now_us()
    }

    /// When each event was sent, as far as its frames said.
    pub(crate) fn stamped_sends(&self) -> Vec<Sent> {
        self.stamps
            .iter()
            .map(|s| match s.load(Relaxed) {
                0 => Sent::Unknown,
                unix_us => Sent::At(self.clock.instant_of(unix_us)),
            })
            .collect()
    }

    /// Index of the event of this run that `text` announces.
    fn event_index(&self, text: &str) -> Option<usize> {
        let start = text.find(&self.slug_prefix)? + self.slug_prefix.len();
        let digits = &text[start..];
        let end = digits
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        let index: usize = digits[..end].parse().ok()?;
        (index < self.events).then_some(index)
    }

    /// Records that `client` received `text`; `last` is the client's latest event index.
    fn record(&self, client: usize, text: &str, last: &mut Option<usize>) {
        let Some(event) = self.event_index(text) else {
            self.foreign.fetch_add(1, Relaxed);
            return;
        };
        let now = self.now_us();
        // Every frame of an event carries the same stamp: read the first.
        let stamp = &self.stamps[event];
        if stamp.load(Relaxed) == 0 {
            if let Some(unix_us) = sent_stamp(text) {
                stamp.store(unix_us, Relaxed);
            }
        }
        let slot = &self.recv[client * self.events + event];
        if slot.load(Relaxed) != UNSET {
            self.duplicates.fetch_add(1, Relaxed);
            return;
        }
        slot.store(now, Relaxed);
        self.received.fetch_add(1, Relaxed);
        // Products are created one after another, so each client must see them in order.
        if last.is_some_and(|l| event < l) {
            self.out_of_order.fetch_add(1, Relaxed);
        }
        *last = Some(event);
    }
}

/// Client-side WebSocket buffers kept small: 19,000 clients with the default
/// 128 KiB read buffer would need 2.4 GB.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(2048)
        .write_buffer_size(0)
}

/// A TCP connection to `target` from `src`, with `rcvbuf` as its receive
/// buffer if given.
async fn connect_from(
    target: &Target,
    src: Ipv4Addr,
    rcvbuf: Option<u32>,
) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    // Let connect() pick the source port per destination instead of bind()
    // reserving one per source address; tokio has no setter for this. Best
    // effort: without it each source address still gives ~28k ports.
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd, pointer and length describe a live c_int.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    if let Some(size) = rcvbuf {
        // Must precede connect: the window scale is fixed by the SYN.
        socket
            .set_recv_buffer_size(size)
            .map_err(|e| format!("SO_RCVBUF: {e}"))?;
    }
    socket
        .bind(SocketAddr::new(IpAddr::V4(src), 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = socket
        .connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    Ok(stream)
}

/// One TCP connect from `src` plus the WebSocket handshake for `url`.
async fn open_ws(
    target: &Target,
    url: &str,
    src: Ipv4Addr,
    rcvbuf: Option<u32>,
) -> Result<Ws, String> {
    let stream = connect_from(target, src, rcvbuf).await?;
    let (ws, _response) = client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// One TCP connect from `src` plus the request for the event stream at `path`.
async fn open_sse(target: &Target, path: &str, src: Ipv4Addr) -> Result<EventStream, String> {
    let stream = connect_from(target, src, None).await?;
    EventStream::open(stream, &target.authority, path).await
}

/// Runs `attempt`, a connection of client `index`, until it succeeds, with
/// retries and exponential backoff, for listen backlogs that overflow while
/// thousands of clients connect.
async fn retrying<T, F: Future<Output = Result<T, String>>>(
    index: usize,
    counters: &ConnectCounters,
    mut attempt: impl FnMut() -> F,
) -> Result<T, String> {
    let mut backoff = Duration::from_millis(50 + (index % 50) as u64);
    for attempt_number in 1.. {
        let error = match timeout(ATTEMPT_TIMEOUT, attempt()).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(e)) => e,
            Err(_) => "connect/handshake timed out".to_string(),
        };
        if attempt_number == CONNECT_ATTEMPTS {
            return Err(error);
        }
        counters.retries.fetch_add(1, Relaxed);
        sleep(backoff).await;
        backoff *= 2;
    }
    unreachable!()
}

fn source_ip(index: usize, spread: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(spread)) as u8)
}

/// Waits until the server has the client: for its welcome. A server that
/// sends none has it once the handshake is answered (ocha-realtime lists a
/// connection before it answers the upgrade).
async fn ready(ws: &mut Ws, welcome: bool) -> Result<(), String> {
    if !welcome {
        return Ok(());
    }
    match timeout(WELCOME_TIMEOUT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == WELCOME => Ok(()),
        other => Err(format!("bad welcome: {other:?}")),
    }
}

/// Waits until ocha-server has an event-stream client: for its welcome
/// (see [`EventStream::welcome`]).
async fn sse_ready(events: &mut EventStream) -> Result<(), String> {
    timeout(WELCOME_TIMEOUT, events.welcome(WELCOME))
        .await
        .unwrap_or_else(|_| Err("no welcome in time".into()))
}

/// Reading client `client`: connects to `target`, its node, as `args` say,
/// waits until the server has it (see [`ready`] and [`sse_ready`]), then
/// records every event, or, if it is not a recipient, counts whatever it
/// receives.
pub(crate) async fn reader(
    shared: Arc<Shared>,
    args: Arc<Args>,
    target: Arc<Target>,
    client: usize,
    gate: Arc<Semaphore>,
) {
    let c = &shared.connect;
    let permit = gate.acquire_owned().await.expect("semaphore never closed");
    let (src, path) = (source_ip(client, args.source_ips), args.client_path(client));
    match args.transport {
        Transport::WebSocket => {
            let url = target.ws_url(&path);
            let opened = retrying(client, c, || open_ws(&target, &url, src, None)).await;
            let Some(mut ws) = shared.opened(opened) else {
                return;
            };
            shared.welcomed(client, ready(&mut ws, args.expects_welcome()).await);
            drop(permit);
            read_ws(&shared, client, ws).await;
        }
        Transport::Sse => {
            let opened = retrying(client, c, || open_sse(&target, &path, src)).await;
            let Some(mut events) = shared.opened(opened) else {
                return;
            };
            shared.welcomed(client, sse_ready(&mut events).await);
            drop(permit);
            read_sse(&shared, client, events).await;
        }
    }
    if !shared.stopping.load(Relaxed) {
        shared.disconnected.fetch_add(1, Relaxed);
    }
}

/// Records the WebSocket frames of reader `client` until its connection ends.
async fn read_ws(shared: &Shared, client: usize, mut ws: Ws) {
    let recipient = client < shared.recipients;
    let mut last = None;
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(_) | Message::Binary(_)) if !recipient => {
                shared.non_member_frames.fetch_add(1, Relaxed);
            }
            Ok(Message::Text(t)) => shared.record(client, t.as_str(), &mut last),
            Ok(Message::Binary(b)) => match std::str::from_utf8(&b) {
                Ok(t) => shared.record(client, t, &mut last),
                Err(_) => {
                    shared.foreign.fetch_add(1, Relaxed);
                }
            },
            Ok(Message::Close(_)) | Err(_) => break,
            // tungstenite answers pings by itself on the next read.
            Ok(_) => {}
        }
    }
}

/// Records the events of reader `client`'s stream until it ends. Every
/// such reader is a recipient: only ocha-server serves event streams, and
/// it sends every event to all.
async fn read_sse(shared: &Shared, client: usize, mut events: EventStream) {
    let mut last = None;
    while let Some(item) = events.next().await {
        match item {
            // An event's data is the text of its WebSocket frame.
            Ok(Item::Block {
                data: Some(text), ..
            }) => shared.record(client, &text, &mut last),
            // Heartbeats, and blocks that only move the position.
            Ok(Item::Comment(_) | Item::Block { data: None, .. }) => {}
            Err(_) => break,
        }
    }
}

/// Opens the clients that never read, spread over the `nodes` as the
/// readers are; returns the open ones and the failure count.
pub(crate) async fn open_slow_clients(
    args: &Args,
    nodes: &[Arc<Target>],
    shared: &Arc<Shared>,
) -> (Vec<Ws>, u64) {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut set = JoinSet::new();
    for k in 0..args.slow_clients {
        let (index, spread, rcvbuf) = (args.clients + k, args.source_ips, args.slow_rcvbuf);
        let target = nodes[args.node_of(index)].clone();
        let (shared, gate) = (shared.clone(), gate.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore never closed");
            let counters = &shared.connect;
            let (url, src) = (target.ws_url("/"), source_ip(index, spread));
            retrying(index, counters, || {
                open_ws(&target, &url, src, Some(rcvbuf))
            })
            .await
            .map_err(|e| counters.note_error(format!("slow client: {e}")))
            .ok()
        });
    }
    let mut open_ones = Vec::with_capacity(args.slow_clients);
    let mut failed = 0;
    while let Some(result) = set.join_next().await {
        match result.ok().flatten() {
            Some(ws) => open_ones.push(ws),
            None => failed += 1,
        }
    }
    (open_ones, failed)
}

/// How a slow client's connection looked when finally read after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlowFate {
    /// The server sent a Close frame.
    CloseFrame,
    /// The stream ended or was reset without a Close frame.
    Dropped,
    /// Still open: nothing more arrived within [`SLOW_PROBE_IDLE`].
    Open,
}

/// Drains a slow client's backlog to see whether the server closed it.
pub(crate) async fn probe_slow(mut ws: Ws) -> SlowFate {
    loop {
        match timeout(SLOW_PROBE_IDLE, ws.next()).await {
            Err(_) => return SlowFate::Open,
            Ok(None) | Ok(Some(Err(_))) => return SlowFate::Dropped,
            Ok(Some(Ok(Message::Close(_)))) => return SlowFate::CloseFrame,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(events: usize, clients: usize) -> Shared {
        Shared::new("abc", clients, events)
    }

    #[test]
    fn event_index_finds_the_slug_with_or_without_spaces() {
        let s = shared(30, 1);
        let frame = r#"{"type":"new_product","product":{"_id":"1","slug":"lg-abc-12","name":"Loadgen abc #12"}}"#;
        assert_eq!(s.event_index(frame), Some(12));
        // Nodes of a cluster append the event's log id as the last field.
        let numbered = r#"{"type":"new_product","product":{"_id":"1","slug":"lg-abc-12","name":"Loadgen abc #12"},"id":"42"}"#;
        assert_eq!(s.event_index(numbered), Some(12));
        let id_first = r#"{"id":"7","type":"new_product","product":{"slug":"lg-abc-3"}}"#;
        assert_eq!(s.event_index(id_first), Some(3));
        assert_eq!(s.event_index(r#"{"slug": "lg-abc-7"}"#), Some(7));
        assert_eq!(
            s.event_index(r#"{"slug":"lg-abc-30"}"#),
            None,
            "out of range"
        );
        assert_eq!(s.event_index(r#"{"slug":"lg-other-1"}"#), None);
        assert_eq!(s.event_index(WELCOME), None);
    }

    #[test]
    fn record_counts_duplicates_and_reordering() {
        let s = shared(3, 2);
        let frame = |i: usize| format!(r#"{{"slug":"lg-abc-{i}"}}"#);
        let mut last = None;
        s.record(0, &frame(1), &mut last);
        s.record(0, &frame(0), &mut last);
        s.record(0, &frame(0), &mut last);
        s.record(0, "something else", &mut last);
        assert_eq!(s.received.load(Relaxed), 2);
        assert_eq!(s.out_of_order.load(Relaxed), 1);
        assert_eq!(s.duplicates.load(Relaxed), 1);
        assert_eq!(s.foreign.load(Relaxed), 1);
        assert_ne!(s.recv[0].load(Relaxed), UNSET);
        assert_eq!(s.recv[3].load(Relaxed), UNSET, "client 1 untouched");
    }

    #[test]
    fn send_times_come_from_the_events() {
        let s = shared(3, 2);
        let sent_at = s.clock.unix_us(1000);
        let frame = |i: usize, stamp: u64| {
            format!(r#"{{"slug":"lg-abc-{i}","description":"event {i}; sent at {stamp} (µs)"}}"#)
        };
        let (mut last0, mut last1) = (None, None);
        s.record(0, &frame(0, sent_at), &mut last0);
        // Only the first frame of an event is read for its stamp.
        s.record(1, &frame(0, sent_at + 500), &mut last1);
        s.record(1, r#"{"slug":"lg-abc-1"}"#, &mut last1);
        assert_eq!(
            s.stamped_sends(),
            [Sent::At(1000), Sent::Unknown, Sent::Unknown]
        );
    }
}
