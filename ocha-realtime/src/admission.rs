//! Who a new connection is, as the application decided when it admitted it.

use std::sync::Arc;

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
    pub(crate) channels: Vec<Arc<str>>,
    pub(crate) protocol: Option<String>,
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
        self.channels.push(Arc::from(channel.into()));
        self
    }

    /// Accepts the subprotocol `protocol`, one of those the client offered
    /// in `Sec-WebSocket-Protocol` (which browsers can use to carry a token).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Admission {
        self.protocol = Some(protocol.into());
        self
    }
}
