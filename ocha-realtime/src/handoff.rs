//! [`HandoffIo`] and [`Handoff`]: how an event stream takes its socket
//! from hyper once hyper has written the response head, so that an idle
//! stream costs a small task of its own rather than a whole HTTP
//! connection and its buffers.
//!
//! The server serves hyper over a [`HandoffIo`] and puts its [`Handoff`] in
//! the extensions of each request on the connection.
//! [`Hub::event_stream`](crate::Hub::event_stream) finds it there, and its
//! body, on its first poll, asks for the socket and sends nothing, so
//! hyper flushes the head alone: its dispatcher flushes when a body is not
//! ready, and calls its IO's `poll_flush` only once its own write buffer is
//! written (`proto/h1/io.rs`, `Buffered::poll_flush`). So at that flush the
//! head is out: the `HandoffIo` gives the socket up and wakes the body,
//! which takes it, runs the stream on a task of its own and ends. From
//! then on the `HandoffIo` reads end-of-file, reports writes written (the
//! body's last chunk, which hyper writes) and shuts down at once: hyper
//! finishes the response and the connection quietly, and frees it.
//!
//! Until then it passes everything through, so the connection serves
//! requests, and WebSocket upgrades, as over the bare socket; except that
//! the `101 Switching Protocols` head of an upgrade the hub answered is
//! held back, and goes out with the connection's welcome in one write. A request
//! pipelined behind the stream's, if hyper had read it already, is still
//! served, its response discarded; browsers do not pipeline.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::registry::lock;

/// A TCP socket for hyper to serve HTTP/1 over, which an event stream
/// served on it may take for itself once hyper has written the response
/// head; see [`Hub::event_stream`](crate::Hub::event_stream).
///
/// ```no_run
/// use std::convert::Infallible;
///
/// use http_body_util::Either;
/// use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request};
/// use ocha_realtime::{Admission, HandoffIo, Hub};
///
/// # async fn run() -> std::io::Result<()> {
/// let hub = Hub::default();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     hub.tune(&stream);
///     let io = HandoffIo::new(stream);
///     let handoff = io.handoff();
///     let hub = hub.clone();
///     let service = service_fn(move |mut request: Request<Incoming>| {
///         request.extensions_mut().insert(handoff.clone());
///         let response = match hub.event_stream(&request, Admission::anonymous()) {
///             Ok(stream) => stream.map(Either::Left),
///             Err(refused) => refused.into_response().map(Either::Right),
///         };
///         async move { Ok::<_, Infallible>(response) }
///     });
///     tokio::spawn(http1::Builder::new().serve_connection(io, service).with_upgrades());
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct HandoffIo {
    /// `None` once an event stream took the socket.
    stream: Option<TokioIo<TcpStream>>,
    handoff: Handoff,
}

/// A connection's offer of its socket to an event stream, for the
/// extensions of each of its requests; cheap to clone. See [`HandoffIo`].
#[derive(Debug, Clone)]
pub struct Handoff(Arc<Mutex<State>>);

#[derive(Debug)]
enum State {
    /// hyper serves the connection.
    Serving,
    /// An event stream's body waits for the socket at hyper's next flush.
    Wanted(Waker),
    /// The head is out: the socket waits for the body to take it.
    Given(TcpStream),
    /// The hub answered a WebSocket upgrade: what hyper writes (the 101
    /// head) is kept here for the connection to send with its first frames.
    Upgrading(Vec<u8>),
}

impl HandoffIo {
    /// Wraps an accepted socket.
    pub fn new(stream: TcpStream) -> HandoffIo {
        HandoffIo {
            stream: Some(TokioIo::new(stream)),
            handoff: Handoff(Arc::new(Mutex::new(State::Serving))),
        }
    }

    /// The offer to put in the extensions of each request served over this.
    pub fn handoff(&self) -> Handoff {
        self.handoff.clone()
    }

    /// The socket, unless an event stream took it: for a connection that
    /// hyper gave back (an upgrade, `Connection::into_parts`).
    pub fn into_inner(self) -> Option<TcpStream> {
        self.stream.map(TokioIo::into_inner)
    }
}

impl Read for HandoffIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            // Nothing read: the end of the connection, for hyper.
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Write for HandoffIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(held) = self.handoff.hold(&[IoSlice::new(buf)]) {
            return Poll::Ready(Ok(held));
        }
        match &mut self.stream {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            None => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(held) = self.handoff.hold(bufs) {
            return Poll::Ready(Ok(held));
        }
        match &mut self.stream {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|stream| stream.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(stream) = &mut this.stream else {
            return Poll::Ready(Ok(()));
        };
        ready!(Pin::new(stream).poll_flush(cx))?;
        // hyper's write buffer is written, the head with it.
        this.handoff.give_if_wanted(&mut this.stream);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Handoff {
    /// Holds back what hyper writes from now on, the head of the 101 the
    /// hub answers an upgrade with, until [`take_head`](Self::take_head).
    pub(crate) fn hold_head(&self) {
        *lock(&self.0) = State::Upgrading(Vec::new());
    }

    /// The upgrade's held head, if one was held.
    pub(crate) fn take_head(&self) -> Option<Vec<u8>> {
        let mut state = lock(&self.0);
        match std::mem::replace(&mut *state, State::Serving) {
            State::Upgrading(head) => Some(head),
            unchanged => {
                *state = unchanged;
                None
            }
        }
    }

    /// Keeps `bufs` if writes are held, and returns their length then.
    fn hold(&self, bufs: &[IoSlice<'_>]) -> Option<usize> {
        match &mut *lock(&self.0) {
            State::Upgrading(head) => {
                bufs.iter().for_each(|buf| head.extend_from_slice(buf));
                Some(bufs.iter().map(|buf| buf.len()).sum())
            }
            _ => None,
        }
    }

    /// A claim on the socket, which the body of an event stream polls
    /// for it.
    pub(crate) fn claim(&self) -> Claim {
        Claim(self.clone())
    }

    /// Moves the socket out of `stream` to the body that wants it, if one
    /// does.
    fn give_if_wanted(&self, stream: &mut Option<TokioIo<TcpStream>>) {
        let mut state = lock(&self.0);
        match std::mem::replace(&mut *state, State::Serving) {
            State::Wanted(waker) => {
                if let Some(given) = stream.take() {
                    *state = State::Given(given.into_inner());
                }
                drop(state);
                waker.wake();
            }
            unchanged => *state = unchanged,
        }
    }
}

/// An event stream's claim on its connection's socket. Dropped before it
/// took the socket (its response was dropped), it withdraws: hyper goes on
/// serving, or, if the socket was already given, the connection closes.
#[derive(Debug)]
pub(crate) struct Claim(Handoff);

impl Claim {
    /// The socket once hyper has flushed the response head; the first
    /// call asks for it.
    pub(crate) fn poll_take(&self, cx: &Context<'_>) -> Poll<TcpStream> {
        let mut state = lock(&self.0 .0);
        match std::mem::replace(&mut *state, State::Serving) {
            State::Given(stream) => Poll::Ready(stream),
            State::Serving | State::Wanted(_) | State::Upgrading(_) => {
                *state = State::Wanted(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        *lock(&self.0 .0) = State::Serving;
    }
}
