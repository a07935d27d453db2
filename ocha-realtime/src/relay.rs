//! [`Relay`]: feeding a hub from the application's ordered event log, on one
//! node or on many sharing the log (and, optionally, Redis).
//!
//! The log (a database table, say) is the truth: it gives each event its
//! id, keeps it, and every node reads it. The relay hands each event to the
//! hub once and in id order, whichever way it arrives first: from this
//! node's own commit ([`Relay::publish`]), from another node over Redis
//! pub/sub, or from reading the log, which it does every
//! [`poll_interval`](RelayBuilder::poll_interval) and whenever it sees a
//! gap. So an event committed by a node that died before telling anyone
//! still goes out, and a node that was cut off from Redis catches up when
//! it returns, repeating nothing.
//!
//! Redis carries events but keeps nothing, by design: ids and history live
//! in the log, so Redis may restart empty without ids repeating or going
//! backwards, and pub/sub's fire-and-forget delivery costs one hop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{EventId, Frame, Hub};

/// Events fetched from the log per read.
const LOG_BATCH: usize = 500;
/// Events held while waiting for an earlier one; past this, later ones are
/// dropped and read from the log once the gap is filled.
const MAX_PENDING: usize = 10_000;

/// The application's log of committed events, which the [`Relay`] reads to
/// fill gaps and catch up.
///
/// Ids must be consecutive (1, 2, 3, …) and become visible in id order: a
/// reader that sees event `n` must also see every event before it that is
/// still kept. A database counter bumped inside the transaction that
/// writes the event does this (its row lock orders the commits).
pub trait EventLog: Send + Sync + 'static {
    /// Why the log could not be read.
    type Error: std::fmt::Display + Send;

    /// The committed events with ids after `after`, oldest first, at most
    /// `limit`; each is the text clients receive.
    fn events_after(
        &self,
        after: EventId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(EventId, String)>, Self::Error>> + Send;
}

/// A snapshot of a relay's counters, from [`Relay::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Events this relay handed to its hub.
    pub delivered: u64,
    /// Of those, events it had to read from the log: another node's, when
    /// Redis is off or missed them, or ones nobody announced.
    pub from_log: u64,
    /// Whether the relay is subscribed to Redis now; `None` without Redis.
    pub redis_connected: Option<bool>,
    /// Times Redis became unreachable.
    pub redis_outages: u64,
}

/// Hands a hub every event of an [`EventLog`], once each and in id order.
/// Cloning is cheap; the relay's tasks stop when the last clone is dropped.
///
/// ```no_run
/// # use ocha_realtime::{EventId, EventLog, Hub, Relay};
/// # async fn run<L: EventLog>(hub: Hub, log: L) {
/// let relay = Relay::builder(hub, log).start();
/// // After committing event 42 to the log:
/// relay.publish(EventId::new(42), r#"{"type":"order_ready","id":"42"}"#);
/// # }
/// ```
pub struct Relay<L> {
    shared: Arc<Shared<L>>,
}

impl<L> Clone for Relay<L> {
    fn clone(&self) -> Self {
        Relay {
            shared: self.shared.clone(),
        }
    }
}

impl<L: EventLog> std::fmt::Debug for Relay<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

/// Settings for a [`Relay`]; see [`Relay::builder`].
#[derive(Debug)]
pub struct RelayBuilder<L> {
    hub: Hub,
    log: L,
    poll_interval: Duration,
    on_deliver: Option<OnDeliver>,
    #[cfg(feature = "redis")]
    redis: Option<redis_fanout::Settings>,
}

/// What [`RelayBuilder::on_deliver`] calls with each event.
type Observer = dyn Fn(EventId, &str) + Send + Sync;

/// The application's view of each event handed to the hub.
struct OnDeliver(Box<Observer>);

impl std::fmt::Debug for OnDeliver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnDeliver(..)")
    }
}

struct Shared<L> {
    hub: Hub,
    log: L,
    on_deliver: Option<OnDeliver>,
    /// Events that arrived before an earlier one, by id. Locked while
    /// handing events to the hub, so that they go in order.
    pending: Mutex<BTreeMap<EventId, String>>,
    /// Wakes the log reader early: a gap was seen, or Redis came back.
    /// Shared with the reader, which must not keep the relay alive.
    read_log: Arc<Notify>,
    delivered: AtomicU64,
    from_log: AtomicU64,
    #[cfg(feature = "redis")]
    redis: Option<redis_fanout::Fanout>,
}

