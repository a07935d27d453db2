//! [`Hub`]: the public face of the library, from upgrade requests to
//! publishing and shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::connection::Connection;
use crate::registry::{Handler, Registry, Slot, Stats};
use crate::{frame, handshake, Config, ConnectionId, Event, HandshakeError, Message};

/// A set of WebSocket connections that receive every published [`Event`],
/// and whose messages go to the application's handler, if it has one.
///
/// Cloning is cheap and every clone is the same hub, so hand one to each
/// request handler. See the [crate documentation](crate) for an example.
#[derive(Debug, Clone)]
pub struct Hub {
    registry: Arc<Registry>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(Config::default())
    }
}

impl Hub {
    /// Creates a hub with no connections. It reads what clients send only
    /// to answer pings and closes, and discards their messages unbuffered.
    pub fn new(config: Config) -> Hub {
        Hub {
            registry: Arc::new(Registry::new(config, None)),
        }
    }

    /// Creates a hub that hands every whole message a client sends to
    /// `handler`, with this hub (to reply, say) and the sender's id.
    ///
    /// A connection reads nothing more until the future `handler` returned
    /// for its last message completes, so an application that falls behind
    /// slows its clients down through TCP instead of buffering their
    /// messages; the heartbeat does not count a waiting client as silent.
    /// Messages are reassembled up to [`Config::max_message_size`], and text
    /// is checked to be UTF-8 (the connection closes with 1007 otherwise). A connection that closes
    /// stops delivering messages; a handler's future still running then
    /// runs until the connection is gone and is dropped with it.
    ///
    /// ```
    /// use ocha_realtime::{Config, Hub};
    ///
    /// // An echo server.
    /// let hub = Hub::with_handler(Config::default(), |hub, from, message| async move {
    ///     hub.send(from, &message);
    /// });
    /// ```
    pub fn with_handler<F, Fut>(config: Config, handler: F) -> Hub
    where
        F: Fn(Hub, ConnectionId, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: Handler = Box::new(move |registry, from, message| {
            Box::pin(handler(Hub { registry }, from, message))
        });
        Hub {
            registry: Arc::new(Registry::new(config, Some(handler))),
        }
    }

    /// Answers a WebSocket upgrade request: checks the handshake, returns the
    /// `101 Switching Protocols` response to send, and runs the connection
    /// on a new task once hyper hands over the socket.
    ///
    /// The request may have any body type (hyper's `Incoming`, a framework's
    /// own body, or one you mapped), but must come from a hyper HTTP/1
    /// connection served `.with_upgrades()`, inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`] when the request is refused; send its
    /// [`into_response`](HandshakeError::into_response) to the client.
    pub fn upgrade<B>(
        &self,
        mut request: Request<B>,
    ) -> Result<Response<Full<Bytes>>, HandshakeError> {
        let accept = handshake::check(&request, &self.registry.config)?;
        if self.registry.is_shutting_down() {
            return Err(HandshakeError::ShuttingDown);
        }
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        let slot = Slot::acquire(&self.registry).ok_or(HandshakeError::TooManyConnections)?;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => return tracing::debug!(%error, "WebSocket upgrade failed"),
            };
            // Over a plain TCP socket, drive it directly: no boxed I/O, and
            // no Nagle delay holding back small event frames.
            match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let stream = parts.io.into_inner();
                    tune(&stream, &slot.0.config);
                    let mut connection = Connection::new(slot, stream);
                    // Frames the client sent right behind its handshake. The
                    // bytes are a view of hyper's whole read buffer: let go.
                    connection.receive(&parts.read_buf);
                    drop(parts.read_buf);
                    connection.await
                }
                Err(upgraded) => {
                    warn_untuned(&slot.0);
                    Connection::new(slot, TokioIo::new(upgraded)).await
                }
            }
        });
        Ok(handshake::switching_protocols(accept))
    }

    /// Runs a connection whose WebSocket handshake is already done, over any
    /// byte stream, until it closes.
    ///
    /// For servers that do their own handshake and for in-process clients
    /// (tests, benchmarks). The caller decided to admit the connection, so
    /// [`Config::max_connections`] is not checked here.
    pub async fn serve<IO>(&self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        Connection::new(Slot::admitted(&self.registry), io).await;
    }

    /// Sends `event` to every connection and returns how many it reached.
    ///
    /// The event is serialized and framed once; every connection queues the
    /// same bytes. Never waits on a client: one that is `outbound_capacity`
    /// messages behind is closed as a slow consumer instead.
    pub fn publish(&self, event: &Event) -> usize {
        // Events hold only strings, booleans, finite-or-null numbers and
        // sequences of them, which serde_json always serializes.
        let json = serde_json::to_vec(event).expect("events always serialize");
        self.registry.publish(&frame::text(&json))
    }

    /// Sends `message` to one connection; false if it is gone, closing, or
    /// just found too far behind (it is then closed as a slow consumer).
    pub fn send(&self, to: ConnectionId, message: &Message) -> bool {
        self.registry.send(to, &frame::message(message))
    }

    /// Sets the socket options the hub relies on, `TCP_NODELAY` and the
    /// [`Config::send_buffer_size`] cap, on an accepted socket.
    ///
    /// Upgrades served by `hyper::server::conn::http1` are tuned without
    /// this. Servers that hand hyper a wrapped socket, such as `axum::serve`
    /// and hyper-util's `auto` builder, hide the socket from the hub: tune
    /// each one as it is accepted instead, or slow clients can hide in
    /// megabytes of kernel buffers. The cap then applies to plain HTTP
    /// connections too, which only slows very large responses.
    ///
    /// ```no_run
    /// # async fn run(router: axum::Router) -> std::io::Result<()> {
    /// use axum::serve::ListenerExt;
    /// use ocha_realtime::Hub;
    ///
    /// let hub = Hub::default();
    /// let tuner = hub.clone();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:5001")
    ///     .await?
    ///     .tap_io(move |socket| tuner.tune(socket));
    /// axum::serve(listener, router).await
    /// # }
    /// ```
    pub fn tune(&self, socket: &TcpStream) {
        self.registry.sockets_tuned.store(true, Ordering::Relaxed);
        tune(socket, &self.registry.config);
    }

    /// The hub's counters now.
    pub fn stats(&self) -> Stats {
        self.registry.stats()
    }

    /// Closes every connection with 1001 (going away) after sending what is
    /// queued for it, and refuses new upgrades with 503 from now on.
    ///
    /// Returns once every connection is gone, or when `deadline` passes;
    /// connections still open then are dropped by their own close timeout.
    pub async fn shutdown(&self, deadline: Duration) {
        self.registry.close_all(deadline).await;
    }
}

/// Warns, once per hub, that upgraded sockets arrive wrapped and untuned.
fn warn_untuned(registry: &Registry) {
    if !registry.sockets_tuned.load(Ordering::Relaxed)
        && !registry.untuned_warned.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "WebSocket upgrades arrive on a wrapped transport (axum::serve, hyper-util's \
             auto builder): TCP_NODELAY and the send buffer cap are not set, so slow \
             clients can hide in kernel buffers; call Hub::tune on each accepted socket"
        );
    }
}

/// Socket options for an upgraded connection. Failing to set them costs
/// latency or memory, not correctness, so errors are only logged.
fn tune(stream: &TcpStream, config: &Config) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(bytes) = config.send_buffer_size {
        if let Err(error) = socket2::SockRef::from(stream).set_send_buffer_size(bytes) {
            tracing::debug!(%error, "cannot set SO_SNDBUF");
        }
    }
}
