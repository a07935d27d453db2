//! The hub: admission, the connection registry, broadcasts, heartbeats and
//! shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use slab::Slab;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connection::Connection;
use crate::outbox::{CloseReason, Outbox, Pushed};
use crate::{frame, handshake, Config, Event, HandshakeError};

/// A set of WebSocket connections that receive every published [`Event`].
///
/// Cloning is cheap and every clone is the same hub, so hand one to each
/// request handler. See the [crate documentation](crate) for an example.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// A snapshot of a hub's counters, from [`Hub::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now, including those finishing their upgrade or
    /// their close.
    pub connections: usize,
    /// Connections accepted since the hub was created.
    pub accepted: u64,
    /// Calls to [`Hub::publish`].
    pub events_published: u64,
    /// Events handed to connections, summed over all publishes.
    pub deliveries: u64,
    /// Connections closed for falling too far behind.
    pub slow_consumer_closes: u64,
    /// Connections dropped for staying silent through two heartbeats.
    pub heartbeat_timeouts: u64,
}

/// State shared by the hub's handles and its connections.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    welcome: Bytes,
    /// Open connections. Publishing walks it under the lock and a connection
    /// joins under the same lock, with its welcome ahead of its outbox, so
    /// each client gets the welcome first and then every later event.
    registry: Mutex<Slab<Arc<Outbox>>>,
    /// Connection slots in use; see [`Slot`].
    slots: AtomicUsize,
    /// Woken whenever a slot is released, for [`Hub::shutdown`].
    slot_released: Notify,
    shutting_down: AtomicBool,
    heartbeat_started: AtomicBool,
    /// The hub clock's zero, for `Outbox::last_seen`.
    epoch: Instant,
    accepted: AtomicU64,
    events_published: AtomicU64,
    deliveries: AtomicU64,
    slow_consumer_closes: AtomicU64,
    heartbeat_timeouts: AtomicU64,
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
            shared: Arc::new(Shared {
                welcome: frame::text(config.welcome.as_bytes()),
                config,
                registry: Mutex::default(),
                slots: AtomicUsize::new(0),
                slot_released: Notify::new(),
                shutting_down: AtomicBool::new(false),
                heartbeat_started: AtomicBool::new(false),
                epoch: Instant::now(),
                accepted: AtomicU64::new(0),
                events_published: AtomicU64::new(0),
                deliveries: AtomicU64::new(0),
                slow_consumer_closes: AtomicU64::new(0),
                heartbeat_timeouts: AtomicU64::new(0),
            }),
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
        let accept = handshake::check(&request, &self.shared.config)?;
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(HandshakeError::ShuttingDown);
        }
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        let slot = Slot::acquire(&self.shared)?;
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
        self.shared.slots.fetch_add(1, Ordering::AcqRel);
        Connection::new(Slot(self.shared.clone()), io).await;
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
        let reached = self.shared.broadcast(&frame::text(&json));
        let shared = &self.shared;
        shared.events_published.fetch_add(1, Ordering::Relaxed);
        shared
            .deliveries
            .fetch_add(reached as u64, Ordering::Relaxed);
        reached
    }

    /// The hub's counters now.
    pub fn stats(&self) -> Stats {
        let shared = &self.shared;
        Stats {
            connections: shared.slots.load(Ordering::Acquire),
            accepted: shared.accepted.load(Ordering::Relaxed),
            events_published: shared.events_published.load(Ordering::Relaxed),
            deliveries: shared.deliveries.load(Ordering::Relaxed),
            slow_consumer_closes: shared.slow_consumer_closes.load(Ordering::Relaxed),
            heartbeat_timeouts: shared.heartbeat_timeouts.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection with 1001 (going away) after sending what is
    /// queued for it, and refuses new upgrades with 503 from now on.
    ///
    /// Returns once every connection is gone, or when `deadline` passes;
    /// connections still open then are dropped by their own close timeout.
    pub async fn shutdown(&self, deadline: Duration) {
        let shared = &self.shared;
        shared.shutting_down.store(true, Ordering::Release);
        for outbox in shared.registry().iter().map(|(_, outbox)| outbox) {
            outbox.close(CloseReason::GoingAway);
        }
        let all_gone = async {
            loop {
                let released = shared.slot_released.notified();
                if shared.slots.load(Ordering::Acquire) == 0 {
                    return;
                }
                released.await;
            }
        };
        let _ = tokio::time::timeout(deadline, all_gone).await;
    }
}

impl Shared {
    /// Milliseconds on the hub clock.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Adds a connection and returns its key and the welcome to send first;
    /// every event published from here on reaches its outbox.
    pub(crate) fn register(self: &Arc<Self>, outbox: &Arc<Outbox>) -> (usize, Bytes) {
        if !self.heartbeat_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(heartbeat(Arc::downgrade(self)));
        }
        let mut registry = self.registry();
        if self.shutting_down.load(Ordering::Acquire) {
            outbox.close(CloseReason::GoingAway);
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        (registry.insert(outbox.clone()), self.welcome.clone())
    }

    pub(crate) fn deregister(&self, key: usize) {
        self.registry().remove(key);
    }

    /// Queues `frame` on every open connection; returns how many took it.
    fn broadcast(&self, frame: &Bytes) -> usize {
        let capacity = self.config.outbound_capacity;
        let mut reached = 0;
        let mut overflowed = 0;
        for (_, outbox) in self.registry().iter() {
            match outbox.push(frame, capacity) {
                Pushed::Queued => reached += 1,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Refused => {}
            }
        }
        self.count_slow(overflowed);
        reached
    }

    pub(crate) fn count_slow(&self, closes: u64) {
        if closes > 0 {
            self.slow_consumer_closes
                .fetch_add(closes, Ordering::Relaxed);
            tracing::debug!(closes, "closed slow consumers");
        }
    }

    fn registry(&self) -> MutexGuard<'_, Slab<Arc<Outbox>>> {
        // Registry updates are single slab operations; a panic cannot leave
        // it half-changed.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Pings every connection each interval and drops the ones that stayed
/// silent for two. One task serves the whole hub, so connections need no
/// timers of their own.
async fn heartbeat(shared: Weak<Shared>) {
    let Some(interval) = shared
        .upgrade()
        .map(|shared| shared.config.heartbeat_interval)
    else {
        return;
    };
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ping = frame::ping();
    let silence = 2 * interval.as_millis() as u64;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let now = shared.now();
        let (mut timeouts, mut overflowed) = (0, 0);
        for (_, outbox) in shared.registry().iter() {
            if now.saturating_sub(outbox.last_seen()) >= silence {
                timeouts += u64::from(outbox.close(CloseReason::HeartbeatTimeout));
            } else if outbox.push(&ping, shared.config.outbound_capacity) == Pushed::Overflowed {
                overflowed += 1;
            }
        }
        shared
            .heartbeat_timeouts
            .fetch_add(timeouts, Ordering::Relaxed);
        shared.count_slow(overflowed);
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

/// One connection's claim on [`Config::max_connections`], released when the
/// connection ends.
#[derive(Debug)]
pub(crate) struct Slot(pub(crate) Arc<Shared>);

impl Slot {
    fn acquire(shared: &Arc<Shared>) -> Result<Slot, HandshakeError> {
        let max = shared.config.max_connections;
        shared
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| HandshakeError::TooManyConnections)?;
        Ok(Slot(shared.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
        self.0.slot_released.notify_waiters();
    }
}