impl<L: EventLog> Relay<L> {
    /// A relay for `hub` reading `log`; start it with
    /// [`RelayBuilder::start`].
    ///
    /// Restore the hub's history from the log first
    /// ([`Hub::restore_history`]): the relay carries on from the hub's
    /// [`last_event_id`](Hub::last_event_id).
    pub fn builder(hub: Hub, log: L) -> RelayBuilder<L> {
        RelayBuilder {
            hub,
            log,
            poll_interval: Duration::from_secs(1),
            on_deliver: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// Sends the event `id`, just committed to the log, to the other nodes
    /// over Redis, if set, and to this node's clients (after any earlier
    /// event still on its way). Never waits on Redis, which is written to
    /// by a task of its own. Redis goes first: this node's fan-out may take
    /// a while, and the other nodes' run meanwhile.
    pub fn publish(&self, id: EventId, event: &str) {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.shared.redis {
            redis.share(id, event);
        }
        self.shared.offer(id, event.to_owned(), Source::Commit);
    }

    /// The relay's counters now.
    pub fn stats(&self) -> RelayStats {
        self.shared.stats()
    }
}

impl<L: EventLog> RelayBuilder<L> {
    /// How often the log is read for events nobody announced (committed by
    /// a node that died, or sent while Redis was down). A gap in ids is
    /// read at once, whatever this says.
    ///
    /// Default: 1 second.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Calls `observer` with every event the relay hands to its hub: once
    /// each, in id order, whichever way it arrived (this node's commit,
    /// another node's over Redis, or the log). For counting events by kind,
    /// say, which the hub's [`Stats`](crate::Stats) cannot tell apart.
    ///
    /// It runs while the relay holds the lock that keeps events in order:
    /// keep it short, and never block or publish from it.
    pub fn on_deliver(mut self, observer: impl Fn(EventId, &str) + Send + Sync + 'static) -> Self {
        self.on_deliver = Some(OnDeliver(Box::new(observer)));
        self
    }

    /// Shares events with the other nodes over Redis pub/sub, on the
    /// channel `channel` of the server at `url` (`redis://HOST:PORT`).
    ///
    /// While Redis is unreachable, this node's events still reach its own
    /// clients, other nodes' reach them through the log, the outage is
    /// logged and counted, and the relay reconnects by itself.
    ///
    /// # Errors
    ///
    /// When `url` is not a Redis URL. Redis itself is reached later, and
    /// again after every outage.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: &str, channel: &str) -> Result<Self, redis::RedisError> {
        self.redis = Some(redis_fanout::Settings::new(url, channel)?);
        Ok(self)
    }

    /// Starts the relay's tasks on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn start(self) -> Relay<L> {
        #[cfg(feature = "redis")]
        let (redis, redis_tasks) = match self.redis {
            Some(settings) => {
                let (fanout, tasks) = redis_fanout::Fanout::new(settings);
                (Some(fanout), Some(tasks))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            hub: self.hub,
            log: self.log,
            on_deliver: self.on_deliver,
            pending: Mutex::default(),
            read_log: Arc::new(Notify::new()),
            delivered: AtomicU64::new(0),
            from_log: AtomicU64::new(0),
            #[cfg(feature = "redis")]
            redis,
        });
        tokio::spawn(read_log(
            Arc::downgrade(&shared),
            shared.read_log.clone(),
            self.poll_interval,
        ));
        #[cfg(feature = "redis")]
        if let Some(tasks) = redis_tasks {
            tasks.spawn(Arc::downgrade(&shared));
        }
        Relay { shared }
    }
}

/// Where an event came from, which decides what a gap before it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This node's commit or another node's, announced: an earlier event
    /// may still be on its way, so a gap is waited for (and read).
    Commit,
    /// Read from the log, which has every kept event up to this one: a gap
    /// before it was pruned, so it goes out at once.
    Log,
}

