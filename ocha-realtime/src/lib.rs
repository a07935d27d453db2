//! Realtime push for hyper services: WebSocket clients on your own HTTP port,
//! greeted on arrival and sent every event you publish.
//!
//! A [`Hub`] holds the connections. Route WebSocket upgrade requests to
//! [`Hub::upgrade`]; call [`Hub::publish`] with an [`Event`] and every
//! connected client receives it, serialized once and shared by all. The wire
//! format is the Ocha API's: clients are greeted with
//! `{"message":"Connecté au WebSocket"}` and receive
//! `{"type":"new_product","product":{...}}` for each new product.
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
//! use hyper_util::rt::TokioIo;
//! use ocha_realtime::{is_websocket_upgrade, HandshakeError, Hub};
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let hub = hub.clone();
//!     let service = service_fn(move |request: Request<Incoming>| {
//!         let response = if is_websocket_upgrade(&request) {
//!             hub.upgrade(request).unwrap_or_else(HandshakeError::into_response)
//!         } else {
//!             Response::new(Full::new(Bytes::from("Hello")))
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
//!   event published after it joined, in publish order, exactly once, until
//!   it disconnects.
//! - [`Hub::publish`] never waits on a client. A client that falls
//!   [`Config::outbound_capacity`] messages behind is closed with code 4008
//!   ("slow consumer"); nobody else notices.
//! - Memory is bounded: a connection holds no read or write buffers of its
//!   own, only references to shared frames: the batch it is writing and at
//!   most `outbound_capacity` queued behind it. Each upgraded socket's kernel
//!   send buffer is capped too ([`Config::send_buffer_size`]).
//! - The hub pings every client each [`Config::heartbeat_interval`] and drops
//!   those silent for two intervals. A message over
//!   [`Config::max_message_size`] closes the connection (1009).
//! - Client messages go to the handler of a hub made with
//!   [`Hub::with_handler`], whole and in order, one at a time per
//!   connection; a connection waits for the handler before reading more.
//!   Other hubs discard them without buffering. [`Hub::send`] replies to
//!   one connection.
//!
//! # Modules
//!
//! - `hub`: [`Hub`], the public face: upgrades, publishing, stats, shutdown.
//! - `registry`: who is connected, admission, fan-out to every outbox, the
//!   heartbeat and the counters ([`Stats`]).
//! - `handshake`: the opening handshake checks and [`HandshakeError`].
//! - `connection`: one connection's task, a small hand-written future.
//! - `outbox`: each connection's queue of shared frames.
//! - `frame`: encoding server frames and parsing client frames, built on
//!   tungstenite's frame header; `utf8` checks text as it streams in.
//! - `message`: [`Message`] and [`ConnectionId`].
//! - `event`: [`Event`], [`Product`] and the documents they carry.
//! - `config`: [`Config`] and its defaults.
//!
//! No public signature names a tungstenite type, so its version is not part
//! of this crate's API:
//!
//! ```compile_fail
//! use ocha_realtime::tungstenite;
//! ```

#![deny(missing_docs)]

mod config;
mod connection;
mod event;
mod frame;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod hub;
mod message;
mod outbox;
mod registry;
mod utf8;

pub use config::{Config, OCHA_WELCOME};
pub use event::{Event, ExtraChf, Product, Size};
pub use handshake::{is_websocket_upgrade, HandshakeError};
pub use hub::Hub;
pub use message::{ConnectionId, Message};
pub use registry::Stats;
