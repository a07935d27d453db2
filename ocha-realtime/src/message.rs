//! What clients send, what the hub sends, and how connections are named.

use std::fmt;

use bytes::Bytes;
use serde::Serialize;

use crate::frame;

/// Names one connection of a hub. Never reused while the hub lives, so a
/// stale id cannot reach a newer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A whole WebSocket message from a client, reassembled from its fragments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message; the hub checked that it is UTF-8.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// A message to send, framed once: publishing it to any number of
/// connections shares these bytes, it never copies them.
///
/// ```
/// # fn run(hub: ocha_realtime::Hub) -> Result<(), serde_json::Error> {
/// use ocha_realtime::Frame;
///
/// #[derive(serde::Serialize)]
/// struct OrderReady { order: u64 }
///
/// let frame = Frame::json(&OrderReady { order: 42 })?; // {"order":42}
/// hub.send_to_user("alice", &frame);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(pub(crate) Bytes);

impl Frame {
    /// A text frame holding `value` serialized as JSON.
    ///
    /// # Errors
    ///
    /// When `value` cannot be serialized as JSON, e.g. a map whose keys are
    /// not strings.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Frame, serde_json::Error> {
        Ok(Frame(frame::text(&serde_json::to_vec(value)?)))
    }

    /// A text frame holding `text` as it is.
    pub fn text(text: &str) -> Frame {
        Frame(frame::text(text.as_bytes()))
    }

    /// A binary frame holding `bytes`.
    pub fn binary(bytes: &[u8]) -> Frame {
        Frame(frame::binary(bytes))
    }
}

impl From<&Message> for Frame {
    /// The frame that sends `message` back as it came.
    fn from(message: &Message) -> Frame {
        match message {
            Message::Text(text) => Frame::text(text),
            Message::Binary(bytes) => Frame::binary(bytes),
        }
    }
}
