//! The connection registry: who is connected, with their users and
//! channels, admission against `max_connections`, fan-out of frames to every
//! outbox or to a group's, the heartbeat, presence and the hub's counters.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Waker;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::groups::Groups;
use crate::history::{ChannelHistories, History, Replay, Since, RESYNC};
use crate::outbox::{CloseReason, Outbox, Pushed};
use crate::wire::{self, Transport, Wire};
use crate::{frame, Admission, Config, ConnectionId, EventId, HandshakeError, Message, Presence};

/// The fewest connections a direct fan-out gives a thread of their own.
const FAN_OUT_SHARE: usize = 1000;
/// Connections are spread over this many independently locked shards, so a
/// connect or disconnect waits for at most one shard's share of a fan-out.
const SHARDS: usize = 32;
/// Consecutive ids go to the same shard in runs of this many, so that a
/// fan-out, shard by shard, still visits connections mostly in the order
/// they came, which is the order of their memory; striding across shards
/// one id at a time cost about twice as much per delivery in process.
const SHARD_RUN: u64 = 64;

/// The application's message handler, with the hub it belongs to passed in
/// rather than captured (the registry owns the handler: capturing would be
/// a reference cycle).
pub(crate) type Handler = Box<
    dyn Fn(Arc<Registry>, ConnectionId, Message) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The application's presence callback, with the hub passed in as for
/// [`Handler`].
pub(crate) type PresenceHook = Box<dyn Fn(Arc<Registry>, Presence) + Send + Sync>;

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
    /// Channels with at least one member now.
    pub channels: usize,
    /// Users with at least one connection now.
    pub users: usize,
    /// Events kept for clients that resume.
    pub history: usize,
    /// Of the connections open now, those that are Server-Sent Events
    /// streams ([`Hub::event_stream`](crate::Hub::event_stream)).
    pub event_streams: usize,
    /// Of the connections accepted, those that were event streams.
    pub event_streams_accepted: u64,
}

/// Threads a direct fan-out to `connections` runs on: one per core, with
/// at least [`FAN_OUT_SHARE`] connections each, as starting a thread costs
/// about as much as a few deliveries.
fn fan_out_threads(connections: usize) -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES
        .get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    cores.min(connections / FAN_OUT_SHARE).max(1)
}

/// Whether this thread runs in a multi-threaded tokio runtime, where
/// `block_in_place` works.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The fan-out's own state, kept from one publish to the next.
#[derive(Debug, Default)]
struct Publishing {
    /// The wakers to call once each shard is unlocked.
    wake: Vec<Waker>,
    /// When the last fan-out ended, and how long it took.
    last: Option<(std::time::Instant, Duration)>,
}

impl Publishing {
    /// Whether a fan-out starting `now` writes to idle connections itself.
    ///
    /// It does, unless this event was waiting while the last fan-out ran
    /// (it starts within a sixteenth of that fan-out's time after its end):
    /// events then come faster than fan-outs, and each connection's task
    /// writes what piled up in one system call instead of the fan-out
    /// writing every event to every socket.
    fn writes_directly(&self, now: std::time::Instant) -> bool {
        self.last
            .is_none_or(|(end, took)| now.saturating_duration_since(end) >= took / 16)
    }
}

/// An open connection and the groups it is in.
#[derive(Debug)]
struct Member {
    outbox: Arc<Outbox>,
    /// Boxed, and only for connections in a group: the listing of a hub
    /// that only broadcasts stays two words a connection.
    groups: Option<Box<Memberships>>,
}

#[derive(Debug, Default)]
struct Memberships {
    user: Option<Arc<str>>,
    channels: Vec<Arc<str>>,
}

impl Member {
    fn user(&self) -> Option<&Arc<str>> {
        self.groups.as_ref().and_then(|groups| groups.user.as_ref())
    }

    fn channels(&self) -> &[Arc<str>] {
        self.groups.as_ref().map_or(&[], |groups| &groups.channels)
    }

