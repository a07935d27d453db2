//! The accept loop, connection serving and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use ocha_realtime::Hub;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::api::App;
use crate::auth::{Keys, ADMIN_ROLE, DEFAULT_TTL, MIN_SECRET_BYTES};
use crate::config::{Config, Database};
use crate::response::Body;
use crate::store::{Store, StoreError};

/// How long shutdown waits for WebSocket closes and in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Pause after a failed `accept` (such as running out of file descriptors),
/// so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    run(listener, app, shutdown).await;
    Ok(())
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` completes, then
/// stops accepting, broadcasts every product committed so far, closes every
/// WebSocket with 1001 and lets in-flight requests finish (the closes and
/// the requests each bounded by [`SHUTDOWN_GRACE`]).
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    // Each connection task holds a receiver: a send asks them to wind down,
    // and `closed()` resolves once every one has finished.
    let (stop, _) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn_connection(stream, peer, app.clone(), stop.subscribe()),
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = &mut shutdown => break,
        }
    }

    drop(listener);
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

fn spawn_connection(stream: TcpStream, peer: SocketAddr, app: App, mut stop: watch::Receiver<()>) {
    let service = service_fn(move |request| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle_logged(&app, peer, request).await) }
    });
    tokio::spawn(async move {
        let connection = http1::Builder::new()
            // The timer enables hyper's header read timeout against idle sockets.
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.changed() => {
                // Finish the request in progress, if any, then close.
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            debug!(%peer, %error, "connection ended with an error");
        }
    });
}

async fn handle_logged(app: &App, peer: SocketAddr, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
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
