//! Event ids and the bounded history that lets a reconnecting client resume
//! where it left off.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::wire::{Transport, Wire};

/// What a resuming client is sent, after its welcome, when some of what it
/// missed is no longer kept: it should refetch its state (for a shop, the
/// product list), then carry on with live events.
pub const RESYNC: &str = r#"{"type":"resync"}"#;

/// An event's position in one of the hub's streams: the events published
/// to all, or to one channel.
///
/// Ids come from the application's own log (a database sequence, say), so
/// that every node of a cluster gives the same event the same id; each is
/// greater than the one before. Clients see them as decimal strings and
/// hand one back as `since` to resume after it.
///
/// ```
/// use ocha_realtime::EventId;
///
/// let id: EventId = "42".parse().unwrap();
/// assert_eq!(id, EventId::new(42));
/// assert_eq!(id.to_string(), "42");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(u64);

impl EventId {
    /// The position before any event: where a hub with no events stands.
    pub const START: EventId = EventId(0);

    /// The id `value`.
    pub const fn new(value: u64) -> EventId {
        EventId(value)
    }

    /// The id as a number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text is not an event id: ids are decimal numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event id is a decimal number")]
pub struct ParseEventIdError;

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(text: &str) -> Result<EventId, ParseEventIdError> {
        // u64's parser takes a leading '+', which no id we send has.
        if !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(ParseEventIdError);
        }
        text.parse().map(EventId).map_err(|_| ParseEventIdError)
    }
}

/// Where a resuming client stands, as it said in `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Since {
    /// An empty `since`: live events from now on, but tell it where "now" is.
    Now,
    /// After this event.
    After(EventId),
    /// Not an id we could have sent.
    Unknown,
}

impl Since {
    pub(crate) fn parse(text: &str) -> Since {
        match text {
            "" => Since::Now,
            text => text.parse().map_or(Since::Unknown, Since::After),
        }
    }
}

/// What a resuming client is sent before live events.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Every event it missed, oldest first (none if it missed nothing).
    Events(Vec<Bytes>),
    /// Some of what it missed is no longer kept, or its position is not one
    /// of ours: it must refetch its state.
    Resync,
}

/// The latest events published to all, bounded by count and by age.
#[derive(Debug)]
pub(crate) struct History {
    events: VecDeque<Kept>,
    /// The id of the latest event, kept or not.
    last: EventId,
    /// Every event after this one is kept: older ones were dropped, or were
    /// published before the history was restored.
    complete_after: EventId,
    capacity: usize,
    max_age: Duration,
}

#[derive(Debug)]
struct Kept {
    id: EventId,
    published_at: SystemTime,
    wire: Wire,
}

impl History {
    pub(crate) fn new(capacity: usize, max_age: Duration) -> History {
        History {
            events: VecDeque::new(),
            last: EventId::START,
            complete_after: EventId::START,
            capacity,
            max_age,
        }
    }

    pub(crate) fn last(&self) -> EventId {
        self.last
    }

    /// Appends an event; false, keeping nothing, unless its id is after the
    /// last one (it was published already).
    pub(crate) fn append(&mut self, id: EventId, published_at: SystemTime, wire: &Wire) -> bool {
        if id <= self.last {
            return false;
        }
        self.last = id;
        self.events.push_back(Kept {
            id,
            published_at,
            wire: wire.clone(),
        });
        if self.events.len() > self.capacity {
            self.drop_oldest();
        }
        self.expire(SystemTime::now());
        true
    }

