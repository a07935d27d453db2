//! The accept loop, connection serving and graceful shutdown, and the
//! limits that keep slow, huge and hostile clients from hurting the others.
//!
//! # Limits
//!
//! Each is set in [`HttpSettings`] from the environment (see [`crate::config`]).
//!
//! - **Connections.** At most `MAX_HTTP_CONNECTIONS` connections speak HTTP
//!   at once. Past it the server stops accepting: new connections wait in
//!   the kernel's listen backlog, at no cost to the process, and are served
//!   as others end; once the backlog is full the kernel drops connection
//!   attempts, which clients retry. Refusing them instead would take a
//!   descriptor and a response per refusal, the very things running out.
//!   Clients already connected are served as before. A connection upgraded
//!   to a WebSocket, or turned into an event stream, leaves this count for
//!   the hub's, `WS_MAX_CONNECTIONS` and `MAX_CONNECTIONS_PER_IP` (429),
//!   and leaves hyper too (an event stream once its response head is out:
//!   see `ocha_realtime::HandoffIo`); one streaming another long response
//!   stays in it while the response lasts.
//! - **Headers.** A request line and headers must arrive within
//!   `HEADER_TIMEOUT_SECS` of the connection being ready for them (hyper's
//!   `header_read_timeout`, which thereby also closes idle keep-alive
//!   connections) and hold at most `MAX_HEADER_BYTES`, else 431; hyper's
//!   read buffer is capped alike, so an unfinished head holds no more.
//!   hyper closes a connection whose headers time out without a word: this
//!   server then takes the socket back and answers 408 when part of a
//!   request had arrived. A connection that sent nothing (idle, or opened
//!   ahead of need, as browsers do) is closed silently, since a 408 on it
//!   would be read as the answer to the client's next request.
//! - **Bodies.** A body must arrive within `BODY_TIMEOUT_SECS` of its
//!   headers, else 408; a `Content-Length` over the 1 MiB limit gets 413
//!   before any of it is read, so a client that sent `Expect:
//!   100-continue` is never asked for it.
//! - **Failing `accept`.** When the process runs out of descriptors,
//!   `accept` is retried with a backoff doubling from 10 ms to 1 s, so the
//!   server recovers within a second of descriptors freeing up; the log
//!   gets a line when it starts failing, at most one a minute while it
//!   does, and one when it works again, with the count.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioTimer;
use ocha_realtime::{HandoffIo, Hub};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::api::App;
use crate::auth::{Keys, ADMIN_ROLE, DEFAULT_TTL, MIN_SECRET_BYTES};
use crate::config::{Config, Database, HttpSettings, MIN_HEADER_BYTES};
use crate::response::Body;
use crate::store::{Store, StoreError};

/// How long shutdown waits for WebSocket closes and in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Most HTTP connections by default, however high the open-file limit:
/// plenty for short API requests (WebSockets do not count), and as many
/// unfinished heads hold some 300 MiB at the default `MAX_HEADER_BYTES`
/// (about 28 KiB a connection, measured).
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 10_000;

/// Descriptors the default HTTP connection limit leaves to the rest of the
/// process: the listener, the database and its journal, Postgres and Redis
/// connections, tokio's own.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The first pause after a failed `accept`, doubled at each failure in a
/// row up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The longest pause after a failed `accept`: a second is as long as
/// connections wait once descriptors are free again.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How often a recurring condition (`accept` failing, the connection limit
/// reached) may be logged.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How long a connection answered 408 has to read the answer and hang up.
const LINGER: Duration = Duration::from_secs(1);

