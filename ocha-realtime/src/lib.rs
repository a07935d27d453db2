//! Realtime push for hyper services: WebSocket clients on your own HTTP port,
//! greeted on arrival and sent what you publish, to all of them, to a
//! channel, to a user's connections or to one connection.
//!
//! A [`Hub`] holds the connections. Route WebSocket upgrade requests to
//! [`Hub::upgrade`] (or, having decided who the client is,
//! [`Hub::upgrade_with`] and an [`Admission`]: a user and first channels).
//! Publish any `serde::Serialize` value as a [`Frame`]: it is serialized and
//! framed once, and every receiving connection shares the bytes. Clients are
//! greeted with the Ocha API's `{"message":"Connecté au WebSocket"}` unless
//! [`Config`] says otherwise.
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::rt::TokioIo;
//! use ocha_realtime::{is_websocket_upgrade, Admission, Frame, HandshakeError, Hub};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let hub = hub.clone();
//!     let service = service_fn(move |request: Request<Incoming>| {
//!         let response = if is_websocket_upgrade(&request) {
//!             // Who the client is would come from a token in the request.
//!             let admission = Admission::user("alice").channel("orders");
//!             hub.upgrade_with(request, admission)
//!                 .unwrap_or_else(HandshakeError::into_response)
//!         } else {
//!             let frame = Frame::json(&serde_json::json!({"type": "order_ready", "order": 42}))
//!                 .expect("JSON values serialize");
//!             let reached = hub.publish_to("orders", &frame);
//!             Response::new(Full::new(Bytes::from(format!("sent to {reached}\n"))))
//!         };
//!         async move { Ok::<_, Infallible>(response) }
//!     });
//!     tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades());
//! }
//! # }
//! ```
//!
//! # Guarantees
//!
//! - The welcome is each client's first frame. A client then receives every
//!   frame published to all after it joined, and to each channel while it
//!   is a member, exactly once, in the order of the publishes to all, and of
//!   the publishes to each channel; until it disconnects. Publishes to
//!   different targets are not ordered with each other.
//! - Events published with an id, to all ([`Hub::publish_event`]) or to a
//!   channel ([`Hub::publish_event_to`]), are kept in a history per stream
//!   bounded by count and age. A client resuming a stream with the last id
//!   it saw there ([`Admission::since`], [`Admission::channel_since`],
//!   [`Hub::subscribe_since`]) is sent what it missed, then live events,
//!   with nothing lost or repeated at the handover; or, if what it missed
//!   is no longer kept, [`RESYNC`] (with the channel's name for a channel).
//! - Publishing to a channel or user costs as much as it has connections,
//!   however many the hub holds. A closed connection leaves its channels
//!   and user with nothing left behind.
//! - Publishing never waits on a client. A fan-out writes each frame to
//!   every idle socket itself (one system call, no task woken), and queues
//!   it for connections still writing. A client that falls
//!   [`Config::outbound_capacity`] messages behind is closed with code 4008
//!   ("slow consumer") and leaves its channels; nobody else notices.
//! - Memory is bounded: a connection holds no read or write buffers of its
//!   own, only references to shared frames: the batch it is writing and at
//!   most `outbound_capacity` queued behind it. Each upgraded socket's kernel
//!   send buffer is capped too ([`Config::send_buffer_size`]).
//! - Connections are capped in all ([`Config::max_connections`], 503) and
//!   per client address ([`Config::max_connections_per_peer`], for
//!   connections admitted with [`Admission::peer`], 429); a connection's
//!   place is freed when it is gone.
//! - The hub pings every client each [`Config::heartbeat_interval`] and drops
//!   those silent for two intervals. A message over
//!   [`Config::max_message_size`] closes the connection (1009).
//! - Client messages go to the handler set with [`HubBuilder::on_message`],
//!   whole and in order, one at a time per connection; a connection waits
//!   for the handler before reading more. Other hubs discard them without
//!   buffering. [`Hub::send`] replies to one connection.
//! - [`HubBuilder::on_presence`] hears of every connection opening and
//!   closing and every channel joined and left; [`Hub::presence`],
//!   [`Hub::channel_connections`] and [`Hub::user_connections`] answer from
//!   counts kept up to date, without a scan of the hub.
//!
//! # Modules
//!
//! - `hub`: [`Hub`], the public face: upgrades, publishing, presence,
//!   stats, shutdown; `builder`: [`HubBuilder`] and the application's
//!   callbacks.
//! - `registry`: who is connected, admission, fan-out to every outbox or a
//!   group's, presence, the heartbeat and the counters ([`Stats`]).
//! - `groups`: channels and users, each a group with its own lock.
//! - `admission`: [`Admission`]; `presence`: [`Presence`].
//! - `history`: [`EventId`] and the events kept for resuming clients.
//! - `relay`: [`Relay`], which feeds a hub from the application's event log
//!   ([`EventLog`]) in id order, on one node or many (over Redis with the
//!   `redis` feature).
//! - `handshake`: the opening handshake checks and [`HandshakeError`].
//! - `connection`: one connection's task, a small hand-written future;
//!   `upgrade`: the task from the 101 to the connection.
//! - `event_stream`: [`EventStream`], a Server-Sent Events response;
//!   `handoff`: [`HandoffIo`], which lets a stream take its socket from
//!   hyper; `chunked`: such a stream's task, which writes the body itself.
//! - `outbox`: each connection's queue of shared frames, and its socket,
//!   which the fan-out writes to directly while the connection is idle.
//! - `frame`: encoding server frames and parsing client frames, built on
//!   tungstenite's frame header; `utf8` checks text as it streams in.
//! - `message`: [`Message`], [`Frame`] and [`ConnectionId`].
//! - `config`: [`Config`] and its defaults.
//!
//! No public signature names a tungstenite type, so its version is not part
//! of this crate's API:
//!
//! ```compile_fail
//! use ocha_realtime::tungstenite;
//! ```

#![deny(missing_docs)]

mod admission;
mod builder;
mod chunked;
mod config;
mod connection;
mod event_stream;
mod frame;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
mod groups;
mod handoff;
mod handshake;
mod history;
mod hub;
mod message;
mod outbox;
mod presence;
mod registry;
mod relay;
mod upgrade;
mod utf8;
mod wire;

pub use admission::Admission;
pub use builder::HubBuilder;
pub use config::{Config, OCHA_WELCOME};
pub use event_stream::EventStream;
pub use handoff::{Handoff, HandoffIo};
pub use handshake::{is_websocket_upgrade, HandshakeError};
pub use history::{EventId, ParseEventIdError, RESYNC};
pub use hub::{CloseError, Hub};
pub use message::{ConnectionId, Frame, Message};
pub use presence::Presence;
/// The Redis client the relay shares events with, for its error type and
/// URLs (with the `redis` feature).
#[cfg(feature = "redis")]
pub use redis;
pub use registry::Stats;
pub use relay::{EventLog, Relay, RelayBuilder, RelayStats};
