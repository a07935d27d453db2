//! [`Hub`]: the public face of the library, from upgrade requests to
//! publishing, presence and shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body_util::Full;
use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::connection::{Connection, Registration};
use crate::history::Since;
use crate::registry::{Registry, Slot, Stats, Target};
use crate::upgrade::{Upgrading, WebSocketTask};
use crate::wire::{Transport, Wire};
use crate::{
    frame, handshake, Admission, Config, ConnectionId, EventId, EventStream, Frame, Handoff,
    HandshakeError, HubBuilder,
};

/// A set of WebSocket connections: the hub greets them, sends them what you
/// publish (to all, to a channel, to a user, to one connection), tells you
/// who is connected, and hands their messages to your handler if it has one.
///
/// Cloning is cheap and every clone is the same hub, so hand one to each
/// request handler. See the [crate documentation](crate) for an example.
#[derive(Debug, Clone)]
pub struct Hub {
    pub(crate) registry: Arc<Registry>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(Config::default())
    }
}

/// A close code and reason [`Hub::disconnect`] cannot send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// Not a code an endpoint may send (RFC 6455, 7.4): use 1000–1003,
    /// 1007–1014, or 3000–4999 for your own.
    #[error("close code {0} may not be sent; use 1000-1003, 1007-1014 or 3000-4999")]
    Code(u16),
    /// The reason is over the 123 bytes a close frame has room for.
    #[error("close reason of {0} bytes is over the 123 a close frame holds")]
    ReasonTooLong(usize),
}

impl Hub {
    /// Creates a hub with no connections. It reads what clients send only
    /// to answer pings and closes, and discards their messages unbuffered;
    /// [`Hub::builder`] adds a message handler and a presence callback.
    pub fn new(config: Config) -> Hub {
        Hub::builder(config).build()
    }

    /// Starts a hub with `config` and, optionally, application callbacks.
    pub fn builder(config: Config) -> HubBuilder {
        HubBuilder::new(config)
    }

