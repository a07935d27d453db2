//! Connections arriving and leaving, as the application hears of them.

use crate::ConnectionId;

/// A change in who is connected, passed to the hub's presence callback
/// ([`HubBuilder::on_presence`](crate::HubBuilder::on_presence)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presence {
    /// A connection opened.
    Connected {
        /// The new connection.
        connection: ConnectionId,
        /// Its user, if it was admitted as one.
        user: Option<String>,
    },
    /// A connection joined a channel (at admission, or subscribed later).
    Joined {
        /// The connection.
        connection: ConnectionId,
        /// Its user, if any.
        user: Option<String>,
        /// The channel.
        channel: String,
    },
    /// A connection left a channel: unsubscribed, or closing.
    Left {
        /// The connection.
        connection: ConnectionId,
        /// Its user, if any.
        user: Option<String>,
        /// The channel.
        channel: String,
    },
    /// A connection closed, after leaving its channels.
    Disconnected {
        /// The connection.
        connection: ConnectionId,
        /// Its user, if any.
        user: Option<String>,
    },
}
