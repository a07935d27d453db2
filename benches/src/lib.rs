//! Support code for the `loadgen` binary: statistics over the per-client
//! receive matrix and readers for a server process's figures in `/proc`.
//!
//! Kept in a library so the statistics can be unit-tested without opening
//! sockets.

pub mod procfs;
pub mod stats;