    fn channels_mut(&mut self) -> &mut Vec<Arc<str>> {
        &mut self.groups.get_or_insert_with(Box::default).channels
    }
}

type Shard = Mutex<BTreeMap<ConnectionId, Member>>;

/// State shared by a hub's handles and its connections.
pub(crate) struct Registry {
    pub(crate) config: Config,
    welcome: Option<Bytes>,
    /// [`RESYNC`], framed once.
    resync: Bytes,
    /// Events published to all with an id. Locked through each such
    /// publish, and while a resuming connection is listed: each event is
    /// then either in the connection's replay or published to it, never
    /// both and never neither.
    history: Mutex<History>,
    /// Events published to each channel with an id, likewise.
    channel_histories: ChannelHistories,
    pub(crate) handler: Option<Handler>,
    on_presence: Option<PresenceHook>,
    /// Open connections by id, in shards; ordered, so that a fan-out visits
    /// them in the order they came, which is the order of their memory. A
    /// connection's welcome is ahead of anything in its outbox, so each
    /// client gets the welcome first and then every event published after
    /// it joined.
    shards: Box<[Shard]>,
    channels: Groups,
    /// Each user's connections, as a group named after the user.
    users: Groups,
    /// Held through a whole fan-out, so that concurrent publishes reach
    /// every connection in the same order.
    publishing: Mutex<Publishing>,
    next_id: AtomicU64,
    /// Connection slots in use; see [`Slot`].
    slots: AtomicUsize,
    /// Slots in use by each peer, when `max_connections_per_peer` is set;
    /// a peer with none has no entry.
    peers: Mutex<HashMap<IpAddr, usize>>,
    /// Woken whenever a slot is released, for [`Registry::close_all`].
    slot_released: Notify,
    shutting_down: AtomicBool,
    heartbeat_started: AtomicBool,
    /// Whether the application tuned accepted sockets itself, so upgrades
    /// it hands over wrapped (as axum does) need no warning.
    pub(crate) sockets_tuned: AtomicBool,
    pub(crate) untuned_warned: AtomicBool,
    /// The registry clock's zero, for `Outbox::last_seen`.
    epoch: Instant,
    accepted: AtomicU64,
    event_streams: AtomicUsize,
    event_streams_accepted: AtomicU64,
    events_published: AtomicU64,
    deliveries: AtomicU64,
    slow_consumer_closes: AtomicU64,
    heartbeat_timeouts: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .field("handler", &self.handler.is_some())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(
        config: Config,
        handler: Option<Handler>,
        on_presence: Option<PresenceHook>,
    ) -> Registry {
        Registry {
            welcome: config
                .welcome
                .as_deref()
                .map(|text| frame::text(text.as_bytes())),
            resync: frame::text(RESYNC.as_bytes()),
            history: Mutex::new(History::new(config.history_size, config.history_max_age)),
            channel_histories: ChannelHistories::default(),
            config,
            handler,
            on_presence,
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            channels: Groups::default(),
            users: Groups::default(),
            publishing: Mutex::default(),
            next_id: AtomicU64::new(0),
            slots: AtomicUsize::new(0),
            peers: Mutex::default(),
            slot_released: Notify::new(),
            shutting_down: AtomicBool::new(false),
            heartbeat_started: AtomicBool::new(false),
            sockets_tuned: AtomicBool::new(false),
            untuned_warned: AtomicBool::new(false),
            epoch: Instant::now(),
            accepted: AtomicU64::new(0),
            event_streams: AtomicUsize::new(0),
            event_streams_accepted: AtomicU64::new(0),
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

    /// Adds a connection as `admission` says and returns its id and the
    /// frames to send first: the welcome, then what a resuming connection
    /// missed. Every event published from here on reaches its outbox.
    pub(crate) fn register(
        self: &Arc<Self>,
        outbox: &Arc<Outbox>,
        admission: Admission,
    ) -> (ConnectionId, VecDeque<Bytes>) {
        if !self.heartbeat_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(heartbeat(Arc::downgrade(self)));
        }
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let Admission {
            user,
            channels,
            since,
            ..
        } = admission;
        // Nobody knows the id yet, so the groups can be joined before the
        // connection is listed, without holding its shard.
        if let Some(user) = &user {
            self.users.join(user, id, outbox, Some(user));
        }
        let mut joined: Vec<Arc<str>> = Vec::with_capacity(channels.len());
        let mut channel_replays = Vec::new();
        for (channel, since) in channels {
            let is_new = match since {
                None => self.channels.join(&channel, id, outbox, user.as_ref()),
                Some(since) => {
                    // Held while joining; see `Registry::channel_histories`.
                    let history = self.channel_histories.get(&channel, &self.config);
                    let mut history = lock(&history);
                    let is_new = self.channels.join(&channel, id, outbox, user.as_ref());
                    if is_new {
                        channel_replays.extend(self.channel_replay(
                            &channel,
                            &mut history,
                            since,
                            outbox.transport(),
                        ));
                    }
                    is_new
                }
            };
            if is_new {
                joined.push(channel);
            }
        }
        let groups = (user.is_some() || !joined.is_empty()).then(|| {
            Box::new(Memberships {
                user: user.clone(),
                channels: joined.clone(),
            })
        });
        let member = Member {
            outbox: outbox.clone(),
            groups,
        };
        let mut first = VecDeque::new();
        // Held until the connection is listed; see `Registry::history`.
        let transport = outbox.transport();
        // An SSE client always learns the position (see `welcome_at`).
        let since = match transport {
            Transport::WebSocket => since,
            Transport::EventStream => Some(since.unwrap_or(Since::Now)),
        };
        let history = since.map(|since| {
            let mut history = lock(&self.history);
            first.extend(self.welcome_at(history.last(), transport));
            match history.replay(since, transport) {
                Replay::Events(missed) => first.extend(missed),
                Replay::Resync => first.push_back(self.resync(None, transport)),
            }
            history
        });
        if history.is_none() {
            first.extend(self.welcome.clone());
        }
        first.extend(channel_replays);
        let mut shard = self.shard(id);
        if self.is_shutting_down() {
            outbox.close(CloseReason::GoingAway, &mut Vec::new());
        }
        shard.insert(id, member);
        drop(shard);
        drop(history);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        if transport == Transport::EventStream {
            self.event_streams.fetch_add(1, Ordering::Relaxed);
            self.event_streams_accepted.fetch_add(1, Ordering::Relaxed);
        }
        self.announce(|| {
            let user = user.as_deref().map(str::to_owned);
            let connected = Presence::Connected {
                connection: id,
                user: user.clone(),
            };
            std::iter::once(connected).chain(joined.iter().map(move |channel| Presence::Joined {
                connection: id,
                user: user.clone(),
                channel: channel.to_string(),
            }))
        });
        (id, first)
    }

    /// The welcome with the hub's position, for a resuming client.
    ///
    /// Over WebSocket, the position is added as `"lastEventId"` (unless the
    /// welcome is not a JSON object). Over SSE, which has no welcome event,
    /// the welcome is a comment followed by a block setting the client's
    /// last event id, so that it resumes from here even before its first
    /// event.
    fn welcome_at(&self, position: EventId, transport: Transport) -> Option<Bytes> {
        if transport == Transport::EventStream {
            let mut welcome = bytes::BytesMut::new();
            if let Some(text) = &self.config.welcome {
                welcome.extend_from_slice(&wire::comment(text));
            }
            welcome.extend_from_slice(&wire::position(position));
            return Some(welcome.freeze());
        }
        let welcome = self.config.welcome.as_deref()?.trim();
        let Some(fields) = welcome
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
        else {
            return self.welcome.clone();
        };
        let separator = if fields.trim().is_empty() { "" } else { "," };
        let text = format!(r#"{{{fields}{separator}"lastEventId":"{position}"}}"#);
        Some(frame::text(text.as_bytes()))
    }

    /// Removes a closed connection from the hub and from its groups.
    pub(crate) fn deregister(self: &Arc<Self>, id: ConnectionId) {
        let Some(member) = self.shard(id).remove(&id) else {
            return;
        };
        if member.outbox.transport() == Transport::EventStream {
            self.event_streams.fetch_sub(1, Ordering::Relaxed);
        }
        for channel in member.channels() {
            self.channels.leave(channel, id, member.user());
        }
        if let Some(user) = member.user() {
            self.users.leave(user, id, Some(user));
        }
        self.announce(|| {
            let user = member.user().map(|user| user.to_string());
            let left = member.channels().iter().map({
                let user = user.clone();
                move |channel| Presence::Left {
                    connection: id,
                    user: user.clone(),
                    channel: channel.to_string(),
                }
            });
            left.chain(std::iter::once(Presence::Disconnected {
                connection: id,
                user,
            }))
        });
    }

    /// Adds a connection to `channel`, and with `since`, queues what it
    /// missed there after that position; false if it is gone or already in.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        id: ConnectionId,
        channel: &str,
        since: Option<Since>,
    ) -> bool {
        // The shard stays locked until the channel is joined, so that a
        // concurrent deregister finds the channel in the member's list.
        let mut shard = self.shard(id);
        let Some(member) = shard.get_mut(&id) else {
            return false;
        };
        if member.channels().iter().any(|joined| &**joined == channel) {
            return false;
        }
        let channel: Arc<str> = Arc::from(channel);
        let mut wake = Vec::new();
        // With a position, the channel's history is held while joining;
        // see `Registry::channel_histories`.
        let history = since.map(|since| {
            let history = self.channel_histories.get(&channel, &self.config);
            (since, history)
        });
        let mut locked = history
            .as_ref()
            .map(|(since, history)| (*since, lock(history)));
        self.channels
            .join(&channel, id, &member.outbox, member.user());
        if let Some((since, history)) = &mut locked {
            let replay = self.channel_replay(&channel, history, *since, member.outbox.transport());
            member.outbox.push_replay(replay, &mut wake);
        }
        drop(locked);
        member.channels_mut().push(channel.clone());
        let user = member.user().map(|user| user.to_string());
        drop(shard);
        wake.into_iter().for_each(Waker::wake);
        self.announce(|| {
            std::iter::once(Presence::Joined {
                connection: id,
                user,
                channel: channel.to_string(),
            })
        });
        true
    }

    /// What a connection of `transport` joining `channel` at `since` is
    /// sent first.
    fn channel_replay(
        &self,
        channel: &str,
        history: &mut History,
        since: Since,
        transport: Transport,
    ) -> Vec<Bytes> {
        match history.replay(since, transport) {
            Replay::Events(missed) => missed,
            Replay::Resync => vec![self.resync(Some(channel), transport)],
        }
    }

    /// [`RESYNC`] for `transport`, naming the channel for a channel's stream.
    fn resync(&self, channel: Option<&str>, transport: Transport) -> Bytes {
        let text = match channel {
            None if transport == Transport::WebSocket => return self.resync.clone(),
            None => RESYNC.to_owned(),
            Some(channel) => {
                let channel = serde_json::to_string(channel).expect("strings serialize");
                format!(r#"{{"type":"resync","channel":{channel}}}"#)
            }
        };
        match transport {
            Transport::WebSocket => frame::text(text.as_bytes()),
            Transport::EventStream => wire::event(None, text.as_bytes()),
        }
    }

    /// Takes a connection out of `channel`; false if it was not in it.
    pub(crate) fn unsubscribe(self: &Arc<Self>, id: ConnectionId, channel: &str) -> bool {
        let mut shard = self.shard(id);
        let Some(member) = shard.get_mut(&id) else {
            return false;
        };
        let Some(at) = member
            .channels()
            .iter()
            .position(|joined| &**joined == channel)
        else {
            return false;
        };
        member.channels_mut().swap_remove(at);
        self.channels.leave(channel, id, member.user());
        let user = member.user().map(|user| user.to_string());
        drop(shard);
        self.announce(|| {
            std::iter::once(Presence::Left {
                connection: id,
                user,
                channel: channel.to_owned(),
            })
        });
        true
    }

    /// Whether a connection is in `channel`.
    pub(crate) fn is_subscribed(&self, id: ConnectionId, channel: &str) -> bool {
        self.shard(id)
            .get(&id)
            .is_some_and(|member| member.channels().iter().any(|joined| &**joined == channel))
    }

    /// Tells the application's presence callback, if any, what `events`
    /// makes; called with no lock held, so the callback may use the hub.
    fn announce<I: Iterator<Item = Presence>>(self: &Arc<Self>, events: impl FnOnce() -> I) {
        if let Some(hook) = &self.on_presence {
            for event in events() {
                hook(self.clone(), event);
            }
        }
    }

    /// Queues an event's frame on every open connection and returns how many
    /// took it.
    pub(crate) fn publish(&self, wire: &Wire) -> usize {
        let mut publishing = lock(&self.publishing);
        let start = std::time::Instant::now();
        let (reached, overflowed) = if publishing.writes_directly(start) {
            // Writing to sockets is nearly all of a fan-out's cost, so a
            // large one is shared out over the machine's cores: this thread
            // takes the first shards, a scoped thread each further share.
            let connections = self.slots.load(Ordering::Relaxed);
            let threads = fan_out_threads(connections);
            let mut shares = self.shards.chunks(SHARDS.div_ceil(threads));
            let own = shares.next().unwrap_or_default();
            let fan_out = || {
                std::thread::scope(|scope| {
                    let helpers: Vec<_> = shares
                        .map(|shards| {
                            scope.spawn(|| self.push_to(shards, wire, true, &mut Vec::new()))
                        })
                        .collect();
                    let mut sum = self.push_to(own, wire, true, &mut publishing.wake);
                    for helper in helpers {
                        let (reached, overflowed) = helper
                            .join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                        sum = (sum.0 + reached, sum.1 + overflowed);
                    }
                    sum
                })
            };
            // A large fan-out holds this thread for a while: on a tokio
            // worker, its other tasks (the one just woken to send this event
            // to other nodes, say) move to another worker meanwhile.
            if connections >= FAN_OUT_SHARE && on_multi_thread_runtime() {
                tokio::task::block_in_place(fan_out)
            } else {
                fan_out()
            }
        } else {
            self.push_to(&self.shards, wire, false, &mut publishing.wake)
        };
        let end = std::time::Instant::now();
        publishing.last = Some((end, end - start));
        self.count_published(reached, overflowed)
    }

    /// Hands `wire` to every connection in `shards`, directly or not (see
    /// [`Outbox::push`]); returns how many took it and how many overflowed.
    fn push_to(
        &self,
        shards: &[Shard],
        wire: &Wire,
        direct: bool,
        wake: &mut Vec<Waker>,
    ) -> (usize, u64) {
        let capacity = self.config.outbound_capacity;
        let (mut reached, mut overflowed) = (0, 0);
        for shard in shards {
            for member in lock(shard).values() {
                match member.outbox.push_wire(wire, capacity, direct, wake) {
                    Pushed::Taken => reached += 1,
                    Pushed::Overflowed => overflowed += 1,
                    Pushed::Refused => {}
                }
            }
            // Woken outside the shard lock: connects and disconnects in
            // this shard need not wait for the wake-ups.
            wake.drain(..).for_each(Waker::wake);
        }
        (reached, overflowed)
    }

    /// Publishes to all an event with an id after the last one, keeping it
    /// for resuming clients; `None` if its id is not after the last.
    pub(crate) fn publish_event(&self, id: EventId, frame: &Bytes) -> Option<usize> {
        let wire = Wire::new(frame.clone(), Some(id));
        let mut history = lock(&self.history);
        if !history.append(id, SystemTime::now(), &wire) {
            return None;
        }
        let reached = self.publish(&wire);
        drop(history);
        Some(reached)
    }

    /// Publishes to `channel` an event with an id after the channel's last
    /// one, keeping it for resuming members; `None` if its id is not after
    /// the last.
    pub(crate) fn publish_event_to(
        &self,
        channel: &str,
        id: EventId,
        frame: &Bytes,
    ) -> Option<usize> {
        let wire = Wire::new(frame.clone(), Some(id));
        let history = self.channel_histories.get(channel, &self.config);
        let mut history = lock(&history);
        if !history.append(id, SystemTime::now(), &wire) {
            return None;
        }
        let reached = self.publish_to_group(Target::Channel(channel), &wire);
        drop(history);
        Some(reached)
    }

    pub(crate) fn channel_last_event_id(&self, channel: &str) -> EventId {
        self.channel_histories.last(channel)
    }

    /// Replaces the history with the application's; see [`History::restore`].
    pub(crate) fn restore_history(&self, last: EventId, events: Vec<(EventId, SystemTime, Bytes)>) {
        lock(&self.history).restore(last, events);
    }

    pub(crate) fn last_event_id(&self) -> EventId {
        lock(&self.history).last()
    }

    /// Queues a frame on every connection in `channel`, or of `user`.
    pub(crate) fn publish_to_group(&self, target: Target<'_>, wire: &Wire) -> usize {
        let group = match target {
            Target::Channel(channel) => self.channels.get(channel),
            Target::User(user) => self.users.get(user),
        };
        let Some(group) = group else {
            return self.count_published(0, 0);
        };
        let mut wake = Vec::new();
        let (reached, overflowed) =
            lock(&group).push(wire, self.config.outbound_capacity, &mut wake);
        wake.into_iter().for_each(Waker::wake);
        self.count_published(reached, overflowed)
    }

    fn count_published(&self, reached: usize, overflowed: u64) -> usize {
        self.count_slow(overflowed);
        self.events_published.fetch_add(1, Ordering::Relaxed);
        self.deliveries.fetch_add(reached as u64, Ordering::Relaxed);
        reached
    }

    /// Queues a frame on one connection; false if it is gone or closing.
    pub(crate) fn send(&self, to: ConnectionId, wire: &Wire) -> bool {
        let Some(outbox) = self.outbox(to) else {
            return false;
        };
        let mut wake = Vec::new();
        let pushed = outbox.push_wire(wire, self.config.outbound_capacity, true, &mut wake);
        wake.into_iter().for_each(Waker::wake);
        match pushed {
            Pushed::Taken => true,
            Pushed::Overflowed => {
                self.count_slow(1);
                false
            }
            Pushed::Refused => false,
        }
    }

    /// Closes a connection with `close_frame`, after what is queued for it;
    /// false if it is gone or closing already.
    pub(crate) fn disconnect(&self, id: ConnectionId, close_frame: &Bytes) -> bool {
        let Some(outbox) = self.outbox(id) else {
            return false;
        };
        let mut wake = Vec::new();
        let closed = outbox.close(
            CloseReason::Requested(Box::new(close_frame.clone())),
            &mut wake,
        );
        wake.into_iter().for_each(Waker::wake);
        closed
    }

    /// Closes every connection of `user` as [`disconnect`](Self::disconnect)
    /// does, and returns how many it closed.
    pub(crate) fn disconnect_user(&self, user: &str, close_frame: &Bytes) -> usize {
        let Some(group) = self.users.get(user) else {
            return 0;
        };
        let mut wake = Vec::new();
        let closed = lock(&group)
            .outboxes()
            .filter(|outbox| {
                outbox.close(
                    CloseReason::Requested(Box::new(close_frame.clone())),
                    &mut wake,
                )
            })
            .count();
        wake.into_iter().for_each(Waker::wake);
        closed
    }

    /// How many connections `target` has.
    pub(crate) fn group_size(&self, target: Target<'_>) -> usize {
        let group = match target {
            Target::Channel(channel) => self.channels.get(channel),
            Target::User(user) => self.users.get(user),
        };
        group.map_or(0, |group| lock(&group).len())
    }

    /// The users in `channel`, each with how many connections it has there.
    pub(crate) fn presence(&self, channel: &str) -> Vec<(String, usize)> {
        self.channels
            .get(channel)
            .map_or_else(Vec::new, |group| lock(&group).users())
    }

    fn outbox(&self, id: ConnectionId) -> Option<Arc<Outbox>> {
        self.shard(id).get(&id).map(|member| member.outbox.clone())
    }

    /// Closes every connection with 1001 and refuses new ones; returns once
    /// every slot is free, or at `deadline`.
    pub(crate) async fn close_all(&self, deadline: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        self.for_each(|outbox, wake| {
            outbox.close(CloseReason::GoingAway, wake);
        });
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
            channels: self.channels.count(),
            users: self.users.count(),
            history: lock(&self.history).len(),
            event_streams: self.event_streams.load(Ordering::Relaxed),
            event_streams_accepted: self.event_streams_accepted.load(Ordering::Relaxed),
        }
    }

    /// Calls `f` on every open connection, shard by shard, and wakes the
    /// connections it asked to wake once their shard is unlocked.
    fn for_each(&self, mut f: impl FnMut(&Outbox, &mut Vec<Waker>)) {
        let mut wake = Vec::new();
        for shard in self.shards.iter() {
            for member in lock(shard).values() {
                f(&member.outbox, &mut wake);
            }
            wake.drain(..).for_each(Waker::wake);
        }
    }

    fn shard(&self, id: ConnectionId) -> MutexGuard<'_, BTreeMap<ConnectionId, Member>> {
        lock(&self.shards[(id.0 / SHARD_RUN) as usize % SHARDS])
    }
}