    /// Starts over from an application's log: `last` is the latest id it
    /// assigned, `events` what it kept of the latest ones, oldest first.
    pub(crate) fn restore(&mut self, last: EventId, events: Vec<(EventId, SystemTime, Bytes)>) {
        self.events.clear();
        self.last = last;
        self.complete_after = last;
        // Keep the newest, in increasing order, up to `last`.
        let start = events.len().saturating_sub(self.capacity);
        for (id, published_at, frame) in events.into_iter().skip(start) {
            if id == EventId::START
                || id > last
                || self.events.back().is_some_and(|kept| kept.id >= id)
            {
                continue;
            }
            if self.events.is_empty() {
                self.complete_after = EventId(id.0 - 1);
            }
            self.events.push_back(Kept {
                id,
                published_at,
                wire: Wire::new(frame, Some(id)),
            });
        }
        self.expire(SystemTime::now());
    }

    /// What a client of `transport` that stands at `since` is sent before
    /// live events.
    pub(crate) fn replay(&mut self, since: Since, transport: Transport) -> Replay {
        self.expire(SystemTime::now());
        match since {
            Since::Now => Replay::Events(Vec::new()),
            Since::After(id) if (self.complete_after..=self.last).contains(&id) => Replay::Events(
                self.events
                    .iter()
                    .skip_while(|kept| kept.id <= id)
                    .filter_map(|kept| kept.wire.bytes(transport).cloned())
                    .collect(),
            ),
            Since::After(_) | Since::Unknown => Replay::Resync,
        }
    }

    /// How many events are kept now.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether it holds nothing a client could resume from but its
    /// position (every event it had expired).
    fn is_spent(&mut self) -> bool {
        self.expire(SystemTime::now());
        self.events.is_empty()
    }

    fn expire(&mut self, now: SystemTime) {
        while self.events.front().is_some_and(|kept| {
            now.duration_since(kept.published_at)
                .is_ok_and(|age| age > self.max_age)
        }) {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(dropped) = self.events.pop_front() {
            self.complete_after = dropped.id;
        }
    }
}

/// The history of each channel published to with ids. Each has its own
/// lock, held through a publish to the channel and while a connection joins
/// it with a position, as [`History`] is for events published to all.
///
/// A channel's history outlives its members, for clients that come back;
/// one whose events have all expired is dropped, as the map grows, and a
/// client resuming there is told to resync.
#[derive(Debug, Default)]
pub(crate) struct ChannelHistories {
    by_name: Mutex<HashMap<Arc<str>, Arc<Mutex<History>>>>,
    /// How many histories there were after the last sweep.
    swept_at: Mutex<usize>,
}

impl ChannelHistories {
    /// The history of `channel`, created empty if it has none.
    pub(crate) fn get(&self, channel: &str, config: &crate::Config) -> Arc<Mutex<History>> {
        let mut by_name = crate::registry::lock(&self.by_name);
        if let Some(history) = by_name.get(channel) {
            return history.clone();
        }
        let history = Arc::new(Mutex::new(History::new(
            config.history_size,
            config.history_max_age,
        )));
        by_name.insert(Arc::from(channel), history.clone());
        let mut swept_at = crate::registry::lock(&self.swept_at);
        // Sweeping when the map has doubled keeps its cost constant per
        // channel created.
        if by_name.len() > 2 * (*swept_at).max(64) {
            by_name.retain(|_, history| {
                Arc::strong_count(history) > 1
                    || !history
                        .try_lock()
                        .is_ok_and(|mut history| history.is_spent())
            });
            *swept_at = by_name.len();
        }
        history
    }

