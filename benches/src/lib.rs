//! The `loadgen` load generator for the realtime product fan-out, as a
//! library: the `loadgen` binary only parses the options, calls [`run::run`],
//! prints the [`Report`](report::Report) and turns it into an exit code.
//!
//! # Modules
//!
//! - [`args`]: the command-line options, their parsing and the usage text,
//!   and the server they describe: ocha-server, or the rooms example with
//!   a channel.
//! - [`run`]: one run, phase by phase, and the runtime it runs on.
//! - `clients`: the WebSocket clients, reading and slow, their source
//!   addresses and retries, and the receive table they share.
//! - `clock`: the run's epoch, on the monotonic clock and on the realtime
//!   clock that the loadgen processes of one run share.
//! - `products`: the admin token and the POSTs that create the events,
//!   each saying when it was sent.
//! - [`report`]: the report, the pass/fail verdict, the table and the JSON.
//! - [`stats`]: statistics over the per-client receive table.
//! - [`procfs`]: a process's memory figures from `/proc`, and its CPU time.
//!
//! The statistics and the `/proc` parsers are unit-tested without opening
//! sockets; `tests/smoke.rs` runs the binary against a real server.

#![deny(missing_docs)]

pub mod args;
mod clients;
mod clock;
pub mod procfs;
mod products;
pub mod report;
pub mod run;
pub mod stats;
