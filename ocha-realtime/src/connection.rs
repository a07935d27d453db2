//! One WebSocket connection: sends what its outbox holds, answers pings and
//! the close handshake, and hands whole client messages to the hub's
//! handler (or discards them when it has none).
//!
//! It is a hand-written future rather than an `async fn` so that its state
//! is a few fields, with no buffers: an idle connection costs little.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::frame::{self, Inbound, InboundError, Received};
use crate::outbox::{CloseReason, Outbox, SharedSocket};
use crate::registry::{Registry, Slot};
use crate::wire::Transport;
use crate::{Admission, ConnectionId};

/// Bytes read from the socket per call; they live on the stack of `poll`
/// only, unless a message handler is still busy when they arrive.
const READ_CHUNK: usize = 2048;
/// Close code for a client dropped for falling behind (private-use range).
pub(crate) const SLOW_CONSUMER: CloseCode = CloseCode::Library(4008);
/// Frames handed to one vectored write.
const MAX_WRITE_SLICES: usize = 64;
/// Pongs owed at once; past this the oldest is dropped, as RFC 6455 (5.5.3)
/// allows, so a client that pings without reading cannot pile them up.
const MAX_OWED_PONGS: usize = 16;

/// The application at work on one client message. Boxed, and only while
/// it works: most connections never have one.
struct Handling {
    /// The future the application's handler returned.
    future: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Bytes read behind the message, parsed once the handler is done.
    unparsed: Vec<u8>,
}

/// A connection's place in the hub, from its admission until it is gone:
/// it is listed, counted and sent events from the moment the hub admits it,
/// even before its socket arrives. Dropping it takes it out of the hub.
pub(crate) struct Registration {
    slot: Slot,
    id: ConnectionId,
    outbox: Arc<Outbox>,
}

impl Registration {
    /// Lists a connection in the hub as `admission` says; returns it with
    /// the frames to send first (the welcome, and a resuming client's
    /// replay).
    pub(crate) fn new(
        slot: Slot,
        admission: Admission,
        transport: Transport,
    ) -> (Registration, VecDeque<Bytes>) {
        let outbox = Arc::new(Outbox::new(slot.0.now(), transport));
        let (id, first) = slot.0.register(&outbox, admission);
        tracing::debug!(connection = %id, ?transport, "connection open");
        (Registration { slot, id, outbox }, first)
    }
}

impl Registration {
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.slot.0
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Hands the connection's socket to its outbox; the connection reads
    /// and writes it through what this returns.
    pub(crate) fn attach(&self, socket: tokio::net::TcpStream) -> SharedSocket {
        self.outbox.attach(socket)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.slot.0.deregister(self.id);
        tracing::debug!(connection = %self.id, "connection closed");
    }
}

/// A running connection; completes when it is closed.
pub(crate) struct Connection<IO> {
    io: IO,
    registration: Registration,
    inbound: Inbound,
    /// Frames taken from the outbox; the front one may be partly written.
    sending: VecDeque<Bytes>,
    /// Bytes of `sending`'s front already written (a frame is at most
    /// `max_message_size` plus its header, far below 4 GiB).
    written: u32,
    /// Pongs to send once `sending` is empty.
    pongs: Vec<Bytes>,
    /// The application's handling of the last message; reading waits for
    /// it, so a busy application pushes back on the client through TCP.
    handling: Option<Box<Handling>>,
    /// False once the inbound stream is broken and cannot be parsed further.
    reading: bool,
    /// Boxed: every field here costs each idle connection, and only a
    /// closing one needs this.
    closing: Option<Box<Closing>>,
}

/// The close handshake in progress: our close frame is the last of `sending`.
struct Closing {
    deadline: Pin<Box<Sleep>>,
    /// Whether to wait for the client's close frame after sending ours.
    await_peer: bool,
    /// Our close frame is written and writes are shut down.
    sent: bool,
}