impl<L: EventLog> Shared<L> {
    /// Hands the event to the hub if it is the next one, holds it if an
    /// earlier one is missing, and ignores it if it went out already.
    fn offer(&self, id: EventId, event: String, source: Source) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.hub.last_event_id();
        if id <= last {
            return;
        }
        if id.get() != last.get() + 1 && source == Source::Commit {
            if pending.len() < MAX_PENDING {
                pending.insert(id, event);
            }
            self.read_log.notify_one();
            return;
        }
        self.deliver(id, &event, source);
        // Whatever waited for this one can follow it now.
        while let Some(entry) = pending.first_entry() {
            let next = self.hub.last_event_id().get() + 1;
            if entry.key().get() > next {
                break;
            }
            let (id, event) = entry.remove_entry();
            if id.get() == next {
                self.deliver(id, &event, Source::Commit);
            }
        }
    }

    fn deliver(&self, id: EventId, event: &str, source: Source) {
        if self.hub.publish_event(id, &Frame::text(event)).is_some() {
            if let Some(OnDeliver(observer)) = &self.on_deliver {
                observer(id, event);
            }
            self.delivered.fetch_add(1, Ordering::Relaxed);
            if source == Source::Log {
                self.from_log.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hands the hub every event the log has after its last one.
    async fn catch_up(&self) {
        loop {
            let after = self.hub.last_event_id();
            match self.log.events_after(after, LOG_BATCH).await {
                Ok(events) => {
                    let full = events.len() == LOG_BATCH;
                    for (id, event) in events {
                        self.offer(id, event, Source::Log);
                    }
                    if !full {
                        return;
                    }
                }
                Err(error) => {
                    return tracing::warn!(%error, "cannot read the event log; trying again later")
                }
            }
        }
    }

    fn stats(&self) -> RelayStats {
        #[cfg(feature = "redis")]
        let (redis_connected, redis_outages) = self.redis.as_ref().map_or((None, 0), |redis| {
            let (connected, outages) = redis.status();
            (Some(connected), outages)
        });
        #[cfg(not(feature = "redis"))]
        let (redis_connected, redis_outages) = (None, 0);
        RelayStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            from_log: self.from_log.load(Ordering::Relaxed),
            redis_connected,
            redis_outages,
        }
    }
}

/// Reads the log every `interval`, and at once when woken, until the relay
/// is dropped.
async fn read_log<L: EventLog>(shared: Weak<Shared<L>>, wake: Arc<Notify>, interval: Duration) {
    while let Some(relay) = shared.upgrade() {
        relay.catch_up().await;
        drop(relay);
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(feature = "redis")]
mod redis_fanout {
    //! Events over Redis pub/sub: one task publishes this node's, one
    //! subscribes to everyone's. Each message is `ID TEXT`.

    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    use futures_util::StreamExt;
    use redis::aio::MultiplexedConnection;
    use redis::{AsyncConnectionConfig, Client, RedisError};
    use tokio::sync::mpsc;

    use super::{EventLog, Shared, Source};
    use crate::EventId;

    /// Events waiting for the publisher; past this, while Redis is slow or
    /// down, they are dropped: other nodes read them from the log.
    const OUTGOING: usize = 1024;
    /// How long one Redis call may take before the connection is
    /// considered lost.
    const TIMEOUT: Duration = Duration::from_secs(2);
    /// Reconnection backoff bounds.
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);

    #[derive(Debug)]
    pub(super) struct Settings {
        client: Client,
        channel: String,
    }

    impl Settings {
        pub(super) fn new(url: &str, channel: &str) -> Result<Settings, RedisError> {
            Ok(Settings {
                client: Client::open(url)?,
                channel: channel.to_owned(),
            })
        }
    }

    /// The relay's side of the Redis tasks.
    pub(super) struct Fanout {
        outgoing: mpsc::Sender<String>,
        status: Arc<Status>,
    }

    /// The tasks, not yet started.
    pub(super) struct Tasks {
        settings: Settings,
        outgoing: mpsc::Receiver<String>,
        status: Arc<Status>,
    }

    /// Whether the subscription, which is always open, is up. The
    /// publisher connects only to publish, so it tells of outages later.
    #[derive(Default)]
    struct Status {
        subscribed: AtomicBool,
        outages: AtomicU64,
    }

    impl Status {
        fn set(&self, up: bool, error: Option<&RedisError>) {
            let was_up = self.subscribed.swap(up, Ordering::AcqRel);
            if was_up && !up {
                self.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = error.map(tracing::field::display),
                    "Redis unreachable: events still reach this node's clients, and other \
                     nodes' through the event log; reconnecting"
                );
            } else if !was_up && up {
                tracing::info!("subscribed to Redis: sharing events with other nodes");
            }
        }
    }

    impl Fanout {
        pub(super) fn new(settings: Settings) -> (Fanout, Tasks) {
            let (outgoing, queue) = mpsc::channel(OUTGOING);
            let status = Arc::new(Status::default());
            let fanout = Fanout {
                outgoing,
                status: status.clone(),
            };
            let tasks = Tasks {
                settings,
                outgoing: queue,
                status,
            };
            (fanout, tasks)
        }

        pub(super) fn share(&self, id: EventId, event: &str) {
            // Full only while Redis is down or slow: other nodes read it
            // from the log then.
            let _ = self.outgoing.try_send(format!("{id} {event}"));
        }

        pub(super) fn status(&self) -> (bool, u64) {
            (
                self.status.subscribed.load(Ordering::Acquire),
                self.status.outages.load(Ordering::Relaxed),
            )
        }
    }

    impl Tasks {
        pub(super) fn spawn<L: EventLog>(self, relay: Weak<Shared<L>>) {
            let Tasks {
                settings,
                outgoing,
                status,
            } = self;
            let settings = Arc::new(settings);
            tokio::spawn(publish(settings.clone(), outgoing));
            tokio::spawn(subscribe(settings, relay, status));
        }
    }

    async fn connect(settings: &Settings) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        settings
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Publishes this node's events until the relay is dropped.
    async fn publish(settings: Arc<Settings>, mut queue: mpsc::Receiver<String>) {
        let mut backoff = MIN_BACKOFF;
        let mut failing = false;
        let mut connection = None;
        while let Some(message) = queue.recv().await {
            loop {
                let result = match &mut connection {
                    Some(connection) => redis::cmd("PUBLISH")
                        .arg(&settings.channel)
                        .arg(&message)
                        .query_async::<()>(connection)
                        .await
                        .map(|()| true),
                    None => connect(&settings).await.map(|new| {
                        connection = Some(new);
                        false
                    }),
                };
                match result {
                    Ok(published) => {
                        failing = false;
                        backoff = MIN_BACKOFF;
                        if published {
                            break;
                        }
                    }
                    Err(error) => {
                        connection = None;
                        if !failing {
                            failing = true;
                            tracing::warn!(%error, "cannot publish to Redis; retrying");
                        }
                        // Events queued meanwhile are stale for Redis:
                        // other nodes read them from the log.
                        while queue.try_recv().is_ok() {}
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                }
            }
        }
    }

    /// Hands every node's events to the relay, resubscribing after each
    /// outage, until the relay is dropped.
    async fn subscribe<L: EventLog>(
        settings: Arc<Settings>,
        relay: Weak<Shared<L>>,
        status: Arc<Status>,
    ) {
        let mut backoff = MIN_BACKOFF;
        while relay.strong_count() > 0 {
            let subscribed = async {
                let mut pubsub = settings.client.get_async_pubsub().await?;
                pubsub.subscribe(&settings.channel).await?;
                Ok::<_, RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                Ok(Err(error)) => {
                    status.set(false, Some(&error));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
                Err(_) => {
                    status.set(false, None);
                    continue;
                }
            };
            status.set(true, None);
            backoff = MIN_BACKOFF;
            // What was published while we were away is in the log.
            match relay.upgrade() {
                Some(relay) => relay.read_log.notify_one(),
                None => return,
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(relay) = relay.upgrade() else {
                    return;
                };
                let text = String::from_utf8_lossy(message.get_payload_bytes());
                match text
                    .split_once(' ')
                    .and_then(|(id, event)| Some((id.parse().ok()?, event)))
                {
                    Some((id, event)) => relay.offer(id, event.to_owned(), Source::Commit),
                    None => {
                        tracing::warn!(message = %text, "ignoring a Redis message that is not `ID EVENT`")
                    }
                }
            }
            status.set(false, None);
        }
    }
}
