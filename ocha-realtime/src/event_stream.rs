//! [`EventStream`]: a Server-Sent Events connection, whose events go out
//! in a `text/event-stream` response body rather than WebSocket frames.
//!
//! It is a hub connection like any other (listed, in its channels, counted
//! against `max_connections`, bounded by `outbound_capacity`, closed at
//! shutdown), only encoded differently; hyper pulls from the body as the
//! socket takes it, so a client that stops reading fills its outbox and is
//! closed as a slow consumer: it takes nothing more, and the stream ends
//! when hyper next pulls from it. Its `EventSource` then reconnects with
//! the `Last-Event-ID` header and resumes from the history.
//!
//! A client that never reads again keeps its socket, and its listing, until
//! the server drops the connection: hyper stops pulling from a body while
//! its write buffer is full. Servers bound that with a write timeout.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::connection::Registration;
use crate::outbox::CloseReason;

/// A comment line: ignored by clients, it keeps the stream busy.
const HEARTBEAT: &[u8] = b":\n";

/// The body of a Server-Sent Events response from
/// [`Hub::event_stream`](crate::Hub::event_stream): the hub's events for
/// one client, as long as the client keeps the response open.
pub struct EventStream {
    registration: Registration,
    /// What was taken from the outbox and is not yet handed to hyper.
    sending: VecDeque<Bytes>,
    heartbeat: Pin<Box<Sleep>>,
    interval: Duration,
    /// When the stream last sent something: the heartbeat is due an
    /// interval after. Re-arming the timer per event would cost more.
    last_sent: Instant,
    /// The hub closed this connection: end once `sending` is empty.
    ending: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("queued", &self.sending.len())
            .field("ending", &self.ending)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    pub(crate) fn new(
        registration: Registration,
        first: VecDeque<Bytes>,
        interval: Duration,
    ) -> EventStream {
        EventStream {
            registration,
            sending: first,
            heartbeat: Box::pin(tokio::time::sleep(interval)),
            interval,
            last_sent: Instant::now(),
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
        loop {
            if let Some(bytes) = this.sending.pop_front() {
                this.last_sent = Instant::now();
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.ending {
                return Poll::Ready(None);
            }
            // No direct writes (it has no socket), so nothing is ever begun.
            let mut begun = 0;
            let outbox = this.registration.outbox();
            match outbox.poll_take(&mut this.sending, &mut begun, false, cx) {
                None => {}
                // Its frames were dropped; the client resumes when it
                // reconnects.
                Some(CloseReason::SlowConsumer) => return Poll::Ready(None),
                // Shutdown, or the application's close: what is queued
                // goes first. (A close frame means nothing here.)
                Some(_) => this.ending = true,
            }
            if !this.sending.is_empty() || this.ending {
                continue;
            }
            if this.heartbeat.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.last_sent + this.interval;
            if due > Instant::now() {
                // Events went out meanwhile: wait out the rest.
                this.heartbeat.as_mut().reset(due);
                continue;
            }
            this.last_sent = Instant::now();
            this.heartbeat
                .as_mut()
                .reset(this.last_sent + this.interval);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(HEARTBEAT)))));
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
