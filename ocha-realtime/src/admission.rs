//! Who a new connection is, as the application decided when it admitted it.

use std::net::IpAddr;
use std::sync::Arc;

use crate::history::Since;

/// The application's decision to let a WebSocket in: who it is and which
/// channels it starts in. Refusing is answering the upgrade request with a
/// response of your own instead of calling
/// [`Hub::upgrade_with`](crate::Hub::upgrade_with).
///
/// ```
/// use ocha_realtime::Admission;
///
/// let admission = Admission::user("42").channel("products").channel("store:lausanne");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub(crate) user: Option<Arc<str>>,
    /// Each first channel, with the position to resume it from, if any.
    pub(crate) channels: Vec<(Arc<str>, Option<Since>)>,
    pub(crate) protocol: Option<String>,
    pub(crate) since: Option<Since>,
    pub(crate) peer: Option<IpAddr>,
}

impl Admission {
    /// A connection of no particular user, in no channel.
    pub fn anonymous() -> Admission {
        Admission::default()
    }

    /// A connection of `user`: reached by
    /// [`Hub::send_to_user`](crate::Hub::send_to_user), closed by
    /// [`Hub::disconnect_user`](crate::Hub::disconnect_user), counted in
    /// presence.
    pub fn user(user: impl Into<String>) -> Admission {
        Admission {
            user: Some(Arc::from(user.into())),
            ..Admission::default()
        }
    }

    /// Starts the connection in `channel` as well.
    pub fn channel(mut self, channel: impl Into<String>) -> Admission {
        self.channels.push((Arc::from(channel.into()), None));
        self
    }

    /// Starts the connection in `channel`, resuming the channel's events
    /// after `since` as [`since`](Self::since) does for events published to
    /// all: what it missed of the events published to the channel with an
    /// id ([`Hub::publish_event_to`](crate::Hub::publish_event_to)) follows
    /// the welcome, or [`RESYNC`](crate::RESYNC) if that is no longer kept.
    pub fn channel_since(mut self, channel: impl Into<String>, since: &str) -> Admission {
        self.channels
            .push((Arc::from(channel.into()), Some(Since::parse(since))));
        self
    }

    /// Accepts the subprotocol `protocol`, one of those the client offered
    /// in `Sec-WebSocket-Protocol` (which browsers can use to carry a token).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Admission {
        self.protocol = Some(protocol.into());
        self
    }

    /// Resumes the client's stream of events published to all after the
    /// event whose id it last received, as it said in `since` (say from a
    /// `?since=` query parameter or a `Last-Event-ID` header).
    ///
    /// Its welcome then carries the hub's current position as
    /// `"lastEventId"` (when the welcome is a JSON object), and it is sent
    /// every event it missed, oldest first, before any live one: none
    /// lost, none twice, however publishes and the replay interleave. An
    /// empty `since` means "from now": nothing is replayed, but the client
    /// learns the position to resume from later. When some of what it
    /// missed is no longer kept (see [`Config::history_size`]), or `since`
    /// is not an id this hub could have sent, it is sent
    /// [`RESYNC`](crate::RESYNC) instead, then live events.
    ///
    /// [`Config::history_size`]: crate::Config::history_size
    pub fn since(mut self, since: &str) -> Admission {
        self.since = Some(Since::parse(since));
        self
    }

    /// Counts the connection against `address`'s
    /// [`Config::max_connections_per_peer`]: the socket's peer address, or
    /// the client's as a proxy you trust reports it. To count a group of
    /// addresses together (an IPv6 /64, which one subscriber usually holds
    /// whole), pass the same address for each, such as the group's first.
    ///
    /// [`Config::max_connections_per_peer`]: crate::Config::max_connections_per_peer
    pub fn peer(mut self, address: IpAddr) -> Admission {
        self.peer = Some(address);
        self
    }
}
