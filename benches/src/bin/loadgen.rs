//! Load generator for the realtime product fan-out.
//!
//! Opens N WebSocket clients against a server, checks each welcome frame,
//! creates M products through `POST /api/v1/products` and measures how each
//! `new_product` event reaches every client: losses, latency, time until the
//! last client has an event, deliveries per second and, given the server's
//! PID, its RSS per idle connection and CPU time per delivery.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen -- \
//!     --url http://127.0.0.1:5101 --clients 10000 --events 30 --jwt-secret s3
//! ```
//!
//! Run with `--help` for every option. Exits 1 when anything was lost,
//! duplicated, reordered or failed to connect, so that a small run (200 × 5)
//! serves as a smoke test.

use benches::procfs;
use benches::stats::{self, DeliveryStats, UNSET};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

/// The first frame every server under test sends to a new client.
const WELCOME: &str = r#"{"message":"Connecté au WebSocket"}"#;
/// Tries per client connection (TCP connect + WebSocket handshake).
const CONNECT_ATTEMPTS: u32 = 5;
/// Bound on one connection attempt, handshake included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for its welcome frame.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// A slow client still silent after draining this long was not closed.
const SLOW_PROBE_IDLE: Duration = Duration::from_secs(2);
/// How many distinct error messages to keep for the report.
const KEPT_ERRORS: usize = 5;

type Ws = WebSocketStream<TcpStream>;

const USAGE: &str = "\
usage: loadgen [options]

  --url URL                 server base URL (default http://127.0.0.1:5101);
                            WebSocket on ws://HOST:PORT/, products on /api/v1/products
  --clients N               reading WebSocket clients (default 1000)
  --events M                products to create (default 30)
  --interval-ms MS          latency mode: one POST every MS ms (default 200)
  --back-to-back            throughput mode: next POST as soon as the previous answered
  --server-pid PID          read server RSS and CPU time from /proc/PID (RSS per idle
                            connection is only meaningful on a freshly started server)
  --token T                 bearer token to send as is
  --jwt-secret S            mint an HS256 admin token (default $JWT_SECRET or dev-secret)
  --slow-clients K          also open K clients that never read (default 0)
  --slow-rcvbuf BYTES       SO_RCVBUF of the slow clients (default 4096)
  --description-bytes B     pad each product description to B bytes (default: short)
  --threads T               client runtime worker threads (default 1, leaving the
                            other core to the server)
  --source-ips S            spread clients over 127.0.0.1..127.0.0.S (default 4)
  --connect-concurrency C   handshakes in flight (default 100: below common listen
                            backlogs of 128, whose overflow costs a 1 s SYN retry)
  --settle-ms MS            pause after connecting, before sampling RSS (default 1500)
  --timeout-s S             wait this long after the last POST for deliveries (default 10)
  --json                    print one JSON object instead of the table
";

/// Command-line options; see [`USAGE`].
#[derive(Debug, Clone)]
struct Args {
    url: String,
    clients: usize,
    events: usize,
    interval_ms: u64,
    back_to_back: bool,
    server_pid: Option<u32>,
    token: Option<String>,
    jwt_secret: String,
    slow_clients: usize,
    slow_rcvbuf: u32,
    description_bytes: usize,
    threads: usize,
    source_ips: u8,
    connect_concurrency: usize,
    settle_ms: u64,
    timeout_s: u64,
    json: bool,
}

impl Args {
    fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut a = Args {
            url: "http://127.0.0.1:5101".into(),
            clients: 1000,
            events: 30,
            interval_ms: 200,
            back_to_back: false,
            server_pid: None,
            token: None,
            jwt_secret: std::env::var("JWT_SECRET").unwrap_or_else(|_| "dev-secret".into()),
            slow_clients: 0,
            slow_rcvbuf: 4096,
            description_bytes: 0,
            threads: 1,
            source_ips: 4,
            connect_concurrency: 100,
            settle_ms: 1500,
            timeout_s: 10,
            json: false,
        };
        while let Some(arg) = argv.next() {
            // Accept both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| argv.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
                v.parse()
                    .map_err(|_| format!("{flag}: not a valid number: {v}"))
            }
            match flag.as_str() {
                "--url" => a.url = value()?,
                "--clients" => a.clients = num(&flag, value()?)?,
                "--events" => a.events = num(&flag, value()?)?,
                "--interval-ms" => a.interval_ms = num(&flag, value()?)?,
                "--back-to-back" => a.back_to_back = true,
                "--server-pid" => a.server_pid = Some(num(&flag, value()?)?),
                "--token" => a.token = Some(value()?),
                "--jwt-secret" => a.jwt_secret = value()?,
                "--slow-clients" => a.slow_clients = num(&flag, value()?)?,
                "--slow-rcvbuf" => a.slow_rcvbuf = num(&flag, value()?)?,
                "--description-bytes" => a.description_bytes = num(&flag, value()?)?,
                "--threads" => a.threads = num(&flag, value()?)?,
                "--source-ips" => a.source_ips = num(&flag, value()?)?,
                "--connect-concurrency" => a.connect_concurrency = num(&flag, value()?)?,
                "--settle-ms" => a.settle_ms = num(&flag, value()?)?,
                "--timeout-s" => a.timeout_s = num(&flag, value()?)?,
                "--json" => a.json = true,
                "-h" | "--help" => return Err(String::new()),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if a.source_ips == 0 || a.source_ips == 255 {
            return Err("--source-ips must be within 1..=254".into());
        }
        if a.connect_concurrency == 0 || a.threads == 0 {
            return Err("--connect-concurrency and --threads must be at least 1".into());
        }
        Ok(a)
    }

    fn mode(&self) -> &'static str {
        if self.back_to_back {
            "back-to-back"
        } else {
            "interval"
        }
    }
}