/// The answer to a request whose headers did not arrive in time, written
/// by this module since hyper writes none.
const HEADER_TIMEOUT_RESPONSE: &str = "HTTP/1.1 408 Request Timeout\r\n\
    content-type: application/json\r\n\
    content-length: 38\r\n\
    connection: close\r\n\
    \r\n\
    {\"message\":\"Request header timed out\"}";

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The database could not be opened or prepared.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// `REDIS_URL` was given without a shared database: nodes with a
    /// database each would give different events the same ids.
    #[error("REDIS_URL shares events between nodes, which must share their database: set DATABASE_URL=postgres://...")]
    RedisWithoutSharedDatabase,
    /// `REDIS_URL` could not be used.
    #[error("cannot use REDIS_URL: {0}")]
    Redis(#[source] ocha_realtime::redis::RedisError),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address from `HOST` and `PORT`.
        addr: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
}

/// Opens the database, listens on the configured address and serves until
/// `shutdown` completes.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    if config.events.redis_url.is_some() && !matches!(config.database, Database::Postgres(_)) {
        return Err(StartError::RedisWithoutSharedDatabase);
    }
    let store = Store::open(&config.database).await?;
    let keys = match &config.jwt_secret {
        Some(secret) => {
            // Refusing would lock out existing deployments and their tokens.
            if secret.len() < MIN_SECRET_BYTES {
                warn!(
                    bytes = secret.len(),
                    "JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes: tokens signed with it \
                     can be forged after a brute-force search; use {MIN_SECRET_BYTES} random \
                     bytes or more (openssl rand -base64 {MIN_SECRET_BYTES})"
                );
            }
            Keys::from_secret(secret.as_bytes())
        }
        None => {
            let keys = Keys::random();
            warn!(
                admin_token = %keys.issue("ocha-server", ADMIN_ROLE, DEFAULT_TTL),
                "JWT_SECRET is not set: signing with a random secret for this run only; \
                 here is an admin token valid for 24 hours"
            );
            keys
        }
    };
    let listen_error = |source| StartError::Listen {
        addr: config.addr,
        source,
    };
    let listener = TcpListener::bind(config.addr).await.map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    info!(%addr, database = %config.database, "ocha-server listening");
    let hub_config = config
        .hub
        .realtime_config()
        .history_size(config.events.history)
        .history_max_age(config.events.history_age);
    debug!(hub = ?hub_config, "WebSocket hub settings");

    let hub = Hub::new(hub_config);
    let app = App::start(store, keys, hub, &config.events)
        .await?
        .with_cors_origins(&config.cors_origins);
    run_with(listener, app, &config.http, shutdown).await;
    Ok(())
}

/// Serves HTTP and WebSocket on `listener` with the default
/// [`HttpSettings`] until `shutdown` completes; see [`run_with`].
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    run_with(listener, app, &HttpSettings::default(), shutdown).await;
}

/// Serves HTTP and WebSocket on `listener` within the limits of `http`
/// (see the [module documentation](self)) until `shutdown` completes, then
/// stops accepting, broadcasts every product committed so far, closes every
/// WebSocket with 1001 and lets in-flight requests finish (the closes and
/// the requests each bounded by [`SHUTDOWN_GRACE`]).
pub async fn run_with(
    listener: TcpListener,
    app: App,
    http: &HttpSettings,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = http.max_connections.unwrap_or_else(default_max_connections);
    info!(
        max_http_connections = max_connections,
        "HTTP connection limit"
    );
    debug!(?http, "HTTP limits");
    let mut acceptor = Acceptor::new(listener, max_connections);
    let serving = Arc::new(Serving {
        app: app.clone(),
        builder: http1_builder(http),
        body_timeout: http.body_timeout,
    });
    // Each connection task holds a receiver: a send asks them to wind down,
    // and `closed()` resolves once every one has finished.
    let (stop, _) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer, permit) = acceptor.next() => {
                spawn_connection(stream, peer, permit, serving.clone(), stop.subscribe());
            }
            () = &mut shutdown => break,
        }
    }

    drop(acceptor);
    info!("shutting down: closing WebSockets and finishing requests");
    let _ = stop.send(());
    let requests_done = tokio::time::timeout(SHUTDOWN_GRACE, stop.closed());
    let close_hub = async {
        // Broadcasts queued behind the commit hook would be refused once
        // the hub closes; a fan-out never waits on a client, so this is short.
        app.flush_broadcasts().await;
        app.hub().shutdown(SHUTDOWN_GRACE).await;
    };
    let ((), requests_done) = tokio::join!(close_hub, requests_done);
    if requests_done.is_err() {
        warn!("requests still running at the shutdown deadline were cut off");
    }
    info!("shutdown complete");
}

