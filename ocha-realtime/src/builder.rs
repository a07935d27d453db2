//! [`HubBuilder`]: a hub's settings and the application's callbacks.

use std::future::Future;
use std::sync::Arc;

use crate::registry::{Handler, PresenceHook, Registry};
use crate::{Config, ConnectionId, Hub, Message, Presence};

/// Builds a [`Hub`] with application callbacks; from [`Hub::builder`].
///
/// ```
/// use ocha_realtime::{Config, Frame, Hub, Presence};
///
/// let hub = Hub::builder(Config::default())
///     // An echo server.
///     .on_message(|hub, from, message| async move {
///         hub.send(from, &Frame::from(&message));
///     })
///     .on_presence(|_hub, event| {
///         if let Presence::Connected { user: Some(user), .. } = event {
///             println!("{user} is online");
///         }
///     })
///     .build();
/// ```
pub struct HubBuilder {
    config: Config,
    handler: Option<Handler>,
    on_presence: Option<PresenceHook>,
}

impl std::fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBuilder")
            .field("config", &self.config)
            .field("on_message", &self.handler.is_some())
            .field("on_presence", &self.on_presence.is_some())
            .finish()
    }
}

impl HubBuilder {
    pub(crate) fn new(config: Config) -> HubBuilder {
        HubBuilder {
            config,
            handler: None,
            on_presence: None,
        }
    }

    /// Hands every whole message a client sends to `handler`, with the hub
    /// (to reply, say) and the sender's id. Without one, the hub discards
    /// client messages without buffering them.
    ///
    /// A connection reads nothing more until the future `handler` returned
    /// for its last message completes, so an application that falls behind
    /// slows its clients down through TCP instead of buffering their
    /// messages; the heartbeat does not count a waiting client as silent.
    /// Messages are reassembled up to [`Config::max_message_size`], and text
    /// is checked to be UTF-8 (the connection closes with 1007 otherwise).
    /// A connection that closes stops delivering messages; a handler's
    /// future still running then runs until the connection is gone and is
    /// dropped with it.
    pub fn on_message<F, Fut>(mut self, handler: F) -> HubBuilder
    where
        F: Fn(Hub, ConnectionId, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.handler = Some(Box::new(move |registry, from, message| {
            Box::pin(handler(Hub { registry }, from, message))
        }));
        self
    }

    /// Tells `callback` of every connection opening and closing and of
    /// every channel joined and left, as it happens.
    ///
    /// It runs on the thread making the change, with no lock of the hub's
    /// held, so it may call the hub (to subscribe a newcomer, say); it must
    /// not block. A closing connection leaves its channels before it is
    /// reported disconnected.
    pub fn on_presence<F>(mut self, callback: F) -> HubBuilder
    where
        F: Fn(Hub, Presence) + Send + Sync + 'static,
    {
        self.on_presence = Some(Box::new(move |registry, event| {
            callback(Hub { registry }, event)
        }));
        self
    }

    /// The hub, with no connections yet.
    pub fn build(self) -> Hub {
        Hub {
            registry: Arc::new(Registry::new(self.config, self.handler, self.on_presence)),
        }
    }
}
