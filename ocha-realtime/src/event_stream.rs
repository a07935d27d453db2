//! [`EventStream`]: a Server-Sent Events connection, whose events go out
//! in a `text/event-stream` response body rather than WebSocket frames.
//!
//! It is a hub connection like any other (listed, in its channels, counted
//! against `max_connections`, bounded by `outbound_capacity`, closed at
//! shutdown), only encoded differently. Served over a [`HandoffIo`], it
//! takes its socket once hyper has written the response head and writes
//! the chunked body itself, on a task of its own (`chunked`); elsewhere
//! hyper pulls from the body as the socket takes it. Either way a client
//! that stops reading fills its outbox and is closed as a slow consumer;
//! its `EventSource` then reconnects with the `Last-Event-ID` header and
//! resumes from the history.
//!
//! On its own socket, a stream the hub closes lets the socket go: a slow
//! consumer's at once, its body cut short; any other once the rest of its
//! body is out, or after `close_timeout`. Pulled by hyper, a stream whose
//! client never
//! reads again keeps its socket, and its listing, until the server drops
//! the connection: hyper stops pulling from a body while its write buffer
//! is full. Servers bound that with a write timeout.
//!
//! Comment lines keep idle streams busy: the hub's heartbeat queues them,
//! so a stream needs no timer of its own.
//!
//! [`HandoffIo`]: crate::HandoffIo

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::chunked::ChunkedStream;
use crate::connection::Registration;
use crate::handoff::Claim;
use crate::outbox::CloseReason;
use crate::wire::HEARTBEAT;

/// The body of a Server-Sent Events response from
/// [`Hub::event_stream`](crate::Hub::event_stream): the hub's events for
/// one client, as long as the client keeps the response open.
///
/// Served over a [`HandoffIo`](crate::HandoffIo), it ends as soon as hyper
/// has written the response head, and the stream goes on over the socket,
/// without hyper.
pub struct EventStream {
    /// `None` once the stream runs on a socket of its own.
    registration: Option<Registration>,
    /// What was taken from the outbox and is not yet handed to hyper.
    sending: VecDeque<Bytes>,
    /// The connection's socket, to take once the response head is out;
    /// `None` when hyper pulls the events.
    handoff: Option<Claim>,
    /// The hub closed this connection: end once `sending` is empty.
    ending: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("queued", &self.sending.len())
            .field("handoff", &self.handoff.is_some())
            .field("ending", &self.ending)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn new(
        registration: Registration,
        first: VecDeque<Bytes>,
        handoff: Option<Claim>,
    ) -> EventStream {
        EventStream {
            registration: Some(registration),
            sending: first,
            handoff,
            ending: false,
        }
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(handoff) = &this.handoff {
            // Nothing goes to hyper, so that it flushes the head alone.
            let socket = ready!(handoff.poll_take(cx));
            this.handoff = None;
            if let Some(registration) = this.registration.take() {
                ChunkedStream::spawn(registration, std::mem::take(&mut this.sending), socket);
            }
        }
        let Some(registration) = &this.registration else {
            // hyper's last chunk goes nowhere: the socket is gone.
            return Poll::Ready(None);
        };
        loop {
            if let Some(bytes) = this.sending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.ending {
                return Poll::Ready(None);
            }
            match poll_take(registration, &mut this.sending, cx) {
                None => {}
                // Its frames were dropped; the client resumes when it
                // reconnects.
                Some(CloseReason::SlowConsumer) => return Poll::Ready(None),
                // Shutdown, or the application's close: what is queued
                // goes first. (A close frame means nothing here.)
                Some(_) => this.ending = true,
            }
            if this.sending.is_empty() && !this.ending {
                return Poll::Pending;
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Takes what the outbox of an event stream holds, as `Outbox::poll_take`
/// does, and notes when it took an event rather than heartbeats only: the
/// hub's heartbeat skips streams that sent one lately.
pub(crate) fn poll_take(
    registration: &Registration,
    sending: &mut VecDeque<Bytes>,
    cx: &Context<'_>,
) -> Option<CloseReason> {
    let held = sending.len();
    // The hub never writes to an event stream's socket (it has none in the
    // outbox), so no frame was begun.
    let mut begun = 0;
    let close = registration
        .outbox()
        .poll_take(sending, &mut begun, false, cx);
    if sending
        .iter()
        .skip(held)
        .any(|frame| frame[..] != *HEARTBEAT)
    {
        registration.outbox().seen(registration.registry().now());
    }
    close
}