/// The HTTP connection limit when `MAX_HTTP_CONNECTIONS` is unset: the
/// open-file limit less [`RESERVED_DESCRIPTORS`], so that HTTP connections
/// alone never exhaust descriptors, and at most
/// [`DEFAULT_MAX_HTTP_CONNECTIONS`].
fn default_max_connections() -> usize {
    match open_file_limit() {
        Some(limit) => usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS))
            .unwrap_or(usize::MAX)
            .clamp(1, DEFAULT_MAX_HTTP_CONNECTIONS),
        None => DEFAULT_MAX_HTTP_CONNECTIONS,
    }
}

/// The soft `RLIMIT_NOFILE`; `None` when unlimited.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Without `RLIMIT_NOFILE`, no limit to derive from.
#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// The hyper settings every connection is served with.
fn http1_builder(http: &HttpSettings) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout)
        .max_header_size(http.max_header_bytes)
        // hyper's read buffer grows to ~400 KB by default while a head is
        // unfinished; a head may not be larger than this anyway.
        .max_buf_size(http.max_header_bytes.max(MIN_HEADER_BYTES));
    builder
}

/// Takes connections off the listener within the connection limit, riding
/// out failures to accept.
struct Acceptor {
    listener: TcpListener,
    /// One permit per HTTP connection, held by its task.
    permits: Arc<Semaphore>,
    max_connections: usize,
    at_limit: Throttle,
    failures: AcceptFailures,
}

impl Acceptor {
    fn new(listener: TcpListener, max_connections: usize) -> Acceptor {
        Acceptor {
            listener,
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            at_limit: Throttle::default(),
            failures: AcceptFailures::default(),
        }
    }

    /// The next connection, with its permit. Cancel-safe: a connection is
    /// never accepted and then dropped.
    async fn next(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(unlogged) = self.at_limit.tick(Instant::now()) {
                    warn!(
                        max_connections = self.max_connections,
                        since_last_line = unlogged,
                        "HTTP connection limit reached: new connections wait to be accepted"
                    );
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.failures.succeeded(Instant::now());
                    return (stream, peer, permit);
                }
                // The client gave up before it was accepted; nothing is wrong here.
                Err(error) if is_connection_error(&error) => {
                    debug!(%error, "connection lost before it was accepted");
                }
                Err(error) => {
                    let pause = self.failures.failed(&error, Instant::now());
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Errors of one incoming connection rather than of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
    )
}

/// Failures of `accept` in a row (out of descriptors, out of memory): how
/// long to pause, and a log that tells what happened without a line per
/// failure.
#[derive(Debug, Default)]
struct AcceptFailures {
    /// Failures since the last success.
    streak: u32,
    /// When the streak began.
    since: Option<Instant>,
    /// Whether the streak was logged, so that its end is too.
    logged: bool,
    log: Throttle,
}

impl AcceptFailures {
    /// Counts a failure at `now` and returns how long to pause.
    fn failed(&mut self, error: &io::Error, now: Instant) -> Duration {
        self.streak = self.streak.saturating_add(1);
        self.since.get_or_insert(now);
        if let Some(unlogged) = self.log.tick(now) {
            warn!(
                %error,
                failures = self.streak,
                since_last_line = unlogged,
                "cannot accept connections: they wait in the kernel backlog; retrying"
            );
            self.logged = true;
        }
        accept_backoff(self.streak)
    }

