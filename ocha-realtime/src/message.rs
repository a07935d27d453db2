//! What clients send, and how connections are named.

use std::fmt;

use bytes::Bytes;

/// Names one connection of a hub. Never reused while the hub lives, so a
/// stale id cannot reach a newer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A whole WebSocket message, reassembled from its fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the hub checked that it is UTF-8.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}