/// A group of connections to publish to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// The members of a channel.
    Channel(&'a str),
    /// The connections of a user.
    User(&'a str),
}

/// Locks `mutex`, ignoring poison: every critical section here is a few
/// map or queue operations, which a panic cannot leave half-done.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Pings every WebSocket each `heartbeat_interval` and drops the ones that
/// stayed silent for two; each `sse_heartbeat_interval`, sends a comment
/// line to the event streams that sent nothing else for as long. One task
/// serves the whole hub, so connections need no timers of their own.
async fn heartbeat(registry: Weak<Registry>) {
    let Some((ping_interval, comment_interval)) = registry.upgrade().map(|registry| {
        let config = &registry.config;
        (config.heartbeat_interval, config.sse_heartbeat_interval)
    }) else {
        return;
    };
    let mut pings = ticks(ping_interval);
    let mut comments = ticks(comment_interval);
    let ping = frame::ping();
    let comment = Bytes::from_static(wire::HEARTBEAT);
    loop {
        let transport = tokio::select! {
            _ = pings.tick() => Transport::WebSocket,
            _ = comments.tick() => Transport::EventStream,
        };
        let Some(registry) = registry.upgrade() else {
            return;
        };
        if registry.is_shutting_down() {
            return;
        }
        match transport {
            Transport::WebSocket => registry.ping(&ping, ping_interval),
            Transport::EventStream => registry.comment_quiet_streams(&comment, comment_interval),
        }
    }
}

/// Ticks each `interval`, the first an interval from now.
fn ticks(interval: Duration) -> tokio::time::Interval {
    // `Config` keeps the interval within bounds where neither panics.
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// `interval` in milliseconds of the registry clock.
fn millis(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
}

impl Registry {
    /// Pings every WebSocket, and drops those silent for two `interval`s.
    fn ping(&self, ping: &Bytes, interval: Duration) {
        let silence = millis(interval.saturating_mul(2));
        let now = self.now();
        let capacity = self.config.outbound_capacity;
        let (mut timeouts, mut overflowed) = (0, 0);
        self.for_each(|outbox, wake| {
            // An SSE client never speaks: it gets comment lines instead.
            if outbox.transport() == Transport::EventStream {
                return;
            }
            // A client waiting on the handler was seen "in the future".
            if now.saturating_sub(outbox.last_seen()) >= silence {
                timeouts += u64::from(outbox.close(CloseReason::HeartbeatTimeout, wake));
            } else if outbox.push(ping, capacity, true, wake) == Pushed::Overflowed {
                overflowed += 1;
            }
        });
        self.heartbeat_timeouts
            .fetch_add(timeouts, Ordering::Relaxed);
        self.count_slow(overflowed);
    }

    /// Queues `comment` on every event stream that sent nothing but
    /// comments for `interval`: it keeps proxies from closing the stream as
    /// idle, and finds clients that went away.
    fn comment_quiet_streams(&self, comment: &Bytes, interval: Duration) {
        if self.event_streams.load(Ordering::Relaxed) == 0 {
            return;
        }
        let quiet = millis(interval);
        let now = self.now();
        let capacity = self.config.outbound_capacity;
        let mut overflowed = 0;
        self.for_each(|outbox, wake| {
            // An event stream's `last_seen` is when it last sent an event.
            if outbox.transport() == Transport::EventStream
                && now.saturating_sub(outbox.last_seen()) >= quiet
                && outbox.push(comment, capacity, true, wake) == Pushed::Overflowed
            {
                overflowed += 1;
            }
        });
        self.count_slow(overflowed);
    }
}

/// One connection's claim on [`Config::max_connections`] and on its peer's
/// [`Config::max_connections_per_peer`], released when the connection
/// ends: every transport holds one per connection.
#[derive(Debug)]
pub(crate) struct Slot(
    pub(crate) Arc<Registry>,
    /// The peer the slot counts against, if any.
    Option<IpAddr>,
);

impl Slot {
    /// Claims a slot if fewer than `max_connections` are in use, and fewer
    /// than `max_connections_per_peer` by `peer`.
    pub(crate) fn acquire(
        registry: &Arc<Registry>,
        peer: Option<IpAddr>,
    ) -> Result<Slot, HandshakeError> {
        let max = registry.config.max_connections;
        registry
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| HandshakeError::TooManyConnections)?;
        // Held from here: an early return releases it.
        let mut slot = Slot(registry.clone(), None);
        if slot.count_peer(peer, registry.config.max_connections_per_peer) {
            Ok(slot)
        } else {
            Err(HandshakeError::TooManyPeerConnections)
        }
    }

    /// Claims a slot whatever the limits, for a connection admitted
    /// elsewhere; it still counts against the limits of later ones.
    pub(crate) fn admitted(registry: &Arc<Registry>, peer: Option<IpAddr>) -> Slot {
        registry.slots.fetch_add(1, Ordering::AcqRel);
        let mut slot = Slot(registry.clone(), None);
        slot.count_peer(peer, usize::MAX);
        slot
    }

    /// Counts this slot against `peer`, unless it holds `limit` slots
    /// already: false then. Peers are counted only under a limit.
    fn count_peer(&mut self, peer: Option<IpAddr>, limit: usize) -> bool {
        let registry = &self.0;
        let Some(peer) = peer.filter(|_| registry.config.max_connections_per_peer < usize::MAX)
        else {
            return true;
        };
        let mut peers = lock(&registry.peers);
        let held = peers.get(&peer).copied().unwrap_or(0);
        if held >= limit {
            return false;
        }
        peers.insert(peer, held + 1);
        self.1 = Some(peer);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(peer) = self.1 {
            if let Entry::Occupied(mut held) = lock(&self.0.peers).entry(peer) {
                if *held.get() > 1 {
                    *held.get_mut() -= 1;
                } else {
                    held.remove();
                }
            }
        }
        self.0.slots.fetch_sub(1, Ordering::AcqRel);
        self.0.slot_released.notify_waiters();
    }
}
