//! Helpers for the end-to-end tests: a server on a port the system picks,
//! an HTTP client, WebSocket clients, the real binary, temporary
//! directories, and Postgres and Redis servers of the tests' own.

// Each test crate compiles this module and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ocha_realtime::Hub;
use ocha_server::api::App;
use ocha_server::auth::Keys;
use ocha_server::config::{Database, EventSettings};
use ocha_server::server;
use ocha_server::store::Store;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod chromium;
pub mod daemon;
pub mod docs_client;
pub mod metrics;
pub mod postgres;
pub mod redis;

/// The secret every test server and test token shares.
pub const SECRET: &str = "end-to-end-secret";

/// How long a test waits for anything that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ocha-server-e2e-{label}-"))
            .tempdir()
            .expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// The path of a database file in this directory.
    pub fn database(&self) -> PathBuf {
        self.path().join("ocha.db")
    }
}

/// A server running in this process through `server::run`, on a free port
/// of 127.0.0.1 and a database file.
pub struct TestServer {
    pub addr: SocketAddr,
    pub keys: Keys,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(database: &Path) -> TestServer {
        TestServer::with_hub(database, Hub::default()).await
    }

    /// A server whose WebSocket clients join `hub`, for tests that also
    /// attach connections to the hub directly.
    pub async fn with_hub(database: &Path, hub: Hub) -> TestServer {
        TestServer::serving(&Database::File(database.to_owned()), hub).await
    }

    /// A server on `database`, such as a Postgres one.
    pub async fn with_database(database: &Database) -> TestServer {
        TestServer::serving(database, Hub::default()).await
    }

    async fn serving(database: &Database, hub: Hub) -> TestServer {
        let store = Store::open(database).await.expect("open the database");
        let keys = Keys::from_secret(SECRET.as_bytes());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let app = App::start(store, keys.clone(), hub, &EventSettings::default())
            .await
            .expect("start the app");
        let task = tokio::spawn(server::run(listener, app, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            keys,
            stop,
            task,
        }
    }

    pub fn admin_token(&self) -> String {
        admin_token()
    }

    pub fn token(&self, role: &str) -> String {
        token(role)
    }

    /// Asks the server to shut down, without waiting.
    pub fn begin_shutdown(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        self.task
    }

    /// Shuts the server down and waits until `run` has returned.
    pub async fn stop(self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("server stops in time")
            .expect("server task does not panic");
    }
}

/// A token for `role` signed with [`SECRET`], valid for ten minutes.
pub fn token(role: &str) -> String {
    Keys::from_secret(SECRET.as_bytes()).issue(
        "65643f1adeadbeef010a0b0c",
        role,
        Duration::from_secs(600),
    )
}

pub fn admin_token() -> String {
    token("admin")
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Asserts the status, `content-type: application/json` and the exact body.
    pub fn assert_json(&self, status: u16, body: &str) {
        assert_eq!(
            (self.status.as_u16(), self.text()),
            (status, body),
            "unexpected reply"
        );
        self.assert_json_type();
    }

    pub fn assert_json_type(&self) {
        assert_eq!(self.headers["content-type"], "application/json");
    }
}

/// Sends one request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    exchange(addr, request.body(Full::new(body.into())).unwrap()).await
}

/// A `GET` with extra request headers.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    exchange(addr, request.body(Full::new(Bytes::new())).unwrap()).await
}

/// Sends `request` (with a `host` header added) on a fresh connection and
/// reads the whole reply.
async fn exchange(addr: SocketAddr, mut request: Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let host = http::HeaderValue::from_str(&addr.to_string()).unwrap();
    request.headers_mut().insert("host", host);
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("read body").to_bytes(),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path, None, Bytes::new()).await
}

pub async fn post_product(addr: SocketAddr, token: Option<&str>, body: &Value) -> Reply {
    send(
        addr,
        Method::POST,
        "/api/v1/products",
        token,
        body.to_string(),
    )
    .await
}

/// `PATCH /api/v1/products/{id}` with `body`.
pub async fn patch_product(
    addr: SocketAddr,
    token: Option<&str>,
    id: &str,
    body: impl Into<Bytes>,
) -> Reply {
    let path = format!("/api/v1/products/{id}");
    send(addr, Method::PATCH, &path, token, body).await
}

/// `DELETE /api/v1/products/{id}`.
pub async fn delete_product(addr: SocketAddr, token: Option<&str>, id: &str) -> Reply {
    let path = format!("/api/v1/products/{id}");
    send(addr, Method::DELETE, &path, token, Bytes::new()).await
}

/// The `_id` of the product in a reply's body.
pub fn product_id(reply: &Reply) -> String {
    reply.json()["product"]["_id"]
        .as_str()
        .expect("a product in the body")
        .to_owned()
}

