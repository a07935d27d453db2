//! The `loadgen` load generator for the realtime product fan-out, as a
//! library: the `loadgen` binary only parses the options, calls [`run::run`],
//! prints the [`Report`](report::Report) and turns it into an exit code.
//!
//! # Modules
//!
//! - [`args`]: the command-line options, their parsing and the usage text,
//!   and the server they describe: ocha-server, over WebSocket or
//!   Server-Sent Events, or the rooms example with a channel.
//! - [`run`]: one run, phase by phase, and the runtime it runs on.
//! - `chunked`: a decoder of HTTP/1.1 chunked bodies, for `--sse` readers.
//! - `clients`: the clients, reading (WebSocket or Server-Sent Events) and
//!   slow (WebSocket), their source addresses and retries, and the receive
//!   table they share.
//! - `clock`: the run's epoch, on the monotonic clock and on the realtime
//!   clock that the loadgen processes of one run share.
//! - `products`: the admin token and the POSTs that create the events,
//!   each saying when it was sent.
//! - [`report`]: the report, the pass/fail verdict, the table and the JSON.
//! - `sse`: the `--sse` readers' request for the event stream, and a
//!   parser of `text/event-stream` bodies.
//! - [`stats`]: statistics over the per-client receive table.
//! - [`procfs`]: a process's memory figures from `/proc`, and its CPU time.
//!
//! The statistics, the `/proc` parsers and the event-stream parser are
//! unit-tested without opening sockets (the event stream's HTTP side
//! against a canned local answer); `tests/smoke.rs` runs the binary
//! against a real server.

#![deny(missing_docs)]

pub mod args;
mod chunked;
mod clients;
mod clock;
pub mod procfs;
mod products;
pub mod report;
pub mod run;
mod sse;
pub mod stats;