    /// Answers a WebSocket upgrade request from an anonymous client in no
    /// channel; see [`upgrade_with`](Self::upgrade_with).
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`] when the request is refused; send its
    /// [`into_response`](HandshakeError::into_response) to the client.
    pub fn upgrade<B>(&self, request: Request<B>) -> Result<Response<Full<Bytes>>, HandshakeError> {
        self.upgrade_with(request, Admission::anonymous())
    }

    /// Answers a WebSocket upgrade request that the application admitted
    /// as `admission` (a user, its first channels, its address): checks the
    /// handshake and the connection limits, returns the `101 Switching
    /// Protocols` response to send, and runs the connection on a new task
    /// once hyper hands over the socket.
    ///
    /// Decide admission before calling this, as slowly as you need (a
    /// token check, a database lookup): the hub is not involved until then.
    /// To refuse, answer with a response of your own.
    ///
    /// The request may have any body type (hyper's `Incoming`, a framework's
    /// own body, or one you mapped), but must come from a hyper HTTP/1
    /// connection served `.with_upgrades()`, inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`HandshakeError`] when the request is refused; send its
    /// [`into_response`](HandshakeError::into_response) to the client.
    pub fn upgrade_with<B>(
        &self,
        mut request: Request<B>,
        admission: Admission,
    ) -> Result<Response<Full<Bytes>>, HandshakeError> {
        let accept = handshake::check(&request, &self.registry.config)?;
        let protocol = match &admission.protocol {
            Some(protocol) if handshake::offers_protocol(&request, protocol) => {
                Some(HeaderValue::try_from(protocol).map_err(|_| HandshakeError::Protocol)?)
            }
            Some(_) => return Err(HandshakeError::Protocol),
            None => None,
        };
        if self.registry.is_shutting_down() {
            return Err(HandshakeError::ShuttingDown);
        }
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(HandshakeError::NotUpgradable)?;
        let slot = Slot::acquire(&self.registry, admission.peer)?;
        // Listed now, before the 101 goes out: whatever is published from
        // here on waits in its outbox for the socket.
        let (registration, first) = Registration::new(slot, admission, Transport::WebSocket);
        // Over a `HandoffIo`, the 101's head waits for the welcome: one
        // write, and one segment to the client, for both.
        let handoff = request.extensions().get::<Handoff>().cloned();
        if let Some(handoff) = &handoff {
            handoff.hold_head();
        }
        tokio::spawn(WebSocketTask::Upgrading(Upgrading {
            on_upgrade,
            registration,
            first,
            handoff,
        }));
        let mut response = handshake::switching_protocols(accept);
        if let Some(protocol) = protocol {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        Ok(response)
    }

    /// Answers a Server-Sent Events request (`GET` with, from browsers,
    /// `Accept: text/event-stream`) from a client the application admitted
    /// as `admission`: a `200` whose body streams what the hub sends this
    /// client, for as long as the client keeps it open.
    ///
    /// The client is a connection like a WebSocket one: in its channels,
    /// reached by publishes, sends and presence, counted against
    /// [`Config::max_connections`], its origin checked against
    /// [`Config::allowed_origins`], closed as a slow consumer (the stream
    /// ends) and at shutdown (after what is queued). Each text frame is one
    /// event, its text in `data:` lines, with an `id:` line when published
    /// with an id; binary frames are not sent, and there is no event type
    /// (`event:`), so `EventSource.onmessage` sees every event, as
    /// `WebSocket.onmessage` does. The stream opens with the welcome as a
    /// comment and the hub's position (which sets the client's last event
    /// id without an event), and comment lines keep it busy while it is
    /// idle ([`Config::sse_heartbeat_interval`]).
    ///
    /// A client reconnecting with a `Last-Event-ID` header resumes after
    /// it, as with [`Admission::since`], unless `admission` says otherwise.
    ///
    /// Served over a [`HandoffIo`](crate::HandoffIo), with its [`Handoff`] in the request's
    /// extensions, an HTTP/1.1 stream leaves hyper once the response head
    /// is out: it runs on the socket, on a task of its own, and costs about
    /// what a WebSocket does, rather than a whole HTTP connection with its
    /// buffers. Otherwise the body streams through hyper until the client
    /// hangs up; tune those sockets ([`tune`](Self::tune)), which the hub
    /// never sees, or a client that stops reading could hide megabytes of
    /// events in kernel buffers before it is found slow.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::Method`] for other methods,
    /// [`HandshakeError::Origin`], [`HandshakeError::ShuttingDown`] and
    /// [`HandshakeError::TooManyConnections`]; send its
    /// [`into_response`](HandshakeError::into_response).
    pub fn event_stream<B>(
        &self,
        request: &Request<B>,
        mut admission: Admission,
    ) -> Result<Response<EventStream>, HandshakeError> {
        if request.method() != Method::GET {
            return Err(HandshakeError::Method);
        }
        handshake::check_origin(request.headers(), &self.registry.config)?;
        if self.registry.is_shutting_down() {
            return Err(HandshakeError::ShuttingDown);
        }
        if admission.since.is_none() {
            if let Some(last) = request.headers().get("last-event-id") {
                // Not text at all: no id of ours, so a resync.
                admission = admission.since(last.to_str().unwrap_or("?"));
            }
        }
        let slot = Slot::acquire(&self.registry, admission.peer)?;
        let (registration, first) = Registration::new(slot, admission, Transport::EventStream);
        // hyper sends HTTP/1.0 clients a body that the end of the connection
        // delimits, not chunks: it keeps those.
        let handoff = request
            .extensions()
            .get::<Handoff>()
            .filter(|_| request.version() == Version::HTTP_11)
            .map(Handoff::claim);
        let body = EventStream::new(registration, first, handoff);
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // Proxies such as nginx would otherwise hold events in a buffer.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        Ok(response)
    }

    /// Runs a connection whose WebSocket handshake is already done, over any
    /// byte stream, until it closes.
    ///
    /// For servers that do their own handshake and for in-process clients
    /// (tests, benchmarks). The caller decided to admit the connection, so
    /// [`Config::max_connections`] and [`Config::max_connections_per_peer`]
    /// are not checked here, but the connection counts against them while
    /// it is open.
    pub async fn serve<IO>(&self, io: IO, admission: Admission)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (registration, first) = Registration::new(
            Slot::admitted(&self.registry, admission.peer),
            admission,
            Transport::WebSocket,
        );
        Connection::new(registration, first, io).await;
    }

    /// Sends `frame` to every connection and returns how many it reached.
    ///
    /// Every connection queues the same bytes. Never waits on a client: one
    /// that is [`Config::outbound_capacity`] messages behind is closed as a
    /// slow consumer instead. Concurrent calls reach every connection in
    /// the same order.
    pub fn publish(&self, frame: &Frame) -> usize {
        self.registry.publish(&Wire::new(frame.0.clone(), None))
    }

