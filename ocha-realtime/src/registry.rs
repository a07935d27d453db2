//! The connection registry: who is connected, admission against
//! `max_connections`, fan-out of frames to every outbox, the heartbeat, and
//! the hub's counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use slab::Slab;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::outbox::{CloseReason, Outbox, Pushed};
use crate::{frame, Config};

/// A snapshot of a hub's counters, from [`Hub::stats`](crate::Hub::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections open now, including those finishing their upgrade or
    /// their close.
    pub connections: usize,
    /// Connections accepted since the hub was created.
    pub accepted: u64,
    /// Calls to [`Hub::publish`](crate::Hub::publish).
    pub events_published: u64,
    /// Events handed to connections, summed over all publishes.
    pub deliveries: u64,
    /// Connections closed for falling too far behind.
    pub slow_consumer_closes: u64,
    /// Connections dropped for staying silent through two heartbeats.
    pub heartbeat_timeouts: u64,
}

/// State shared by a hub's handles and its connections.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) config: Config,
    welcome: Bytes,
    /// Open connections. Publishing walks them under the lock and a
    /// connection joins under the same lock, with its welcome ahead of its
    /// outbox, so each client gets the welcome first and then every later
    /// event.
    outboxes: Mutex<Slab<Arc<Outbox>>>,
    /// Connection slots in use; see [`Slot`].
    slots: AtomicUsize,
    /// Woken whenever a slot is released, for [`Registry::close_all`].
    slot_released: Notify,
    shutting_down: AtomicBool,
    heartbeat_started: AtomicBool,
    /// The registry clock's zero, for `Outbox::last_seen`.
    epoch: Instant,
    accepted: AtomicU64,
    events_published: AtomicU64,
    deliveries: AtomicU64,
    slow_consumer_closes: AtomicU64,
    heartbeat_timeouts: AtomicU64,
}

impl Registry {
    pub(crate) fn new(config: Config) -> Registry {
        Registry {
            welcome: frame::text(config.welcome.as_bytes()),
            config,
            outboxes: Mutex::default(),
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
        }
    }

    /// Milliseconds on the registry clock.
    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Adds a connection and returns its key and the welcome to send first;
    /// every event published from here on reaches its outbox.
    pub(crate) fn register(self: &Arc<Self>, outbox: &Arc<Outbox>) -> (usize, Bytes) {
        if !self.heartbeat_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(heartbeat(Arc::downgrade(self)));
        }
        let mut outboxes = self.outboxes();
        if self.is_shutting_down() {
            outbox.close(CloseReason::GoingAway);
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        (outboxes.insert(outbox.clone()), self.welcome.clone())
    }

    pub(crate) fn deregister(&self, key: usize) {
        self.outboxes().remove(key);
    }

    /// Queues an event's frame on every open connection and returns how many
    /// took it.
    pub(crate) fn publish(&self, frame: &Bytes) -> usize {
        let capacity = self.config.outbound_capacity;
        let mut reached = 0;
        let mut overflowed = 0;
        for (_, outbox) in self.outboxes().iter() {
            match outbox.push(frame, capacity) {
                Pushed::Queued => reached += 1,
                Pushed::Overflowed => overflowed += 1,
                Pushed::Refused => {}
            }
        }
        self.count_slow(overflowed);
        self.events_published.fetch_add(1, Ordering::Relaxed);
        self.deliveries.fetch_add(reached as u64, Ordering::Relaxed);
        reached
    }

    /// Closes every connection with 1001 and refuses new ones; returns once
    /// every slot is free, or at `deadline`.
    pub(crate) async fn close_all(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        for (_, outbox) in self.outboxes().iter() {
            outbox.close(CloseReason::GoingAway);
        }
        let all_gone = async {
            loop {
                let released = self.slot_released.notified();
                if self.slots.load(Ordering::Acquire) == 0 {
                    return;
                }
                released.await;
            }
        };
        let _ = tokio::time::timeout(deadline, all_gone).await;
    }

    pub(crate) fn count_slow(&self, closes: u64) {
        if closes > 0 {
            self.slow_consumer_closes
                .fetch_add(closes, Ordering::Relaxed);
            tracing::debug!(closes, "closed slow consumers");
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            connections: self.slots.load(Ordering::Acquire),
            accepted: self.accepted.load(Ordering::Relaxed),
            events_published: self.events_published.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Ordering::Relaxed),
            heartbeat_timeouts: self.heartbeat_timeouts.load(Ordering::Relaxed),
        }
    }

    fn outboxes(&self) -> MutexGuard<'_, Slab<Arc<Outbox>>> {
        // Updates are single slab operations; a panic cannot leave the slab
        // half-changed.
        self.outboxes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Pings every connection each interval and drops the ones that stayed
/// silent for two. One task serves the whole hub, so connections need no
/// timers of their own.
async fn heartbeat(registry: Weak<Registry>) {
    let Some(interval) = registry
        .upgrade()
        .map(|registry| registry.config.heartbeat_interval)
    else {
        return;
    };
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ping = frame::ping();
    let silence = 2 * interval.as_millis() as u64;
    loop {
        ticks.tick().await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        if registry.is_shutting_down() {
            return;
        }
        let now = registry.now();
        let capacity = registry.config.outbound_capacity;
        let (mut timeouts, mut overflowed) = (0, 0);
        for (_, outbox) in registry.outboxes().iter() {
            if now.saturating_sub(outbox.last_seen()) >= silence {
                timeouts += u64::from(outbox.close(CloseReason::HeartbeatTimeout));
            } else if outbox.push(&ping, capacity) == Pushed::Overflowed {
                overflowed += 1;
            }
        }
        registry
            .heartbeat_timeouts
            .fetch_add(timeouts, Ordering::Relaxed);
        registry.count_slow(overflowed);
    }
}

/// One connection's claim on [`Config::max_connections`], released when the
/// connection ends.
#[derive(Debug)]
pub(crate) struct Slot(pub(crate) Arc<Registry>);

impl Slot {
    /// Claims a slot if fewer than `max_connections` are in use.
    pub(crate) fn acquire(registry: &Arc<Registry>) -> Option<Slot> {
        let max = registry.config.max_connections;
        registry
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(registry.clone()))
    }

    /// Claims a slot whatever the limit, for a connection admitted elsewhere.
    pub(crate) fn admitted(registry: &Arc<Registry>) -> Slot {
        registry.slots.fetch_add(1, Ordering::AcqRel);
        Slot(registry.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
        self.0.slot_released.notify_waiters();
    }
}