/// A valid creation body; `n` makes slug and name unique.
pub fn product_body(n: u32) -> Value {
    json!({
        "slug": format!("matcha-latte-{n}"),
        "name": format!("Matcha Latte {n}"),
        "category": "tea",
        "description": "Ceremonial matcha with oat milk",
        "basePriceCHF": 6.5,
        "image": "/img/matcha.png"
    })
}

/// Creates a product and returns the 201 reply.
pub async fn create(server: &TestServer, n: u32) -> Reply {
    let reply = post_product(server.addr, Some(&server.admin_token()), &product_body(n)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    reply
}

/// The exact bytes of the product document inside a 201 body (or a 200
/// body of a read or an update).
pub fn raw_product(reply: &Reply) -> &str {
    ["Product created", "Product found", "Product updated"]
        .iter()
        .find_map(|message| {
            reply
                .text()
                .strip_prefix(&format!(r#"{{"message":"{message}","product":"#))
        })
        .and_then(|rest| rest.strip_suffix('}'))
        .expect("a body with a product")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects a WebSocket client to `/` and reads the welcome.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .expect("WebSocket handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(next_text(&mut ws).await, ocha_realtime::OCHA_WELCOME);
    ws
}

/// The next message, skipping pings and pongs; `None` once the stream ends.
pub async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<Message> {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a message in time")?
            .expect("a readable message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return Some(message);
        }
    }
}

pub async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    match next_message(ws).await {
        Some(Message::Text(text)) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Asserts that no data message arrives for [`QUIET`].
pub async fn assert_quiet<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) {
    if let Ok(message) = tokio::time::timeout(QUIET, next_message(ws)).await {
        panic!("expected silence, got {message:?}");
    }
}

/// Reads the close frame and returns its code, then completes the closing
/// handshake as a browser does (reply, then wait for the server to hang up).
pub async fn close_code(ws: &mut Ws) -> u16 {
    let code = match next_message(ws).await {
        Some(Message::Close(Some(frame))) => frame.code.into(),
        other => panic!("expected a close frame, got {other:?}"),
    };
    // Polling on sends the queued reply; the stream then ends.
    let drained = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = ws.next().await {}
    });
    drained
        .await
        .expect("the server hangs up after the closing handshake");
    code
}

/// The compiled `ocha-server` binary, with a clean environment: no
/// inherited `PORT`, `HOST`, `DATABASE_URL`, `JWT_SECRET`, `WS_*`, HTTP
/// limits, `CORS_ORIGINS` or `RUST_LOG`.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ocha-server"));
    for name in [
        "PORT",
        "HOST",
        "DATABASE_URL",
        "JWT_SECRET",
        "WS_HEARTBEAT_SECS",
        "WS_OUTBOUND_CAPACITY",
        "WS_SEND_BUFFER_BYTES",
        "WS_MAX_CONNECTIONS",
        "WS_MAX_MESSAGE_BYTES",
        "WS_ALLOWED_ORIGINS",
        "MAX_CONNECTIONS_PER_IP",
        "MAX_HTTP_CONNECTIONS",
        "HEADER_TIMEOUT_SECS",
        "BODY_TIMEOUT_SECS",
        "MAX_HEADER_BYTES",
        "CORS_ORIGINS",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The binary set to serve on a port the system picks (`PORT=0`) of
/// 127.0.0.1 with [`SECRET`] and a database in `dir`, for tests that add
/// variables before starting it.
pub fn server_command(dir: &TempDir) -> Command {
    let mut command = binary();
    command
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env(
            "DATABASE_URL",
            format!("sqlite:{}", dir.database().display()),
        )
        .env("JWT_SECRET", SECRET);
    command
}

/// Starts [`server_command`] and returns the process and the address it
/// listens on.
pub async fn start_binary(dir: &TempDir) -> (Child, SocketAddr) {
    let (child, addr, _) = start(&mut server_command(dir)).await;
    (child, addr)
}

/// Starts the binary as `command` sets it up, and waits until its log says
/// where it listens: it has bound the socket by then, so it accepts
/// connections. Returns the process, that address and the rest of the log.
pub async fn start(command: &mut Command) -> (Child, SocketAddr, Log) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ocha-server");
    let mut log = Log::of(&mut child);
    match log.find("ocha-server listening").await {
        Some(line) => (child, logged_addr(&line), log),
        None => panic!(
            "the server stopped before listening: {}",
            stderr(&mut child).await
        ),
    }
}

/// The `addr` field of a log line.
pub fn logged_addr(line: &str) -> SocketAddr {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("not an address in {line:?}"))
}

/// The binary's log (its standard output), line by line.
///
/// A task reads the pipe to its end whether or not the test reads the log,
/// so the server never blocks on a full pipe.
pub struct Log(mpsc::UnboundedReceiver<String>);