    /// Ends the streak, if any, on a successful `accept` at `now`.
    fn succeeded(&mut self, now: Instant) {
        let Some(since) = self.since.take() else {
            return;
        };
        if std::mem::take(&mut self.logged) {
            info!(
                failures = self.streak,
                lasted = ?now.duration_since(since),
                "accepting connections again"
            );
        }
        self.streak = 0;
    }
}

/// The pause after the `streak`th failure in a row: 10 ms, doubled each
/// time, at most [`MAX_ACCEPT_BACKOFF`].
fn accept_backoff(streak: u32) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    MIN_ACCEPT_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_ACCEPT_BACKOFF)
}

/// Lets a condition that may recur many times a second be logged at most
/// once per [`LOG_INTERVAL`], counting the times in between.
#[derive(Debug, Default)]
struct Throttle {
    last_line: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Counts one occurrence at `now`: `Some` with how many went unlogged
    /// since the last line when this one may be logged.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last_line {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_line = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// What every connection task shares.
struct Serving {
    app: App,
    builder: http1::Builder,
    body_timeout: Duration,
}

/// The address a client is counted by for `MAX_CONNECTIONS_PER_IP`, in
/// every request's extensions: its IP address, as IPv4 when it is
/// IPv4-mapped, and cut to its /64 network when it is IPv6, since one
/// subscriber usually holds a whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The address `peer` is counted by.
    pub fn of(peer: IpAddr) -> ClientAddress {
        match peer.to_canonical() {
            IpAddr::V6(ip) => {
                let network = u128::from(ip) & !(u128::from(u64::MAX));
                ClientAddress(IpAddr::V6(Ipv6Addr::from(network)))
            }
            ip => ClientAddress(ip),
        }
    }
}

/// A connection's place among the `MAX_HTTP_CONNECTIONS`, reachable from
/// its requests: a request that turns the connection into an event stream
/// gives the place up, as an upgrade to WebSocket does, since the hub
/// bounds its clients itself (`WS_MAX_CONNECTIONS`, the per-address cap).
/// Otherwise thousands of SSE clients would leave no room for a request.
#[derive(Debug, Clone)]
pub struct HttpPlace(Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>);

impl HttpPlace {
    /// Gives the connection's place up: it no longer counts as HTTP.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    serving: Arc<Serving>,
    mut stop: watch::Receiver<()>,
) {
    // Any connection may become an event stream, whose slow reader must not
    // hide in megabytes of kernel buffer; the cap only slows responses far
    // larger than this API's.
    serving.app.hub().tune(&stream);
    let client = ClientAddress::of(peer.ip());
    // Held while hyper serves the connection: until it closes, hands the
    // socket to the hub as a WebSocket, or becomes an event stream.
    let place = HttpPlace(Arc::new(std::sync::Mutex::new(Some(permit))));
    let app = serving.app.clone();
    let body_timeout = serving.body_timeout;
    // An event stream takes the socket from hyper once its head is out.
    let io = HandoffIo::new(stream);
    let handoff = io.handoff();
    let service = service_fn(move |mut request: Request<Incoming>| {
        let app = app.clone();
        request.extensions_mut().insert(client);
        request.extensions_mut().insert(place.clone());
        request.extensions_mut().insert(handoff.clone());
        let request = request.map(|body| TimedBody::new(body, body_timeout));
        async move { Ok::<_, Infallible>(handle_logged(&app, peer, request).await) }
    });
    tokio::spawn(async move {
        let mut connection = serving
            .builder
            .serve_connection(io, service)
            .with_upgrades();
        let result = tokio::select! {
            result = &mut connection => result,
            _ = stop.changed() => {
                // Finish the request in progress, if any, then close.
                Pin::new(&mut connection).graceful_shutdown();
                (&mut connection).await
            }
        };
        match result {
            Ok(()) => {}
            // hyper gave up on a request's headers, and left the socket
            // open; it says nothing, but the client may be told.
            Err(error) if error.is_timeout() => {
                if let Some(parts) = connection.into_parts() {
                    // Reading a request, hyper still has the socket: no
                    // event stream took it.
                    if let (false, Some(stream)) =
                        (parts.read_buf.is_empty(), parts.io.into_inner())
                    {
                        debug!(%peer, "request headers timed out");
                        answer_header_timeout(stream).await;
                    }
                }
            }
            Err(error) => debug!(%peer, %error, "connection ended with an error"),
        }
    });
}