    /// The id of the latest event published to `channel`.
    pub(crate) fn last(&self, channel: &str) -> EventId {
        // Not under the map's lock: the history may be in a fan-out.
        let history = crate::registry::lock(&self.by_name).get(channel).cloned();
        history.map_or(EventId::START, |history| {
            crate::registry::lock(&history).last()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn frame(id: u64) -> Bytes {
        crate::frame::text(format!("event {id}").as_bytes())
    }

    fn wire(id: u64) -> Wire {
        Wire::new(frame(id), Some(EventId(id)))
    }

    fn events(ids: impl IntoIterator<Item = u64>) -> Replay {
        Replay::Events(ids.into_iter().map(frame).collect())
    }

    /// What a WebSocket client at `since` is sent first.
    fn replay(history: &mut History, since: Since) -> Replay {
        history.replay(since, Transport::WebSocket)
    }

    fn after(id: u64) -> Since {
        Since::After(EventId(id))
    }

    fn history(capacity: usize, ids: impl IntoIterator<Item = u64>) -> History {
        let mut history = History::new(capacity, DAY);
        for id in ids {
            assert!(history.append(EventId(id), SystemTime::now(), &wire(id)));
        }
        history
    }

    #[test]
    fn since_parses_empty_ids_and_anything_else() {
        assert_eq!(Since::parse(""), Since::Now);
        assert_eq!(Since::parse("42"), after(42));
        assert_eq!(Since::parse("0"), after(0));
        for bad in ["+1", "-1", "x", "1.5", " 1", "18446744073709551616"] {
            assert_eq!(Since::parse(bad), Since::Unknown, "{bad:?}");
        }
    }

    #[test]
    fn replays_what_came_after_the_position() {
        let mut history = history(10, 1..=5);
        assert_eq!(replay(&mut history, after(2)), events(3..=5));
        assert_eq!(replay(&mut history, after(5)), events([]));
        assert_eq!(replay(&mut history, after(0)), events(1..=5));
        assert_eq!(replay(&mut history, Since::Now), events([]));
    }

    #[test]
    fn a_position_not_ours_or_no_longer_covered_resyncs() {
        let mut history = history(3, 1..=5);
        assert_eq!(replay(&mut history, after(2)), events(3..=5));
        assert_eq!(replay(&mut history, after(1)), Replay::Resync);
        assert_eq!(
            replay(&mut history, after(6)),
            Replay::Resync,
            "from the future"
        );
        assert_eq!(replay(&mut history, Since::Unknown), Replay::Resync);
    }

    #[test]
    fn ids_must_increase() {
        let mut history = history(10, [1, 2, 5]);
        assert!(!history.append(EventId(5), SystemTime::now(), &wire(5)));
        assert!(!history.append(EventId(3), SystemTime::now(), &wire(3)));
        assert_eq!(history.last(), EventId(5));
        assert_eq!(replay(&mut history, after(0)), events([1, 2, 5]));
    }

    #[test]
    fn no_capacity_keeps_the_position_only() {
        let mut history = history(0, 1..=3);
        assert_eq!(history.len(), 0);
        assert_eq!(replay(&mut history, after(3)), events([]));
        assert_eq!(replay(&mut history, after(2)), Replay::Resync);
    }

    #[test]
    fn old_events_expire() {
        let mut history = History::new(10, Duration::from_secs(60));
        let old = SystemTime::now() - Duration::from_secs(120);
        history.restore(
            EventId(3),
            vec![
                (EventId(2), old, frame(2)),
                (EventId(3), SystemTime::now(), frame(3)),
            ],
        );
        assert_eq!(replay(&mut history, after(2)), events([3]));
        assert_eq!(replay(&mut history, after(1)), Replay::Resync);
    }

    #[test]
    fn a_restored_history_covers_only_what_it_was_given() {
        let mut history = History::new(2, DAY);
        let now = SystemTime::now();
        history.restore(
            EventId(9),
            vec![
                (EventId(7), now, frame(7)),
                (EventId(8), now, frame(8)),
                (EventId(9), now, frame(9)),
            ],
        );
        assert_eq!(replay(&mut history, after(7)), events([8, 9]));
        assert_eq!(replay(&mut history, after(6)), Replay::Resync);
        // A log whose kept events all expired still has its position.
        history.restore(EventId(9), Vec::new());
        assert_eq!(replay(&mut history, after(9)), events([]));
        assert_eq!(replay(&mut history, after(8)), Replay::Resync);
        assert!(history.append(EventId(10), now, &wire(10)));
        assert_eq!(replay(&mut history, after(9)), events([10]));
    }
}
