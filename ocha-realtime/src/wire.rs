//! What goes on the wire for each transport: a frame's WebSocket bytes,
//! framed once when it is made, and its Server-Sent Events bytes, made on
//! first need, so a hub without SSE clients never pays for them.

use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::EventId;

/// How a connection receives what the hub sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// WebSocket frames.
    WebSocket,
    /// A `text/event-stream` response body.
    EventStream,
}

/// One message to send, encoded for either transport.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    /// The WebSocket frame.
    websocket: Bytes,
    /// The event's id, written as SSE's `id:` field.
    id: Option<EventId>,
    /// The SSE event; `None` for a binary frame, which SSE cannot carry.
    event_stream: OnceLock<Option<Bytes>>,
}

impl Wire {
    /// The message that `websocket`, a frame this crate encoded, carries.
    pub(crate) fn new(websocket: Bytes, id: Option<EventId>) -> Wire {
        Wire {
            websocket,
            id,
            event_stream: OnceLock::new(),
        }
    }

    /// The bytes to queue for a connection of `transport`, if it can carry
    /// them.
    pub(crate) fn bytes(&self, transport: Transport) -> Option<&Bytes> {
        match transport {
            Transport::WebSocket => Some(&self.websocket),
            Transport::EventStream => self
                .event_stream
                .get_or_init(|| text_payload(&self.websocket).map(|text| event(self.id, text)))
                .as_ref(),
        }
    }
}

/// The payload of a text frame this crate encoded (unmasked, unfragmented);
/// `None` for any other frame.
fn text_payload(frame: &[u8]) -> Option<&[u8]> {
    const TEXT: u8 = 0x1;
    let (&first, rest) = frame.split_first()?;
    if first & 0x0f != TEXT {
        return None;
    }
    let header = match rest.first()? & 0x7f {
        126 => 3,
        127 => 9,
        _ => 1,
    };
    rest.get(header..)
}

/// An SSE event: its `id:` line if it has one, then one `data:` line per
/// line of `text` (SSE ends a field at any of CR, LF or CRLF).
pub(crate) fn event(id: Option<EventId>, text: &[u8]) -> Bytes {
    let mut event = BytesMut::with_capacity(text.len() + 32);
    if let Some(id) = id {
        event.put_slice(format!("id: {id}\n").as_bytes());
    }
    let mut lines = text.split(|&byte| byte == b'\n').peekable();
    while let Some(line) = lines.next() {
        // A CR ending a line was half of a CRLF; one inside a line ends it too.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        for part in line.split(|&byte| byte == b'\r') {
            event.put_slice(b"data: ");
            event.put_slice(part);
            event.put_u8(b'\n');
        }
        if lines.peek().is_none() {
            break;
        }
    }
    event.put_u8(b'\n');
    event.freeze()
}

/// An SSE block that sets the client's last event id without dispatching
/// an event (an empty data buffer dispatches nothing, but the id sticks),
/// so that a client reconnects from here even before its first event.
pub(crate) fn position(id: EventId) -> Bytes {
    Bytes::from(format!("id: {id}\n\n"))
}

/// The empty SSE comment that keeps an idle stream busy.
pub(crate) const HEARTBEAT: &[u8] = b":\n";

/// An SSE comment, which clients ignore: for greetings.
pub(crate) fn comment(text: &str) -> Bytes {
    let text: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    Bytes::from(format!(": {text}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn sse(websocket: Bytes, id: Option<u64>) -> Option<String> {
        Wire::new(websocket, id.map(EventId::new))
            .bytes(Transport::EventStream)
            .map(|bytes| String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn events_carry_their_id_and_one_data_line_per_line() {
        let json = br#"{"type":"new_product","id":"42"}"#;
        assert_eq!(
            sse(frame::text(json), Some(42)).unwrap(),
            "id: 42\ndata: {\"type\":\"new_product\",\"id\":\"42\"}\n\n"
        );
        assert_eq!(
            sse(frame::text(b"a\nb\r\nc\rd"), None).unwrap(),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(sse(frame::text(b""), None).unwrap(), "data: \n\n");
    }

    #[test]
    fn long_frames_are_read_past_their_extended_length() {
        for len in [125, 126, 65_535, 65_536] {
            let text = "x".repeat(len);
            let event = sse(frame::text(text.as_bytes()), None).unwrap();
            assert_eq!(event, format!("data: {text}\n\n"), "{len}");
        }
    }

    #[test]
    fn binary_frames_have_no_event_stream_form() {
        assert_eq!(sse(frame::binary(b"\x00\x01"), Some(1)), None);
        let wire = Wire::new(frame::binary(b"x"), None);
        assert!(wire.bytes(Transport::WebSocket).is_some());
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(comment("a\r\nb"), ": ab\n");
        assert_eq!(position(EventId::new(7)), "id: 7\n\n");
    }
}