    /// Sends `frame`, the event `id`, to every connection, as
    /// [`publish`](Self::publish) does, and keeps it for clients that
    /// resume ([`Admission::since`]); returns how many it reached, or
    /// `None`, sending nothing, if `id` is not after the last event's
    /// (it was published already).
    ///
    /// Ids come from your own ordered log, so that the same event has the
    /// same id on every node, and the id should be in `frame` for clients
    /// to resume from: `{"type":"new_product",…,"id":"42"}`. Calls are
    /// serialized, and every connection receives events in id order.
    pub fn publish_event(&self, id: EventId, frame: &Frame) -> Option<usize> {
        self.registry.publish_event(id, &frame.0)
    }

    /// Replaces the history with events from your log, at start: `last` is
    /// the last id it assigned, `events` the latest it kept, oldest first,
    /// each with when it was published. Clients may then resume from any of
    /// them, or from `last`, across a restart. Nothing is sent.
    pub fn restore_history<I>(&self, last: EventId, events: I)
    where
        I: IntoIterator<Item = (EventId, SystemTime, Frame)>,
    {
        let events = events
            .into_iter()
            .map(|(id, published_at, frame)| (id, published_at, frame.0))
            .collect();
        self.registry.restore_history(last, events);
    }

    /// The id of the latest event published with one, or restored:
    /// [`EventId::START`] before any.
    pub fn last_event_id(&self) -> EventId {
        self.registry.last_event_id()
    }

    /// Sends `frame`, the event `id` of `channel`'s own stream, to the
    /// channel's members as [`publish_to`](Self::publish_to) does, and keeps
    /// it for members that resume ([`Admission::channel_since`],
    /// [`subscribe_since`](Self::subscribe_since)); `None`, sending nothing,
    /// if `id` is not after the channel's last event's.
    ///
    /// Each channel has its own ids and history, bounded as
    /// [`Config::history_size`] and [`Config::history_max_age`] say.
    pub fn publish_event_to(&self, channel: &str, id: EventId, frame: &Frame) -> Option<usize> {
        self.registry.publish_event_to(channel, id, &frame.0)
    }

    /// The id of the latest event published to `channel` with one:
    /// [`EventId::START`] before any.
    pub fn channel_last_event_id(&self, channel: &str) -> EventId {
        self.registry.channel_last_event_id(channel)
    }

    /// Sends `frame` to the members of `channel` and returns how many it
    /// reached. Costs as much as the channel has members, however many
    /// connections the hub holds; publishes to one channel reach its members
    /// in the order they were made.
    pub fn publish_to(&self, channel: &str, frame: &Frame) -> usize {
        self.registry
            .publish_to_group(Target::Channel(channel), &Wire::new(frame.0.clone(), None))
    }

    /// Sends `frame` to every open connection of `user` (all its tabs and
    /// devices) and returns how many it reached.
    pub fn send_to_user(&self, user: &str, frame: &Frame) -> usize {
        self.registry
            .publish_to_group(Target::User(user), &Wire::new(frame.0.clone(), None))
    }

    /// Sends `frame` to one connection; false if it is gone, closing, or
    /// just found too far behind (it is then closed as a slow consumer).
    pub fn send(&self, to: ConnectionId, frame: &Frame) -> bool {
        self.registry.send(to, &Wire::new(frame.0.clone(), None))
    }

    /// Adds a connection to `channel`; false if it is gone or already in it.
    pub fn subscribe(&self, connection: ConnectionId, channel: &str) -> bool {
        self.registry.subscribe(connection, channel, None)
    }

    /// Adds a connection to `channel` and sends it what it missed there
    /// after the event `since`, as [`Admission::channel_since`] does at
    /// connection time; false if it is gone or already in the channel.
    /// A client rejoining a channel by message calls this with the last id
    /// it saw there.
    pub fn subscribe_since(&self, connection: ConnectionId, channel: &str, since: &str) -> bool {
        self.registry
            .subscribe(connection, channel, Some(Since::parse(since)))
    }

    /// Takes a connection out of `channel`; false if it was not in it.
    pub fn unsubscribe(&self, connection: ConnectionId, channel: &str) -> bool {
        self.registry.unsubscribe(connection, channel)
    }

    /// Whether a connection is in `channel` now (before it may talk there,
    /// say).
    pub fn is_subscribed(&self, connection: ConnectionId, channel: &str) -> bool {
        self.registry.is_subscribed(connection, channel)
    }

    /// Closes a connection with `code` and `reason` once what is queued for
    /// it is sent; `Ok(false)` if it is gone or closing already.
    ///
    /// # Errors
    ///
    /// A [`CloseError`] for a code an endpoint may not send or a reason
    /// too long for a close frame; nothing is closed then.
    pub fn disconnect(
        &self,
        connection: ConnectionId,
        code: u16,
        reason: &str,
    ) -> Result<bool, CloseError> {
        Ok(self
            .registry
            .disconnect(connection, &close_frame(code, reason)?))
    }