impl Log {
    /// Takes over `child`'s standard output, which must be piped.
    pub fn of(child: &mut Child) -> Log {
        let mut lines = BufReader::new(child.stdout.take().expect("a piped stdout")).lines();
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(line);
            }
        });
        Log(receiver)
    }

    /// Reads lines until one contains `needle`; `None` if the log ends first.
    pub async fn find(&mut self, needle: &str) -> Option<String> {
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.0.recv().await {
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} in time"))
    }

    /// Reads lines until one contains `needle`.
    pub async fn line(&mut self, needle: &str) -> String {
        self.find(needle)
            .await
            .unwrap_or_else(|| panic!("the log ended without {needle:?}"))
    }

    /// Reads lines until one contains `needle`, and returns them all.
    pub async fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let mut lines = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while let Some(line) = self.0.recv().await {
                let found = line.contains(needle);
                lines.push(line);
                if found {
                    return;
                }
            }
            panic!("the log ended without {needle:?}: {lines:#?}");
        })
        .await
        .unwrap_or_else(|_| panic!("no log line with {needle:?} in time"));
        lines
    }
}

/// Stops the binary with SIGTERM and asserts a clean exit.
pub async fn stop_binary(child: &mut Child) {
    sigterm(child);
    let status = exit_status(child).await;
    assert_eq!(status.code(), Some(0), "{}", stderr(child).await);
}

/// Asserts that the server at `addr` answers its health check.
pub async fn assert_healthy(addr: SocketAddr) {
    let reply = get(addr, "/api/v1/health").await;
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "Ignition!"));
}

/// A `/proc/<pid>/status` field of the process, in kB.
pub fn proc_status_kb(child: &Child, field: &str) -> u64 {
    let pid = child.id().expect("the process is running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().strip_suffix(" kB")?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Sends SIGTERM to the process.
pub fn sigterm(child: &Child) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits for the process to exit.
pub async fn exit_status(child: &mut Child) -> ExitStatus {
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the process exits in time")
        .expect("wait for the process")
}

/// Everything the process wrote to stderr (call after it exited).
pub async fn stderr(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut text).await;
    }
    text
}

/// Connects a WebSocket client to `/?since=SINCE` and returns it with its
/// welcome.
pub async fn ws_resume(addr: SocketAddr, since: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/?since={since}"))
        .await
        .expect("WebSocket handshake");
    let welcome = next_text(&mut ws).await;
    (ws, welcome)
}

/// The welcome of a client that resumed, at `position`.
pub fn welcome_at(position: u64) -> String {
    format!(r#"{{"message":"Connecté au WebSocket","lastEventId":"{position}"}}"#)
}

/// The id of an event, as a number.
pub fn event_id(event: &str) -> u64 {
    let event: Value = serde_json::from_str(event).expect("an event is JSON");
    event["id"]
        .as_str()
        .expect("an event has a string id")
        .parse()
        .expect("ids are decimal")
}

/// The name of the product an event carries.
pub fn event_product_name(event: &str) -> String {
    let event: Value = serde_json::from_str(event).expect("an event is JSON");
    event["product"]["name"]
        .as_str()
        .expect("a product event")
        .to_owned()
}

/// A Server-Sent Events client on `GET /api/v1/events`, reading the body
/// as it streams.
pub struct SseClient {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: hyper::body::Incoming,
    buffer: String,
}

impl SseClient {
    /// Opens the stream at `path` with extra request `headers`.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(connection);
        let mut request = Request::builder()
            .uri(path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("response in time")
            .expect("response");
        let (parts, body) = response.into_parts();
        SseClient {
            status: parts.status,
            headers: parts.headers,
            body,
            buffer: String::new(),
        }
    }

    /// The next block of lines up to a blank line (without it); `None`
    /// once the stream has ended cleanly.
    pub async fn next_block(&mut self) -> Option<String> {
        self.up_to("\n\n").await.map(|mut block| {
            block.truncate(block.len() - 2);
            block
        })
    }

    /// Everything up to and including the next `needle`; `None` once the
    /// stream has ended cleanly before it.
    pub async fn up_to(&mut self, needle: &str) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.find(needle) {
                return Some(self.buffer.drain(..at + needle.len()).collect());
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("more of the stream in time");
            match frame {
                Some(frame) => {
                    let frame = frame.expect("a readable stream");
                    if let Some(data) = frame.data_ref() {
                        self.buffer
                            .push_str(std::str::from_utf8(data).expect("UTF-8"));
                    }
                }
                None => {
                    assert!(self.buffer.is_empty(), "ended mid-event: {:?}", self.buffer);
                    return None;
                }
            }
        }
    }

    /// The next event's `data` and `id`, skipping comments and blocks that
    /// only set the id.
    pub async fn next_event(&mut self) -> (String, Option<String>) {
        loop {
            let block = self.next_block().await.expect("an event before the end");
            let lines: Vec<&str> = block
                .lines()
                .filter(|line| !line.starts_with(':'))
                .collect();
            let data: Vec<&str> = lines
                .iter()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            let id = lines
                .iter()
                .find_map(|line| line.strip_prefix("id: "))
                .map(str::to_owned);
            if !data.is_empty() {
                return (data.join("\n"), id);
            }
        }
    }
}
