//! How a [`Hub`](crate::Hub) behaves: limits, timers and the welcome message.

use std::time::Duration;

/// The welcome the Ocha API sends to every client.
pub const OCHA_WELCOME: &str = r#"{"message":"Connecté au WebSocket"}"#;

/// Settings for a [`Hub`](crate::Hub).
///
/// Start from [`Config::default()`] and change what you need:
///
/// ```
/// use std::time::Duration;
/// use ocha_realtime::Config;
///
/// let config = Config::default()
///     .heartbeat_interval(Duration::from_secs(15))
///     .max_connections(10_000)
///     .allowed_origins(["https://shop.example"]);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) welcome: Option<String>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) outbound_capacity: usize,
    pub(crate) max_message_size: usize,
    pub(crate) allowed_origins: Option<Vec<String>>,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_peer: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) sse_heartbeat_interval: Duration,
    pub(crate) history_size: usize,
    pub(crate) history_max_age: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            welcome: Some(OCHA_WELCOME.to_owned()),
            heartbeat_interval: Duration::from_secs(30),
            outbound_capacity: 256,
            max_message_size: 64 * 1024,
            allowed_origins: None,
            max_connections: usize::MAX,
            max_connections_per_peer: usize::MAX,
            close_timeout: Duration::from_secs(5),
            send_buffer_size: Some(32 * 1024),
            sse_heartbeat_interval: Duration::from_secs(15),
            history_size: 1000,
            history_max_age: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl Config {
    /// The shortest heartbeat interval: a timer cannot tick every 0 ms.
    pub const MIN_HEARTBEAT: Duration = Duration::from_millis(1);
    /// The longest heartbeat interval, a year: far enough to mean "never"
    /// while deadlines computed from it stay representable.
    pub const MAX_HEARTBEAT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// The text frame every client receives first.
    ///
    /// Default: [`OCHA_WELCOME`], `{"message":"Connecté au WebSocket"}`.
    pub fn welcome(mut self, text: impl Into<String>) -> Self {
        self.welcome = Some(text.into());
        self
    }

    /// Sends no welcome: a client's first frame is whatever the hub sends
    /// it first (an echo server, for instance, answers only what it hears).
    pub fn without_welcome(mut self) -> Self {
        self.welcome = None;
        self
    }

    /// How often the hub pings each client. A client that has sent nothing,
    /// not even a pong, for two intervals is disconnected at the next ping
    /// (so after two to three intervals of silence).
    ///
    /// Default: 30 seconds. Values are kept between
    /// [`MIN_HEARTBEAT`](Self::MIN_HEARTBEAT) and
    /// [`MAX_HEARTBEAT`](Self::MAX_HEARTBEAT): shorter ones are raised,
    /// longer ones lowered.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval.clamp(Self::MIN_HEARTBEAT, Self::MAX_HEARTBEAT);
        self
    }

    /// How many messages may wait for one client. A client that falls this
    /// far behind is closed with code 4008 ("slow consumer") so it cannot
    /// hold memory or slow anyone else down.
    ///
    /// Messages are shared between clients, so a waiting message costs a
    /// client one pointer, not a copy. Default: 256; 0 counts as 1.
    pub fn outbound_capacity(mut self, messages: usize) -> Self {
        self.outbound_capacity = messages.max(1);
        self
    }

    /// Largest message a client may send, in bytes, over all its
    /// fragments; a larger one closes the connection with 1009 (message too
    /// big). A hub with a message handler ([`HubBuilder::on_message`]) holds up to
    /// this much per connection while a message arrives; other hubs discard
    /// client messages without buffering them.
    ///
    /// [`HubBuilder::on_message`]: crate::HubBuilder::on_message
    ///
    /// Default: 64 KiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Browser origins allowed to connect, compared exactly with the
    /// `Origin` header (e.g. `https://shop.example`). Other origins get 403.
    /// Requests without an `Origin` header come from non-browser clients,
    /// which the header cannot vouch for either way, and are accepted.
    ///
    /// Default: every origin.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_origins = Some(origins.into_iter().map(Into::into).collect());
        self
    }

    /// Most connections open at once; upgrades past it get 503.
    ///
    /// Default: no limit but the process's open-file limit.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Most connections open at once from one peer: the address the
    /// application gave with [`Admission::peer`]. Upgrades past it get 429
    /// ([`HandshakeError::TooManyPeerConnections`]), so one client cannot
    /// take every connection [`max_connections`](Self::max_connections)
    /// allows, nor every file descriptor. A connection counts until it is
    /// gone; connections admitted without a peer are not counted.
    ///
    /// Clients behind one proxy or NAT share an address: set this only
    /// where an address stands for one client.
    ///
    /// [`Admission::peer`]: crate::Admission::peer
    /// [`HandshakeError::TooManyPeerConnections`]: crate::HandshakeError::TooManyPeerConnections
    ///
    /// Default: no limit.
    pub fn max_connections_per_peer(mut self, connections: usize) -> Self {
        self.max_connections_per_peer = connections;
        self
    }

    /// How long a closing connection may take to send its close frame and
    /// hear the client's reply before its socket is dropped. Zero drops it
    /// at once; [`Duration::MAX`] waits as long as the client keeps the
    /// connection open.
    ///
    /// Default: 5 seconds.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The kernel send buffer (`SO_SNDBUF`) of each upgraded TCP socket, or
    /// `None` to leave it to the operating system.
    ///
    /// Linux grows a socket's buffer up to 4 MiB for a client that stops
    /// reading, so without a cap a slow client hides in kernel memory
    /// instead of being closed by [`outbound_capacity`](Self::outbound_capacity).
    /// Linux doubles the value for its bookkeeping, and raises values below
    /// its minimum (about 2 KiB) to that minimum.
    ///
    /// Default: 32 KiB.
    pub fn send_buffer_size(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer_size = bytes;
        self
    }

    /// How often an idle Server-Sent Events stream
    /// ([`Hub::event_stream`](crate::Hub::event_stream)) gets a comment
    /// line: it keeps proxies from closing the stream as idle, and finds
    /// clients that went away (SSE clients send nothing to be heard from).
    /// The hub's heartbeat sends it, each interval, to the streams that
    /// sent no event for as long, so the first comes one to two intervals
    /// after a stream's last event. Kept within
    /// [`MIN_HEARTBEAT`](Self::MIN_HEARTBEAT) and
    /// [`MAX_HEARTBEAT`](Self::MAX_HEARTBEAT).
    ///
    /// Default: 15 seconds.
    pub fn sse_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.sse_heartbeat_interval = interval.clamp(Self::MIN_HEARTBEAT, Self::MAX_HEARTBEAT);
        self
    }

    /// How many of the latest events published to all with an id
    /// ([`Hub::publish_event`](crate::Hub::publish_event)) the hub keeps,
    /// for clients that resume after a disconnect. A resuming client missed
    /// at most this many, or it is told to resync. Zero keeps none: only a
    /// client that missed nothing resumes.
    ///
    /// Each kept event costs a reference to its frame, shared with every
    /// connection it was sent to.
    ///
    /// Default: 1000.
    pub fn history_size(mut self, events: usize) -> Self {
        self.history_size = events;
        self
    }

    /// How long an event stays in the history; a client that was away
    /// longer is told to resync.
    ///
    /// Default: 24 hours.
    pub fn history_max_age(mut self, age: Duration) -> Self {
        self.history_max_age = age;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_settings_are_kept_in_range() {
        let zero = Config::default().heartbeat_interval(Duration::ZERO);
        assert_eq!(zero.heartbeat_interval, Config::MIN_HEARTBEAT);
        let max = Config::default().heartbeat_interval(Duration::MAX);
        assert_eq!(max.heartbeat_interval, Config::MAX_HEARTBEAT);
        assert_eq!(Config::default().outbound_capacity(0).outbound_capacity, 1);
        // The heartbeat's deadline arithmetic holds at both ends.
        for interval in [Config::MIN_HEARTBEAT, Config::MAX_HEARTBEAT] {
            let _ = tokio::time::Instant::now() + 3 * interval;
        }
    }
}
