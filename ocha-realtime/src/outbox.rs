//! Each connection's queue of frames to send, shared with the hub, and
//! its socket, which the hub writes to directly while the connection has
//! nothing else to send.
//!
//! A direct write is the whole cost of a delivery to a client that keeps
//! up: one system call from the publishing thread, without waking the
//! connection's task, which would take the frame, write it and go back to
//! sleep. The queue takes over whenever writing directly could reorder or
//! tear frames: while the connection is writing (or owes pongs, or
//! closes), and after a direct write that the socket did not take whole;
//! the connection then finishes that frame first.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
    /// The connection took the frame: written to its socket, or queued for
    /// the connection to send.
    Taken,
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
    /// The connection's socket, once it has one and when it is a plain TCP
    /// socket: the connection's task reads and writes it as a
    /// [`SharedSocket`], and the hub writes to it directly while `idle`.
    socket: OnceLock<TcpStream>,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame a direct write already sent; the connection
    /// takes this with the frames and sends the rest.
    front_written: u32,
    /// The connection has nothing to write and is not writing: the hub may
    /// write to its socket. Set and cleared under the lock only.
    idle: bool,
    /// The connection's waker, kept between wakes.
    waker: Option<Waker>,
    /// Frames of a replay queued over the capacity: live frames may queue
    /// this many more until the connection takes them.
    replayed: u32,
    close: Option<CloseReason>,
}

impl Outbox {
    pub(crate) fn new(now: u64, transport: Transport) -> Self {
        Outbox {
            queue: Mutex::default(),
            last_seen: AtomicU64::new(now),
            transport,
            socket: OnceLock::new(),
        }
    }

    /// Hands the connection's socket over, for its task to use through
    /// [`SharedSocket`] and the hub to write to directly.
    pub(crate) fn attach(self: &Arc<Self>, socket: TcpStream) -> SharedSocket {
        if self.socket.set(socket).is_err() {
            unreachable!("a connection has one socket");
        }
        SharedSocket(self.clone())
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// Sends `wire` in this connection's encoding, as [`push`](Self::push)
    /// does; one its transport cannot carry (binary over SSE) is refused.
    pub(crate) fn push_wire(
        &self,
        wire: &Wire,
        capacity: usize,
        direct: bool,
        wake: &mut Vec<Waker>,
    ) -> Pushed {
        match wire.bytes(self.transport) {
            Some(frame) => self.push(frame, capacity, direct, wake),
            None => Pushed::Refused,
        }
    }

    /// Sends `frame`: writes it to the socket at once if `direct` is set
    /// and the connection is idle, and queues it otherwise, or what the
    /// socket did not take of it. Queueing fails once `capacity` frames
    /// wait: the connection is then closed as a slow consumer, and what
    /// it held is freed.
    ///
    /// The connection's waker, if it needs waking, is added to `wake`: the
    /// caller wakes it once it holds no lock the connection might need.
    pub(crate) fn push(
        &self,
        frame: &Bytes,
        capacity: usize,
        direct: bool,
        wake: &mut Vec<Waker>,
    ) -> Pushed {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return Pushed::Refused;
        }
        if direct && queue.idle {
            if let Some(socket) = self.socket.get() {
                // A failed write is the connection's to find: it tries again.
                let written = socket.try_write(frame).unwrap_or(0);
                if written == frame.len() {
                    return Pushed::Taken;
                }
                queue.front_written = written as u32;
            }
        }
        if queue.frames.len() >= capacity + queue.replayed as usize {
            // A frame begun on the socket stays, for the connection to finish
            // before its close frame.
            let begun = (queue.front_written > 0).then(|| queue.frames.pop_front());
            queue.frames = begun.flatten().into_iter().collect();
            queue.close = Some(CloseReason::SlowConsumer);
            wake.extend(queue.waker.clone());
            return Pushed::Overflowed;
        }
        queue.frames.push_back(frame.clone());
        queue.idle = false;
        // A connection with frames already queued has been woken for them.
        if queue.frames.len() == 1 {
            wake.extend(queue.waker.clone());
        }
        Pushed::Taken
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
        if frames.is_empty() {
            return true;
        }
        if queue.frames.is_empty() {
            wake.extend(queue.waker.clone());
        }
        queue.replayed = queue.replayed.saturating_add(frames.len() as u32);
        queue.frames.extend(frames);
        queue.idle = false;
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

    /// Records that the connection owes a frame of its own (a pong): the
    /// hub queues what it sends from now on, to go out after it.
    pub(crate) fn owe(&self) {
        self.lock().idle = false;
    }

    /// Refuses every frame from now on: the connection is closing. The
    /// frames waiting are moved to the end of `sending` if `flush` is set;
    /// otherwise only a frame a direct write began is, and the rest dropped.
    pub(crate) fn refuse_more(
        &self,
        sending: &mut VecDeque<Bytes>,
        written: &mut u32,
        flush: bool,
    ) {
        let mut queue = self.lock();
        queue.close.get_or_insert(CloseReason::Closing);
        queue.idle = false;
        let mut frames = std::mem::take(&mut queue.frames);
        if sending.is_empty() {
            *written = std::mem::take(&mut queue.front_written);
        }
        drop(queue);
        if !flush {
            frames.truncate(usize::from(sending.is_empty() && *written > 0));
        }
        sending.extend(frames);
    }

    /// Moves the queued frames to `sending` once it is empty, with in
    /// `written` what a direct write already sent of the first, and returns
    /// the close request, if any. Remembers `cx`'s waker: the next frame or
    /// close request pushed after this call wakes the connection.
    ///
    /// The connection is idle from here if it has nothing to send and owes
    /// nothing else (`owes`): the hub may then write to its socket.
    ///
    /// Frames stay here while the connection is still writing earlier ones,
    /// so a client that stops reading fills this queue and is found slow.
    pub(crate) fn poll_take(
        &self,
        sending: &mut VecDeque<Bytes>,
        written: &mut u32,
        owes: bool,
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
            std::mem::swap(sending, &mut queue.frames);
            *written = std::mem::take(&mut queue.front_written);
            queue.replayed = 0;
        } else if queue.close.is_some() {
            // Closing: whatever is left is sent before the close frame, or
            // was already dropped for a slow consumer.
            sending.append(&mut queue.frames);
        }
        queue.idle = sending.is_empty() && !owes && queue.close.is_none();
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

    fn socket(&self) -> &TcpStream {
        self.socket.get().expect("a shared socket is attached")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic elsewhere cannot leave the queue inconsistent: every
        // critical section is a few field updates.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection's TCP socket, kept in its outbox so that the hub can write
/// to it too; the connection's task reads and writes it through this.
/// Writes never overlap: the task writes only once the outbox is no longer
/// idle, and the hub only while it is (see [`Outbox::push`]).
pub(crate) struct SharedSocket(Arc<Outbox>);

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = self.0.socket();
        loop {
            ready!(socket.poll_read_ready(cx))?;
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = self.0.socket();
        loop {
            ready!(socket.poll_write_ready(cx))?;
            match socket.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(self.0.socket());
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}
