//! Each connection's queue of frames to send, shared with the hub.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Waker};

use bytes::Bytes;

use crate::wire::{Transport, Wire};

/// Why the hub closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The hub shuts down: send what is queued, then close with 1001.
    GoingAway,
    /// The client fell `outbound_capacity` frames behind: close with 4008.
    SlowConsumer,
    /// The client sent nothing for two heartbeat intervals: drop it.
    HeartbeatTimeout,
    /// The application closes it: send what is queued, then this close
    /// frame (boxed, so that every outbox stays small).
    Requested(Box<Bytes>),
    /// The connection is closing on its own (the client closed, or broke
    /// the protocol): nothing more is queued for it.
    Closing,
}

/// What [`Outbox::push`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The frame waits for the connection to send it.
    Queued,
    /// The queue was full; the connection is now closing as a slow consumer.
    Overflowed,
    /// The connection is already closing and takes no more frames.
    Refused,
}

/// The hub's side of a connection: frames to send and a way to wake the
/// connection's task. Frames are shared [`Bytes`], so queueing one costs a
/// reference count, not a copy.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// When the client was last heard from, in milliseconds of the hub clock;
    /// for an event stream, whose client never speaks, when it last took an
    /// event to send (see `event_stream::poll_take`).
    last_seen: AtomicU64,
    transport: Transport,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// The connection's waker, kept between wakes.
    waker: Option<Waker>,
    /// Frames of a replay queued over the capacity: live frames may queue
    /// this many more until the connection takes them.
    replayed: usize,
    close: Option<CloseReason>,
}

impl Outbox {
    pub(crate) fn new(now: u64, transport: Transport) -> Self {
        Outbox {
            queue: Mutex::default(),
            last_seen: AtomicU64::new(now),
            transport,
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// Queues `wire` in this connection's encoding, as [`push`](Self::push)
    /// does; one its transport cannot carry (binary over SSE) is refused.
    pub(crate) fn push_wire(&self, wire: &Wire, capacity: usize, wake: &mut Vec<Waker>) -> Pushed {
        match wire.bytes(self.transport) {
            Some(frame) => self.push(frame, capacity, wake),
            None => Pushed::Refused,
        }
    }

    /// Queues `frame` unless `capacity` frames already wait; a full queue
    /// closes the connection as a slow consumer and frees what it held.
    ///
    /// The connection's waker, if it needs waking, is added to `wake`: the
    /// caller wakes it once it holds no lock the connection might need.
    pub(crate) fn push(&self, frame: &Bytes, capacity: usize, wake: &mut Vec<Waker>) -> Pushed {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return Pushed::Refused;
        }
        if queue.frames.len() >= capacity + queue.replayed {
            queue.frames = VecDeque::new();
            queue.close = Some(CloseReason::SlowConsumer);
            wake.extend(queue.waker.clone());
            return Pushed::Overflowed;
        }
        queue.frames.push_back(frame.clone());
        // A connection with frames already queued has been woken for them.
        if queue.frames.len() == 1 {
            wake.extend(queue.waker.clone());
        }
        Pushed::Queued
    }

    /// Queues what a client resuming in a channel missed, however many: the
    /// capacity bounds how far behind live events a client may fall, and
    /// the replay is bounded by the history already. False if the
    /// connection is closing.
    pub(crate) fn push_replay(&self, frames: Vec<Bytes>, wake: &mut Vec<Waker>) -> bool {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return false;
        }
        if queue.frames.is_empty() && !frames.is_empty() {
            wake.extend(queue.waker.clone());
        }
        queue.replayed += frames.len();
        queue.frames.extend(frames);
        true
    }

    /// Asks the connection to close, adding its waker to `wake`; false if
    /// it was closing already.
    pub(crate) fn close(&self, reason: CloseReason, wake: &mut Vec<Waker>) -> bool {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return false;
        }
        queue.close = Some(reason);
        wake.extend(queue.waker.clone());
        true
    }

    /// Refuses every frame from now on: the connection is closing. The
    /// frames waiting are moved to the end of `sending` if it is given, and
    /// dropped otherwise.
    pub(crate) fn refuse_more(&self, sending: Option<&mut VecDeque<Bytes>>) {
        let mut queue = self.lock();
        queue.close.get_or_insert(CloseReason::Closing);
        let frames = std::mem::take(&mut queue.frames);
        drop(queue);
        if let Some(sending) = sending {
            sending.extend(frames);
        }
    }

    /// Moves the queued frames to `sending` once it is empty, and returns the
    /// close request, if any. Remembers `cx`'s waker: the next frame or close
    /// request pushed after this call wakes the connection.
    ///
    /// Frames stay here while the connection is still writing earlier ones,
    /// so a client that stops reading fills this queue and is found slow.
    pub(crate) fn poll_take(
        &self,
        sending: &mut VecDeque<Bytes>,
        cx: &Context<'_>,
    ) -> Option<CloseReason> {
        let mut queue = self.lock();
        if !queue
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queue.waker = Some(cx.waker().clone());
        }
        if sending.is_empty() {
            // Swapping keeps both buffers' capacity: no allocation per event
            // (the connection trims `sending` after a burst).
            std::mem::swap(sending, &mut queue.frames);
            queue.replayed = 0;
        } else if queue.close.is_some() {
            // Closing: whatever is left is sent before the close frame, or
            // was already dropped for a slow consumer.
            sending.append(&mut queue.frames);
        }
        queue.close.clone()
    }

    /// Records that the client was heard from at `now`.
    pub(crate) fn seen(&self, now: u64) {
        self.last_seen.store(now, Ordering::Relaxed);
    }

    /// Records that the client waits on the application's handler: it is
    /// not silent, so the heartbeat leaves it alone until the next `seen`.
    pub(crate) fn busy(&self) {
        self.last_seen.store(u64::MAX, Ordering::Relaxed);
    }

    pub(crate) fn last_seen(&self) -> u64 {
        self.last_seen.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic elsewhere cannot leave the queue inconsistent: every
        // critical section is a few field updates.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
