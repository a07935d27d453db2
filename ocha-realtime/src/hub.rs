//! [`Hub`]: the public face of the library, from upgrade requests to
//! publishing and shutdown.

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
use crate::registry::{Registry, Slot, Stats};
use crate::{frame, handshake, Config, Event, HandshakeError};

/// A set of WebSocket connections that receive every published [`Event`].
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
    /// Creates a hub with no connections.
    pub fn new(config: Config) -> Hub {
        Hub {
            registry: Arc::new(Registry::new(config)),
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
                Err(upgraded) => Connection::new(slot, TokioIo::new(upgraded)).await,
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