/// Answers 408 on a connection whose request headers did not arrive in
/// time, then closes it.
async fn answer_header_timeout(mut stream: TcpStream) {
    let answer = async {
        stream.write_all(HEADER_TIMEOUT_RESPONSE.as_bytes()).await?;
        stream.shutdown().await?;
        // Closing a socket with unread bytes resets the connection, which
        // can destroy the answer before the client reads it: read what the
        // client still sends until it hangs up, for a moment.
        let mut discard = [0; 1024];
        while stream.read(&mut discard).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER, answer).await;
}

/// A request body that fails with a [`io::ErrorKind::TimedOut`] error once
/// its deadline passes, so that a client sending slowly, or not at all,
/// cannot hold a handler. The API answers that error with 408.
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    /// Set on the first wait only: most bodies are empty or already in.
    timer: Option<Pin<Box<Sleep>>>,
}

impl TimedBody {
    fn new(body: Incoming, timeout: Duration) -> TimedBody {
        TimedBody {
            body,
            deadline: Instant::now() + timeout,
            timer: None,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(io::Error::other)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request body did not arrive in time",
        ))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn handle_logged(app: &App, peer: SocketAddr, request: Request<TimedBody>) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = app.handle(request).await;
    info!(
        %peer,
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed = ?started.elapsed(),
        "request"
    );
    response
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
///
/// The handlers are installed when this is called, not when the future is
/// first polled, so a signal that arrives during startup is not lost.
#[cfg(unix)]
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!("interrupt received"),
            _ = terminate.recv() => info!("SIGTERM received"),
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    Ok(async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => info!("Ctrl-C received"),
            // Without a handler, only killing the process stops it.
            Err(_) => std::future::pending().await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_timeout_response_is_well_formed() {
        let (head, body) = HEADER_TIMEOUT_RESPONSE.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["message"], "Request header timed out");
    }

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_network() {
        let of = |ip: &str| ClientAddress::of(ip.parse().unwrap()).0.to_string();
        assert_eq!(of("203.0.113.7"), "203.0.113.7");
        assert_eq!(of("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(of("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(of("::1"), "::");
    }

    #[test]
    fn accept_backoff_doubles_up_to_a_second() {
        let pauses: Vec<_> = (1..=9).map(|n| accept_backoff(n).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(accept_backoff(u32::MAX), MAX_ACCEPT_BACKOFF);
    }

    #[test]
    fn a_throttle_lets_one_line_a_minute_through_and_counts_the_rest() {
        let start = Instant::now();
        let mut throttle = Throttle::default();
        assert_eq!(throttle.tick(start), Some(0));
        for second in 1..60 {
            assert_eq!(throttle.tick(start + Duration::from_secs(second)), None);
        }
        assert_eq!(throttle.tick(start + LOG_INTERVAL), Some(59));
        assert_eq!(throttle.tick(start + LOG_INTERVAL), None);
    }

    #[test]
    fn accept_failures_pause_longer_and_reset_on_success() {
        let start = Instant::now();
        let error = io::Error::from_raw_os_error(24);
        let mut failures = AcceptFailures::default();
        assert_eq!(failures.failed(&error, start), MIN_ACCEPT_BACKOFF);
        assert_eq!(failures.failed(&error, start), MIN_ACCEPT_BACKOFF * 2);
        failures.succeeded(start);
        assert_eq!(failures.failed(&error, start), MIN_ACCEPT_BACKOFF);
    }

    #[test]
    fn the_default_connection_limit_leaves_descriptors_spare() {
        let limit = default_max_connections();
        assert!((1..=DEFAULT_MAX_HTTP_CONNECTIONS).contains(&limit));
        if let Some(files) = open_file_limit() {
            assert!(limit as u64 <= files.saturating_sub(RESERVED_DESCRIPTORS).max(1));
        }
    }
}
