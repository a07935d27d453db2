//! A WebSocket connection's task, from the `101 Switching Protocols` to its
//! close: it waits for hyper to hand the socket over, then runs the
//! connection in place. One task rather than one that waits and another
//! that runs: a spawn and a wake fewer per connection, and the task is no
//! larger, since the waiting state is smaller than the running one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::connection::{Connection, Registration};
use crate::hub::{tune, warn_untuned};
use crate::outbox::SharedSocket;
use crate::{Handoff, HandoffIo};

/// See the [module documentation](self).
pub(crate) enum WebSocketTask {
    Upgrading(Upgrading),
    Running(Connection<SharedSocket>),
    Done,
}

/// What the connection needs once hyper hands the socket over.
pub(crate) struct Upgrading {
    pub(crate) on_upgrade: OnUpgrade,
    pub(crate) registration: Registration,
    /// The welcome, and a resuming client's replay.
    pub(crate) first: VecDeque<Bytes>,
    /// Holds the 101's head, to go out with `first` (see [`Handoff`]).
    pub(crate) handoff: Option<Handoff>,
}

impl Upgrading {
    /// The connection over the socket hyper handed over; `None` if it is
    /// not a plain TCP socket (its connection then runs on a task of its
    /// own) or is gone.
    fn into_connection(
        mut self,
        upgraded: hyper::upgrade::Upgraded,
    ) -> Option<Connection<SharedSocket>> {
        if let Some(head) = self.handoff.as_ref().and_then(Handoff::take_head) {
            self.first.push_front(Bytes::from(head));
        }
        let registry = self.registration.registry().clone();
        // Over a plain TCP socket, drive it directly: no boxed I/O, and no
        // Nagle delay holding back small event frames.
        let (stream, read_buf) = match upgraded.downcast::<HandoffIo>() {
            Ok(parts) => (parts.io.into_inner()?, parts.read_buf),
            Err(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => (parts.io.into_inner(), parts.read_buf),
                Err(upgraded) => {
                    warn_untuned(&registry);
                    let io = TokioIo::new(upgraded);
                    tokio::spawn(Connection::new(self.registration, self.first, io));
                    return None;
                }
            },
        };
        if !registry.sockets_tuned.load(Ordering::Relaxed) {
            tune(socket2::SockRef::from(&stream), &registry.config);
        }
        let socket = self.registration.attach(stream);
        let mut connection = Connection::new(self.registration, self.first, socket);
        // Frames the client sent right behind its handshake. The bytes are
        // a view of hyper's whole read buffer: let go.
        connection.receive(&read_buf);
        Some(connection)
    }
}

impl Future for WebSocketTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                WebSocketTask::Upgrading(upgrading) => {
                    let result = ready!(Pin::new(&mut upgrading.on_upgrade).poll(cx));
                    let WebSocketTask::Upgrading(upgrading) =
                        std::mem::replace(this, WebSocketTask::Done)
                    else {
                        unreachable!("matched above");
                    };
                    match result {
                        Ok(upgraded) => {
                            if let Some(connection) = upgrading.into_connection(upgraded) {
                                *this = WebSocketTask::Running(connection);
                            }
                        }
                        Err(error) => tracing::debug!(%error, "WebSocket upgrade failed"),
                    }
                }
                WebSocketTask::Running(connection) => return Pin::new(connection).poll(cx),
                WebSocketTask::Done => return Poll::Ready(()),
            }
        }
    }
}