/// What reading found.
enum ReadOutcome {
    /// Nothing more to read for now.
    Pending,
    /// The stream ended or failed: the connection is over.
    Ended,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    /// Runs a registered connection over `io`, sending `first` first.
    pub(crate) fn new(registration: Registration, first: VecDeque<Bytes>, io: IO) -> Self {
        let registry = registration.registry();
        let inbound = Inbound::new(registry.config.max_message_size, registry.handler.is_some());
        Connection {
            io,
            sending: first,
            registration,
            inbound,
            written: 0,
            pongs: Vec::new(),
            handling: None,
            reading: true,
            closing: None,
        }
    }

    /// Runs the message handler and reads until the socket has nothing
    /// more, answering control frames.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> ReadOutcome {
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            if let Some(handling) = &mut self.handling {
                let done = handling.future.as_mut().poll(cx).is_ready();
                if !done && self.closing.is_none() {
                    return ReadOutcome::Pending;
                }
                // Done, or closing: reading goes on (to hear the client's
                // close), starting with what was kept.
                let unparsed = std::mem::take(&mut handling.unparsed);
                if done {
                    self.handling = None;
                    self.registration
                        .outbox
                        .seen(self.registration.registry().now());
                }
                if !unparsed.is_empty() {
                    self.receive(&unparsed);
                    continue;
                }
            }
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return ReadOutcome::Pending,
                Poll::Ready(Err(_)) => return ReadOutcome::Ended,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return ReadOutcome::Ended,
                Poll::Ready(Ok(())) => self.receive(buf.filled()),
            }
        }
    }

    /// Handles bytes from the client: answers pings and the close
    /// handshake, hands messages to the handler (keeping what follows a
    /// message until the handler is done), and closes on a protocol error.
    ///
    /// After a protocol error the rest of the stream cannot be parsed; it is
    /// still read, and discarded, until the client hangs up or the close
    /// times out: closing a socket with unread bytes would reset it and could
    /// lose our close frame.
    pub(crate) fn receive(&mut self, mut input: &[u8]) {
        self.registration
            .outbox
            .seen(self.registration.registry().now());
        while self.reading && !input.is_empty() {
            if let (Some(handling), None) = (&mut self.handling, &self.closing) {
                handling.unparsed.extend_from_slice(input);
                return;
            }
            match self.inbound.advance(&mut input) {
                Ok(None) => {}
                Ok(Some(Received::Message(message))) if self.closing.is_none() => {
                    if let Some(handler) = &self.registration.registry().handler {
                        let future = handler(
                            self.registration.registry().clone(),
                            self.registration.id,
                            message,
                        );
                        self.handling = Some(Box::new(Handling {
                            future,
                            unparsed: Vec::new(),
                        }));
                        self.registration.outbox.busy();
                    }
                }
                Ok(Some(Received::Ping(payload))) if self.closing.is_none() => {
                    if self.pongs.len() == MAX_OWED_PONGS {
                        self.pongs.remove(0);
                    }
                    self.pongs.push(frame::pong(&payload));
                    // The pong goes out before anything sent from now on
                    // (a reply to the message the ping interrupted, say).
                    self.registration.outbox.owe();
                }
                Ok(Some(Received::Ping(_) | Received::Message(_))) => {}
                Ok(Some(Received::Close(code))) => match &mut self.closing {
                    Some(closing) => closing.await_peer = false,
                    // Echo the client's code, as RFC 6455 suggests.
                    None => self.start_close(frame::close(code, ""), false, false),
                },
                Err(error) => {
                    self.reading = error != InboundError::Protocol;
                    if self.closing.is_none() {
                        let reason = match error {
                            InboundError::TooBig => "message too big",
                            InboundError::Protocol => "protocol error",
                            InboundError::InvalidUtf8 => "invalid UTF-8",
                        };
                        // What was sent before the error (replies to earlier
                        // messages, say) still goes out ahead of the close.
                        let close = frame::close(Some(error.close_code()), reason);
                        self.start_close(close, true, true);
                    }
                }
            }
        }
    }

    /// Queues `close_frame` as the last frame to send; queued data is sent
    /// first only when `flush` is set. A partly written frame is always
    /// finished so the stream stays well-formed.
    fn start_close(&mut self, close_frame: Bytes, flush: bool, await_peer: bool) {
        // Nothing more is queued for a closing connection, nor counted as
        // delivered to it.
        if !flush {
            self.sending.truncate(usize::from(self.written > 0));
        }
        self.registration
            .outbox
            .refuse_more(&mut self.sending, &mut self.written, flush);
        self.pongs.clear();
        self.sending.push_back(close_frame);
        self.closing = Some(Box::new(Closing {
            deadline: Box::pin(tokio::time::sleep(
                self.registration.registry().config.close_timeout,
            )),
            await_peer,
            sent: false,
        }));
    }

    /// Writes `sending`, several frames per call when the client is behind.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.sending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
            for (i, (slice, frame)) in slices.iter_mut().zip(&self.sending).enumerate() {
                let skip = if i == 0 { self.written as usize } else { 0 };
                *slice = IoSlice::new(&frame[skip..]);
            }
            let count = self.sending.len().min(MAX_WRITE_SLICES);
            let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            while let Some(front) = self.sending.front() {
                let left = front.len() - self.written as usize;
                if n < left {
                    self.written += n as u32;
                    break;
                }
                n -= left;
                self.written = 0;
                self.sending.pop_front();
            }
        }
        // All sent: an idle connection keeps no buffer (the outbox brings
        // one with the next event), and a burst gives back what it grew.
        self.sending = VecDeque::new();
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Moves the connection forward as far as it can go without waiting.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let ReadOutcome::Ended = self.poll_read(cx) {
            return Poll::Ready(());
        }
        let closing = loop {
            if self.closing.is_none() {
                let taking = self.sending.is_empty();
                let owes = !self.pongs.is_empty();
                let outbox = &self.registration.outbox;
                match outbox.poll_take(&mut self.sending, &mut self.written, owes, cx) {
                    // `Closing` is set only once `self.closing` is.
                    None | Some(CloseReason::Closing) => {}
                    Some(CloseReason::HeartbeatTimeout) => return Poll::Ready(()),
                    Some(CloseReason::GoingAway) => {
                        let close = frame::close(Some(CloseCode::Away), "server shutting down");
                        self.start_close(close, true, true);
                    }
                    Some(CloseReason::SlowConsumer) => {
                        self.start_close(slow_consumer_close(), false, true);
                    }
                    Some(CloseReason::Requested(close)) => self.start_close(*close, true, true),
                }
                if taking && !self.pongs.is_empty() {
                    // Owed pongs go out ahead of the events queued since,
                    // behind the frame a direct write began, if any.
                    let at = usize::from(self.written > 0);
                    for (i, pong) in self.pongs.drain(..).enumerate() {
                        self.sending.insert(at + i, pong);
                    }
                }
            }
            // The outbox is empty and will wake this task for its next frame.
            if self.sending.is_empty() && self.closing.is_none() {
                return Poll::Pending;
            }
            match self.poll_write(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            if let Some(closing) = &mut self.closing {
                break closing;
            }
            // More frames may have queued up behind those written: take them.
        };
        if !closing.sent {
            if ready!(Pin::new(&mut self.io).poll_shutdown(cx)).is_err() {
                return Poll::Ready(());
            }
            closing.sent = true;
        }
        // Our close is out; wait for the client's (or its EOF) if it owes one.
        if closing.await_peer {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Future for Connection<IO> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let progress = this.drive(cx);
        match &mut this.closing {
            // However the close is stuck, the deadline ends it.
            Some(closing) if progress.is_pending() => closing.deadline.as_mut().poll(cx),
            _ => progress,
        }
    }
}

/// The close frame for a client that fell too far behind.
fn slow_consumer_close() -> Bytes {
    frame::close(Some(SLOW_CONSUMER), "slow consumer")
}