    /// Closes every connection of `user` (on logout, say, or a ban) as
    /// [`disconnect`](Self::disconnect) does; returns how many it closed.
    ///
    /// # Errors
    ///
    /// As [`disconnect`](Self::disconnect).
    pub fn disconnect_user(
        &self,
        user: &str,
        code: u16,
        reason: &str,
    ) -> Result<usize, CloseError> {
        Ok(self
            .registry
            .disconnect_user(user, &close_frame(code, reason)?))
    }

    /// How many connections are in `channel` now.
    ///
    /// Like every presence figure, it counts a closing connection until it
    /// is gone: at most [`Config::close_timeout`] after it began closing.
    pub fn channel_connections(&self, channel: &str) -> usize {
        self.registry.group_size(Target::Channel(channel))
    }

    /// How many connections `user` has open now.
    pub fn user_connections(&self, user: &str) -> usize {
        self.registry.group_size(Target::User(user))
    }

    /// The users with connections in `channel` now, each with how many, in
    /// no particular order. Anonymous connections are counted by
    /// [`channel_connections`](Self::channel_connections) only.
    pub fn presence(&self, channel: &str) -> Vec<(String, usize)> {
        self.registry.presence(channel)
    }

    /// Sets the socket options the hub relies on, `TCP_NODELAY` and the
    /// [`Config::send_buffer_size`] cap, on an accepted socket.
    ///
    /// Upgrades served by `hyper::server::conn::http1` are tuned without
    /// this. Servers that hand hyper a wrapped socket, such as `axum::serve`
    /// and hyper-util's `auto` builder, hide the socket from the hub: tune
    /// each one as it is accepted instead, or slow clients can hide in
    /// megabytes of kernel buffers. The cap then applies to plain HTTP
    /// connections too, which only slows very large responses.
    ///
    /// ```no_run
    /// # async fn run(router: axum::Router) -> std::io::Result<()> {
    /// use axum::serve::ListenerExt;
    /// use ocha_realtime::Hub;
    ///
    /// let hub = Hub::default();
    /// let tuner = hub.clone();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:5001")
    ///     .await?
    ///     .tap_io(move |socket| tuner.tune(socket));
    /// axum::serve(listener, router).await
    /// # }
    /// ```
    pub fn tune(&self, socket: &TcpStream) {
        self.registry.sockets_tuned.store(true, Ordering::Relaxed);
        tune(socket2::SockRef::from(socket), &self.registry.config);
    }

    /// The hub's counters now.
    pub fn stats(&self) -> Stats {
        self.registry.stats()
    }

    /// Closes every connection with 1001 (going away) after sending what is
    /// queued for it, and refuses new upgrades with 503 from now on.
    ///
    /// Returns once every connection is gone, or when `deadline` passes;
    /// connections still open then are dropped by their own close timeout.
    pub async fn shutdown(&self, deadline: Duration) {
        self.registry.close_all(deadline).await;
    }
}

/// Warns, once per hub, that upgraded sockets arrive wrapped and untuned.
pub(crate) fn warn_untuned(registry: &Registry) {
    if !registry.sockets_tuned.load(Ordering::Relaxed)
        && !registry.untuned_warned.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            "WebSocket upgrades arrive on a wrapped transport (axum::serve, hyper-util's \
             auto builder): TCP_NODELAY and the send buffer cap are not set, so slow \
             clients can hide in kernel buffers; call Hub::tune on each accepted socket"
        );
    }
}

/// The close frame for `code` and `reason`, if an endpoint may send them.
fn close_frame(code: u16, reason: &str) -> Result<Bytes, CloseError> {
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(CloseError::Code(code));
    }
    if reason.len() > 123 {
        return Err(CloseError::ReasonTooLong(reason.len()));
    }
    Ok(frame::close(Some(CloseCode::from(code)), reason))
}

/// Socket options for an upgraded connection. Failing to set them costs
/// latency or memory, not correctness, so errors are only logged.
pub(crate) fn tune(socket: socket2::SockRef<'_>, config: &Config) {
    if let Err(error) = socket.set_tcp_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    if let Some(bytes) = config.send_buffer_size {
        if let Err(error) = socket.set_send_buffer_size(bytes) {
            tracing::debug!(%error, "cannot set SO_SNDBUF");
        }
    }
}