/// Where the server under test listens.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    /// `host:port` as given, for the Host header and the WebSocket URL.
    authority: String,
}

impl Target {
    fn from_url(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad --url {url}: {e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {url} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        // Source addresses are 127.0.0.x, so only an IPv4 target makes sense.
        let addr = (authority.host(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("{authority} has no IPv4 address"))?;
        Ok(Target {
            addr,
            authority: format!("{}:{port}", authority.host()),
        })
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/", self.authority)
    }
}

/// State shared by the client tasks and the coordinator. Client tasks write
/// their own row of `recv` only, so plain relaxed atomics suffice.
struct Shared {
    epoch: Instant,
    events: usize,
    /// `lg-<run id>-`: every slug of this run starts with it, and nothing else
    /// in an event frame contains it, so finding it identifies the event
    /// without parsing the JSON.
    slug_prefix: String,
    /// Row-major `clients × events` receive instants (µs since `epoch`) or [`UNSET`].
    recv: Box<[AtomicU32]>,
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    /// Text frames after the welcome that name no event of this run.
    foreign: AtomicU64,
    /// Readers whose connection ended before the run was over.
    disconnected: AtomicU64,
    /// Set once results are taken, so that ending connections no longer count.
    stopping: AtomicBool,
    connect: ConnectCounters,
}

/// Outcome counters of the connection phase.
#[derive(Default)]
struct ConnectCounters {
    ok: AtomicU64,
    failed: AtomicU64,
    bad_welcome: AtomicU64,
    retries: AtomicU64,
    /// Connections whose attempt is over, successful or not.
    settled: AtomicU64,
    /// Instant (µs since epoch) the latest welcome arrived.
    last_us: AtomicU32,
    errors: Mutex<Vec<String>>,
}

impl ConnectCounters {
    fn note_error(&self, e: String) {
        keep_error(&mut self.errors.lock().unwrap(), e);
    }
}

/// Keeps the first few distinct error messages: thousands of clients failing
/// usually fail the same way.
fn keep_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < KEPT_ERRORS && !errors.contains(&e) {
        errors.push(e);
    }
}

impl Shared {
    /// Fresh state for `clients` readers of `events` events of run `run_id`.
    fn new(run_id: &str, clients: usize, events: usize) -> Shared {
        Shared {
            epoch: Instant::now(),
            events,
            slug_prefix: format!("lg-{run_id}-"),
            recv: (0..clients * events)
                .map(|_| AtomicU32::new(UNSET))
                .collect(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            connect: ConnectCounters::default(),
        }
    }

    fn now_us(&self) -> u32 {
        // Saturating: a run longer than 71 minutes just stops advancing.
        u32::try_from(self.epoch.elapsed().as_micros()).unwrap_or(UNSET - 1)
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

/// One TCP connect from `src` plus the WebSocket handshake.
async fn open_once(target: &Target, src: Ipv4Addr, rcvbuf: Option<u32>) -> Result<Ws, String> {
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
    let (ws, _response) = client_async_with_config(target.ws_url(), stream, Some(ws_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// [`open_once`] with retries and exponential backoff, for listen backlogs
/// that overflow while thousands of clients connect.
async fn open(
    target: &Target,
    index: usize,
    src: Ipv4Addr,
    rcvbuf: Option<u32>,
    counters: &ConnectCounters,
) -> Result<Ws, String> {
    let mut backoff = Duration::from_millis(50 + (index % 50) as u64);
    for attempt in 1.. {
        let error = match timeout(ATTEMPT_TIMEOUT, open_once(target, src, rcvbuf)).await {
            Ok(Ok(ws)) => return Ok(ws),
            Ok(Err(e)) => e,
            Err(_) => "connect/handshake timed out".to_string(),
        };
        if attempt == CONNECT_ATTEMPTS {
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

/// One reading client: connects, checks the welcome, then records every event.
async fn reader(
    shared: Arc<Shared>,
    target: Arc<Target>,
    client: usize,
    spread: u8,
    gate: Arc<Semaphore>,
) {
    let c = &shared.connect;
    let permit = gate.acquire_owned().await.expect("semaphore never closed");
    let mut ws = match open(&target, client, source_ip(client, spread), None, c).await {
        Ok(ws) => ws,
        Err(e) => {
            c.note_error(e);
            c.failed.fetch_add(1, Relaxed);
            c.settled.fetch_add(1, Relaxed);
            return;
        }
    };
    let welcome = timeout(WELCOME_TIMEOUT, ws.next()).await;
    match &welcome {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == WELCOME => {}
        other => {
            c.note_error(format!("bad welcome: {other:?}"));
            c.bad_welcome.fetch_add(1, Relaxed);
        }
    }
    c.ok.fetch_add(1, Relaxed);
    c.last_us.fetch_max(shared.now_us(), Relaxed);
    c.settled.fetch_add(1, Relaxed);
    drop(permit);

    let mut last = None;
    while let Some(msg) = ws.next().await {
        match msg {
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
    if !shared.stopping.load(Relaxed) {
        shared.disconnected.fetch_add(1, Relaxed);
    }
}

/// Opens the clients that never read; returns the open ones and the failure count.
async fn open_slow_clients(
    args: &Args,
    target: &Arc<Target>,
    shared: &Arc<Shared>,
) -> (Vec<Ws>, u64) {
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let mut set = JoinSet::new();
    for k in 0..args.slow_clients {
        let (target, shared, gate) = (target.clone(), shared.clone(), gate.clone());
        let (index, spread, rcvbuf) = (args.clients + k, args.source_ips, args.slow_rcvbuf);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore never closed");
            let counters = &shared.connect;
            open(
                &target,
                index,
                source_ip(index, spread),
                Some(rcvbuf),
                counters,
            )
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
enum SlowFate {
    /// The server sent a Close frame.
    CloseFrame,
    /// The stream ended or was reset without a Close frame.
    Dropped,
    /// Still open: nothing more arrived within [`SLOW_PROBE_IDLE`].
    Open,
}

/// Drains a slow client's backlog to see whether the server closed it.
async fn probe_slow(mut ws: Ws) -> SlowFate {
    loop {
        match timeout(SLOW_PROBE_IDLE, ws.next()).await {
            Err(_) => return SlowFate::Open,
            Ok(None) | Ok(Some(Err(_))) => return SlowFate::Dropped,
            Ok(Some(Ok(Message::Close(_)))) => return SlowFate::CloseFrame,
            Ok(Some(Ok(_))) => {}
        }
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

    fn cpu(&mut self) -> Option<u64> {
        let pid = self.pid?;
        self.keep(procfs::cpu_ticks(Some(pid)), pid)
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

/// Mints an HS256 admin token the way the Ocha API's login does.
fn mint_token(secret: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "id": "loadgen",
        "role": "admin",
        "iat": now,
        "exp": now + 24 * 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint token: {e}"))
}

/// What the POSTing thread hands back.
struct PostResults {
    /// Per event: instant (µs since epoch) its POST was sent, if it answered 201.
    sent: Vec<Option<u32>>,
    errors: Vec<String>,
    /// Instant the last POST answered.
    finished: Instant,
}

/// The product fields for event `index` of run `run`; slug and name are
/// unique per run so servers that reject duplicates accept them all.
fn product_body(run: &str, index: usize, description_bytes: usize) -> String {
    let mut description = format!("Created by the load generator, event {index}.");
    if description.len() < description_bytes {
        description.extend(std::iter::repeat_n(
            'x',
            description_bytes - description.len(),
        ));
    }
    serde_json::json!({
        "slug": format!("lg-{run}-{index}"),
        "name": format!("Loadgen {run} #{index}"),
        "category": "loadgen",
        "description": description,
        "basePriceCHF": 12.5,
        "image": "/images/loadgen.png",
    })
    .to_string()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(target: &Target) -> Result<Sender, String> {
    let stream = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("POST connect: {e}"))?;
    stream.set_nodelay(true).ok();
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("POST handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one POST; returns the instant it was sent if the server answered 201.
async fn post_one(
    sender: &mut Sender,
    target: &Target,
    token: &str,
    body: String,
    epoch: Instant,
) -> Result<u32, String> {
    let request = hyper::Request::post("/api/v1/products")
        .header("host", &target.authority)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("POST connection: {e}"))?;
    let sent = u32::try_from(epoch.elapsed().as_micros()).unwrap_or(UNSET - 1);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("POST: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("POST body: {e}"))?;
    let body = body.to_bytes();
    if status != hyper::StatusCode::CREATED {
        return Err(format!(
            "POST answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(sent)
}

/// Creates the products on this thread's own runtime, so that the instant a
/// POST is sent is not delayed by the client tasks' backlog.
fn post_all(args: &Args, target: &Target, token: &str, run: &str, epoch: Instant) -> PostResults {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut sent = vec![None; args.events];
        let mut errors = Vec::new();
        let mut sender: Option<Sender> = None;
        let start = tokio::time::Instant::now();
        let interval = Duration::from_millis(args.interval_ms);
        for (index, slot) in sent.iter_mut().enumerate() {
            if !args.back_to_back {
                // Scheduled from the start, so a slow answer doesn't shift later events.
                sleep_until(start + interval * index as u32).await;
            }
            if sender.as_ref().is_none_or(Sender::is_closed) {
                match http_connect(target).await {
                    Ok(s) => sender = Some(s),
                    Err(e) => {
                        keep_error(&mut errors, e);
                        continue;
                    }
                }
            }
            let sender_ref = sender.as_mut().expect("connected above");
            let body = product_body(run, index, args.description_bytes);
            match post_one(sender_ref, target, token, body, epoch).await {
                Ok(at) => *slot = Some(at),
                Err(e) => keep_error(&mut errors, e),
            }
        }
        PostResults {
            sent,
            errors,
            finished: Instant::now(),
        }
    })
}

/// Everything one run measured; printed as a table or as JSON.
#[derive(Debug, Serialize)]
struct Report {
    url: String,
    mode: &'static str,
    interval_ms: Option<u64>,
    clients: usize,
    events: usize,
    run_id: String,
    connect: ConnectReport,
    posts_failed: usize,
    post_errors: Vec<String>,
    deliveries: DeliveryStats,
    duplicates: u64,
    out_of_order: u64,
    foreign_frames: u64,
    disconnected: u64,
    server: Option<ServerReport>,
    /// Why server figures are missing although `--server-pid` was given.
    server_error: Option<String>,
    /// The load generator's own CPU time per delivery, to judge whether the
    /// client side was the bottleneck.
    loadgen_cpu_us_per_delivery: Option<f64>,
    /// The load generator's own peak RSS.
    loadgen_peak_rss_kib: Option<u64>,
    slow: Option<SlowReport>,
    elapsed_s: f64,
    failures: Vec<String>,
    ok: bool,
}

#[derive(Debug, Serialize)]
struct ConnectReport {
    ok: u64,
    failed: u64,
    bad_welcome: u64,
    retries: u64,
    /// Host-wide listen-queue overflows while connecting (each a 1 s stall).
    listen_overflows: Option<u64>,
    seconds: f64,
    rate_per_s: f64,
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ServerReport {
    pid: u32,
    rss_baseline_kib: u64,
    rss_connected_kib: u64,
    rss_per_idle_conn_kib: f64,
    rss_end_kib: u64,
    rss_peak_kib: u64,
    cpu_ms: f64,
    cpu_us_per_delivery: Option<f64>,
}

#[derive(Debug, Serialize)]
struct SlowReport {
    requested: usize,
    failed_to_open: u64,
    closed_with_close_frame: usize,
    closed_without_close_frame: usize,
    closed: usize,
    still_open: usize,
    /// Bytes queued in the server's kernel send buffers (all its connections
    /// on the port) after the run, before the slow clients are drained: what
    /// the server left to the kernel instead of dropping a slow client.
    server_send_queue_kib: Option<f64>,
    /// The longest single server-side send queue, in KiB.
    server_send_queue_max_kib: Option<f64>,
}

fn cpu_us_per_delivery(ticks: u64, deliveries: u64) -> Option<f64> {
    (deliveries > 0)
        .then(|| ticks as f64 * 1e6 / procfs::clock_ticks_per_second() as f64 / deliveries as f64)
}

async fn run(args: Args) -> Result<Report, String> {
    let target = Arc::new(Target::from_url(&args.url)?);
    let token = match &args.token {
        Some(t) => t.clone(),
        None => mint_token(&args.jwt_secret)?,
    };
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_nanos();
    let run_id = format!(
        "{:08x}",
        (nanos as u32) ^ std::process::id().rotate_left(16)
    );
    let pid = args.server_pid;
    let mut probe = ServerProbe { pid, error: None };

    let shared = Arc::new(Shared::new(&run_id, args.clients, args.events));
    let epoch = shared.epoch;

    // Fail fast when nothing listens, instead of retrying every client.
    match timeout(ATTEMPT_TIMEOUT, TcpStream::connect(target.addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("cannot connect to {}: {e}", target.addr)),
        Err(_) => return Err(format!("cannot connect to {}: timed out", target.addr)),
    }

    // Connect phase.
    let baseline = probe.memory();
    eprintln!(
        "loadgen {run_id}: connecting {} clients to {} ({} mode)",
        args.clients,
        target.ws_url(),
        args.mode()
    );
    let overflows_before = procfs::listen_overflows().ok();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let connect_start = shared.now_us();
    for client in 0..args.clients {
        tokio::spawn(reader(
            shared.clone(),
            target.clone(),
            client,
            args.source_ips,
            gate.clone(),
        ));
    }
    while shared.connect.settled.load(Relaxed) < args.clients as u64 {
        sleep(Duration::from_millis(10)).await;
    }
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

    let (slow_clients, slow_failed) = open_slow_clients(&args, &target, &shared).await;

    // Event phase.
    let cpu_before = probe.cpu();
    let self_cpu_before = procfs::cpu_ticks(None).ok();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    {
        let (args, target, token, run_id) =
            (args.clone(), target.clone(), token.clone(), run_id.clone());
        std::thread::spawn(move || {
            let results = post_all(&args, &target, &token, &run_id, epoch);
            let _ = done_tx.send(results);
        });
    }
    let posts = loop {
        if let Ok(posts) = done_rx.try_recv() {
            break posts;
        }
        sleep(Duration::from_millis(2)).await;
    };
    let created = posts.sent.iter().flatten().count() as u64;
    let wanted = created * connected;
    let deadline = posts.finished + Duration::from_secs(args.timeout_s);
    while shared.received.load(Relaxed) < wanted && Instant::now() < deadline {
        sleep(Duration::from_millis(2)).await;
    }
    let cpu_after = probe.cpu();
    let self_cpu_after = procfs::cpu_ticks(None).ok();
    let end_memory = probe.memory();
    shared.stopping.store(true, Relaxed);

    let recv: Vec<u32> = shared.recv.iter().map(|a| a.load(Relaxed)).collect();
    let deliveries = stats::analyze(&recv, &posts.sent);

    let slow = if args.slow_clients > 0 {
        let queues = procfs::send_queues(target.addr.port()).ok();
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
        cpu_before,
        cpu_after,
    ) {
        (Some(pid), Some(base), Some(conn), Some(end), Some(cpu0), Some(cpu1)) => {
            let ticks = cpu1.saturating_sub(cpu0);
            Some(ServerReport {
                pid,
                rss_baseline_kib: base.rss_kib,
                rss_connected_kib: conn.rss_kib,
                rss_per_idle_conn_kib: (conn.rss_kib as f64 - base.rss_kib as f64)
                    / args.clients.max(1) as f64,
                rss_end_kib: end.rss_kib,
                rss_peak_kib: end.peak_kib,
                cpu_ms: ticks as f64 * 1e3 / procfs::clock_ticks_per_second() as f64,
                cpu_us_per_delivery: cpu_us_per_delivery(ticks, deliveries.received),
            })
        }
        _ => None,
    };
    let loadgen_cpu = match (self_cpu_before, self_cpu_after) {
        (Some(a), Some(b)) => cpu_us_per_delivery(b.saturating_sub(a), deliveries.received),
        _ => None,
    };

    let c = &shared.connect;
    let mut report = Report {
        url: args.url.clone(),
        mode: args.mode(),
        interval_ms: (!args.back_to_back).then_some(args.interval_ms),
        clients: args.clients,
        events: args.events,
        run_id,
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
        posts_failed: args.events - created as usize,
        post_errors: posts.errors,
        deliveries,
        duplicates: shared.duplicates.load(Relaxed),
        out_of_order: shared.out_of_order.load(Relaxed),
        foreign_frames: shared.foreign.load(Relaxed),
        disconnected: shared.disconnected.load(Relaxed),
        server,
        server_error: probe.error.take(),
        loadgen_cpu_us_per_delivery: loadgen_cpu,
        loadgen_peak_rss_kib: procfs::memory(None).ok().map(|m| m.peak_kib),
        slow,
        elapsed_s: epoch.elapsed().as_secs_f64(),
        failures: Vec::new(),
        ok: false,
    };
    report.failures = failures(&report);
    report.ok = report.failures.is_empty();
    Ok(report)
}

/// Why a run counts as failed; empty when it passed.
fn failures(r: &Report) -> Vec<String> {
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

fn print_table(r: &Report) {
    let mode = match r.interval_ms {
        Some(ms) => format!("interval {ms} ms"),
        None => "back-to-back".into(),
    };
    println!("loadgen run {} against {} ({mode})", r.run_id, r.url);
    let c = &r.connect;
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
    let d = &r.deliveries;
    println!(
        "  deliveries       expected {}, received {}, lost {}, duplicates {}, out of order {}",
        d.expected, d.received, d.lost, r.duplicates, r.out_of_order
    );
    println!(
        "  latency          p50 {}, p99 {}, max {}",
        ms(d.latency_ms.map(|s| s.p50)),
        ms(d.latency_ms.map(|s| s.p99)),
        ms(d.latency_ms.map(|s| s.max))
    );
    println!(
        "  all clients have {}/{} events: p50 {}, max {}",
        d.events_complete,
        r.events,
        ms(d.all_clients_ms.map(|s| s.p50)),
        ms(d.all_clients_ms.map(|s| s.max))
    );
    println!(
        "  throughput       {} deliveries/s",
        d.deliveries_per_s.map_or("-".into(), |v| format!("{v:.0}"))
    );
    match &r.server {
        Some(s) => {
            println!(
                "  server RSS       {} KiB idle, {} KiB connected = {:.2} KiB per idle connection; end {} KiB, peak {} KiB",
                s.rss_baseline_kib, s.rss_connected_kib, s.rss_per_idle_conn_kib, s.rss_end_kib, s.rss_peak_kib
            );
            println!(
                "  server CPU       {:.0} ms = {} per delivery",
                s.cpu_ms,
                s.cpu_us_per_delivery
                    .map_or("-".into(), |v| format!("{v:.2} µs"))
            );
        }
        None => match &r.server_error {
            Some(e) => println!("  server           {e}"),
            None => println!("  server           (no --server-pid: RSS and CPU not measured)"),
        },
    }
    println!(
        "  loadgen          {} CPU per delivery, peak RSS {} KiB",
        r.loadgen_cpu_us_per_delivery
            .map_or("-".into(), |v| format!("{v:.2} µs")),
        r.loadgen_peak_rss_kib.map_or("-".into(), |v| v.to_string())
    );
    if let Some(s) = &r.slow {
        println!(
            "  slow clients     {} requested, {} failed to open, {} closed by the server ({} with a Close frame), {} still open",
            s.requested, s.failed_to_open, s.closed, s.closed_with_close_frame, s.still_open
        );
        if let (Some(total), Some(max)) = (s.server_send_queue_kib, s.server_send_queue_max_kib) {
            println!(
                "  server send queues {total:.0} KiB in the kernel after the run (longest {max:.0} KiB)"
            );
        }
    }
    if r.foreign_frames > 0 {
        println!("  other frames     {}", r.foreign_frames);
    }
    for e in c.errors.iter().chain(&r.post_errors) {
        println!("  error            {e}");
    }
    println!("  elapsed          {:.1} s", r.elapsed_s);
    if r.ok {
        println!("  result           OK");
    } else {
        println!("  result           FAILED: {}", r.failures.join(", "));
    }
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // One thread by default: the client shares the machine with the server,
    // and a single core keeps the client's share of it the same for every server.
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let json = args.json;
    let report = match runtime.block_on(run(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print_table(&report);
    }
    // Skip tearing down thousands of client tasks one by one: the OS closes the sockets.
    let code = if report.ok { 0 } else { 1 };
    use std::io::Write;
    std::io::stdout().flush().ok();
    std::process::exit(code)
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
    fn products_are_unique_and_complete() {
        let a: serde_json::Value = serde_json::from_str(&product_body("r1", 0, 0)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&product_body("r1", 1, 500)).unwrap();
        for field in [
            "slug",
            "name",
            "category",
            "description",
            "basePriceCHF",
            "image",
        ] {
            assert!(!a[field].is_null(), "{field} missing");
        }
        assert_ne!(a["slug"], b["slug"]);
        assert_ne!(a["name"], b["name"]);
        assert_eq!(b["description"].as_str().unwrap().len(), 500);
    }

    #[test]
    fn args_parse_flags_and_values() {
        let argv = "--url=http://127.0.0.1:5103 --clients 200 --events 5 --back-to-back --json";
        let a = Args::parse(argv.split(' ').map(String::from)).unwrap();
        assert_eq!((a.clients, a.events), (200, 5));
        assert!(a.back_to_back && a.json);
        assert_eq!(a.url, "http://127.0.0.1:5103");
        assert!(Args::parse(["--clients".to_string()].into_iter()).is_err());
        assert!(Args::parse(["--bogus".to_string()].into_iter()).is_err());
        let t = Target::from_url("http://127.0.0.1:5103").unwrap();
        assert_eq!(t.ws_url(), "ws://127.0.0.1:5103/");
    }
}
