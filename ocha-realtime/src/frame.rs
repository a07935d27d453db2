//! WebSocket framing for the server side of a connection.
//!
//! Outbound frames are encoded once into [`Bytes`] and shared by every
//! connection that sends them, which is what makes a broadcast cheap: a
//! connection's write path only hands those bytes to its socket. Inbound
//! frames are parsed with tungstenite's [`FrameHeader`]; data payloads are
//! unmasked and checked as they arrive, and kept only when the hub hands
//! messages to the application: without a handler they are skipped rather
//! than buffered, and only control frames (at most 125 bytes) are kept.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};

use crate::utf8::Utf8Stream;
use crate::Message;
use tokio_tungstenite::tungstenite::protocol::frame::{
    coding::{CloseCode, Control, Data, OpCode},
    FrameHeader,
};

/// Largest payload of a control frame (RFC 6455, section 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;
/// Longest frame header a client can send: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Encodes a final, unmasked frame: the form a server sends.
fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let length = payload.len() as u64;
    let mut frame = BytesMut::with_capacity(header.len(length) + payload.len()).writer();
    header
        .format(length, &mut frame)
        .expect("writing to memory cannot fail");
    let mut frame = frame.into_inner();
    frame.put_slice(payload);
    frame.freeze()
}

/// A text frame carrying `text`.
pub(crate) fn text(text: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), text)
}

/// A binary frame carrying `payload`.
pub(crate) fn binary(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Binary), payload)
}

/// An empty ping frame.
pub(crate) fn ping() -> Bytes {
    encode(OpCode::Control(Control::Ping), &[])
}

/// A pong frame echoing a ping's payload.
pub(crate) fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

/// A close frame with a status code and a short reason; `None` sends the
/// empty close frame that answers a peer's empty one.
pub(crate) fn close(code: Option<CloseCode>, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    if let Some(code) = code {
        payload.extend_from_slice(&u16::from(code).to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
    }
    encode(OpCode::Control(Control::Close), &payload)
}

/// What the connection has to act on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Received {
    /// A ping, with its payload to echo in the pong.
    Ping(Vec<u8>),
    /// The peer started or answered the close handshake.
    Close(Option<CloseCode>),
    /// A whole data message (only when messages are kept).
    Message(Message),
}

/// Why the inbound stream cannot go on; the connection closes with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboundError {
    /// The peer broke RFC 6455 (1002); what follows cannot be parsed.
    Protocol,
    /// A message exceeded the configured maximum (1009). The parser skips
    /// the rest of it and stays usable.
    TooBig,
    /// A text message or close reason that is not UTF-8 (1007). The parser
    /// skips the rest of the message and stays usable.
    InvalidUtf8,
}

impl InboundError {
    /// The close code that reports this error to the peer.
    pub(crate) fn close_code(self) -> CloseCode {
        match self {
            InboundError::Protocol => CloseCode::Protocol,
            InboundError::TooBig => CloseCode::Size,
            InboundError::InvalidUtf8 => CloseCode::Invalid,
        }
    }
}

/// Where the parser is within the current frame.
#[derive(Debug)]
enum State {
    /// Collecting header bytes.
    Header,
    /// Reading a data frame's payload.
    Data {
        mask: [u8; 4],
        /// Payload bytes read so far, for the mask's phase.
        offset: u64,
        remaining: u64,
        is_final: bool,
    },
    /// Discarding the rest of a refused message's frame, unread.
    Skip(u64),
    /// Collecting a control frame's payload.
    Control {
        opcode: Control,
        mask: [u8; 4],
        remaining: u64,
    },
}

/// The data message whose frames are arriving.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// Payload bytes so far, across fragments.
    len: u64,
    /// Refused (too big or not UTF-8): its remaining frames are skipped.
    refused: bool,
}

/// Incremental parser of the frames a client sends.
///
/// Unless it keeps messages, it holds no buffer for data payloads, so an
/// idle connection costs only this struct.
#[derive(Debug)]
pub(crate) struct Inbound {
    state: State,
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Payload of the control frame being collected; allocated only for
    /// control frames that carry a payload.
    control: Vec<u8>,
    message: Option<Partial>,
    /// Whether whole messages are returned rather than discarded.
    keep: bool,
    /// The kept message's payload so far.
    payload: Vec<u8>,
    utf8: Utf8Stream,
    max_message_size: u64,
}

impl Inbound {
    /// A parser that refuses messages longer than `max_message_size` bytes
    /// and returns whole messages if `keep` is set.
    pub(crate) fn new(max_message_size: usize, keep: bool) -> Self {
        Inbound {
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            control: Vec::new(),
            message: None,
            keep,
            payload: Vec::new(),
            utf8: Utf8Stream::default(),
            max_message_size: max_message_size as u64,
        }
    }

    /// Consumes bytes from the front of `input` until there is something to
    /// act on or `input` is empty.
    ///
    /// The caller calls again with what is left of `input`.
    pub(crate) fn advance(&mut self, input: &mut &[u8]) -> Result<Option<Received>, InboundError> {
        while !input.is_empty() {
            let received = match &mut self.state {
                State::Header => self.read_header(input)?,
                State::Data { .. } => self.read_data(input)?,
                State::Skip(remaining) => {
                    let n = (*remaining).min(input.len() as u64);
                    *input = &input[n as usize..];
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    None
                }
                State::Control {
                    opcode,
                    mask,
                    remaining,
                } => {
                    let n = (*remaining).min(input.len() as u64) as usize;
                    let start = self.control.len();
                    self.control.extend_from_slice(&input[..n]);
                    unmask(&mut self.control[start..], *mask, start as u64);
                    *input = &input[n..];
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let opcode = *opcode;
                        self.finish_control(opcode)?
                    } else {
                        None
                    }
                }
            };
            if received.is_some() {
                return Ok(received);
            }
        }
        Ok(None)
    }

    /// Moves header bytes from `input` and starts the frame once the header
    /// is complete.
    fn read_header(&mut self, input: &mut &[u8]) -> Result<Option<Received>, InboundError> {
        let had = self.header_len as usize;
        let take = (MAX_HEADER - had).min(input.len());
        self.header[had..had + take].copy_from_slice(&input[..take]);
        let available = had + take;
        let mut cursor = Cursor::new(&self.header[..available]);
        let parsed = FrameHeader::parse(&mut cursor).map_err(|_| InboundError::Protocol)?;
        let Some((header, length)) = parsed else {
            self.header_len = available as u8;
            *input = &input[take..];
            return Ok(None);
        };
        // Give back the bytes that belong to the payload.
        *input = &input[cursor.position() as usize - had..];
        self.header_len = 0;
        self.start_frame(header, length)
    }

    fn start_frame(
        &mut self,
        header: FrameHeader,
        length: u64,
    ) -> Result<Option<Received>, InboundError> {
        // Clients must mask; no extension is negotiated, so no RSV bit is
        // valid; a 64-bit length must have its top bit clear (RFC 6455, 5.2).
        let Some(mask) = header.mask else {
            return Err(InboundError::Protocol);
        };
        if header.rsv1 || header.rsv2 || header.rsv3 || length > i64::MAX as u64 {
            return Err(InboundError::Protocol);
        }
        let text = match header.opcode {
            OpCode::Control(opcode) => {
                if !header.is_final || length > MAX_CONTROL_PAYLOAD {
                    return Err(InboundError::Protocol);
                }
                self.control.clear();
                if length == 0 {
                    return self.finish_control(opcode);
                }
                self.state = State::Control {
                    opcode,
                    mask,
                    remaining: length,
                };
                return Ok(None);
            }
            OpCode::Data(Data::Continue) => match &self.message {
                Some(partial) => partial.text,
                None => return Err(InboundError::Protocol),
            },
            OpCode::Data(Data::Text | Data::Binary) if self.message.is_some() => {
                return Err(InboundError::Protocol);
            }
            OpCode::Data(Data::Text) => true,
            OpCode::Data(Data::Binary) => false,
            OpCode::Data(Data::Reserved(_)) => return Err(InboundError::Protocol),
        };
        let partial = self.message.get_or_insert(Partial {
            text,
            len: 0,
            refused: false,
        });
        partial.len = partial.len.saturating_add(length);
        let refused = partial.refused;
        let too_big = !refused && partial.len > self.max_message_size;
        if refused || too_big {
            // Skipping the payload keeps the parser in step with the stream,
            // so the client's answer to our close can still be recognized.
            self.refuse(length, header.is_final);
            return if too_big {
                Err(InboundError::TooBig)
            } else {
                Ok(None)
            };
        }
        self.state = State::Data {
            mask,
            offset: 0,
            remaining: length,
            is_final: header.is_final,
        };
        if length == 0 {
            return self.end_data_frame(header.is_final);
        }
        Ok(None)
    }

    /// Unmasks and checks payload bytes, keeping them if messages are kept.
    fn read_data(&mut self, input: &mut &[u8]) -> Result<Option<Received>, InboundError> {
        let State::Data {
            mask,
            offset,
            remaining,
            is_final,
        } = &mut self.state
        else {
            unreachable!("read_data is called in the Data state");
        };
        let n = (*remaining).min(input.len() as u64) as usize;
        let (bytes, rest) = input.split_at(n);
        *input = rest;
        let text = self.message.as_ref().is_some_and(|partial| partial.text);
        let checked = if self.keep {
            let start = self.payload.len();
            self.payload.extend_from_slice(bytes);
            unmask(&mut self.payload[start..], *mask, *offset);
            if text {
                self.utf8.feed(&self.payload[start..])
            } else {
                Ok(())
            }
        } else if text {
            // Check the text through a small window; nothing is kept.
            let mut window = [0; 256];
            bytes
                .chunks(window.len())
                .enumerate()
                .try_for_each(|(i, chunk)| {
                    let window = &mut window[..chunk.len()];
                    window.copy_from_slice(chunk);
                    unmask(window, *mask, *offset + (i * 256) as u64);
                    self.utf8.feed(window)
                })
        } else {
            Ok(())
        };
        *offset += n as u64;
        *remaining -= n as u64;
        let (remaining, is_final) = (*remaining, *is_final);
        if checked.is_err() {
            self.refuse(remaining, is_final);
            return Err(InboundError::InvalidUtf8);
        }
        if remaining > 0 {
            return Ok(None);
        }
        self.end_data_frame(is_final)
    }

    /// Ends a data frame whose payload is all read; on the final frame,
    /// returns the message if messages are kept.
    fn end_data_frame(&mut self, is_final: bool) -> Result<Option<Received>, InboundError> {
        self.state = State::Header;
        if !is_final {
            return Ok(None);
        }
        let partial = self
            .message
            .take()
            .expect("a data frame belongs to a message");
        if partial.text && self.utf8.finish().is_err() {
            self.payload = Vec::new();
            return Err(InboundError::InvalidUtf8);
        }
        if !self.keep {
            return Ok(None);
        }
        let payload = std::mem::take(&mut self.payload);
        let message = if partial.text {
            Message::Text(String::from_utf8(payload).map_err(|_| InboundError::InvalidUtf8)?)
        } else {
            Message::Binary(Bytes::from(payload))
        };
        Ok(Some(Received::Message(message)))
    }

    /// Drops the message in progress and skips what is left of it.
    fn refuse(&mut self, remaining: u64, is_final: bool) {
        self.payload = Vec::new();
        let _ = self.utf8.finish();
        self.state = if remaining > 0 {
            State::Skip(remaining)
        } else {
            State::Header
        };
        match &mut self.message {
            Some(_) if is_final => self.message = None,
            Some(partial) => partial.refused = true,
            None => {}
        }
    }

    /// Ends a control frame whose payload is in `self.control`.
    fn finish_control(&mut self, opcode: Control) -> Result<Option<Received>, InboundError> {
        self.state = State::Header;
        let payload = std::mem::take(&mut self.control);
        match opcode {
            Control::Ping => Ok(Some(Received::Ping(payload))),
            Control::Close => match payload.as_slice() {
                [] => Ok(Some(Received::Close(None))),
                [_] => Err(InboundError::Protocol),
                [hi, lo, reason @ ..] => {
                    let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
                    if !code.is_allowed() {
                        return Err(InboundError::Protocol);
                    }
                    std::str::from_utf8(reason).map_err(|_| InboundError::InvalidUtf8)?;
                    Ok(Some(Received::Close(Some(code))))
                }
            },
            // Pongs answer our heartbeat pings; arriving at all is what counts.
            // Reserved opcodes were refused by the header parser.
            Control::Pong | Control::Reserved(_) => Ok(None),
        }
    }
}

/// Unmasks `bytes`, which start `offset` bytes into a frame's payload.
fn unmask(bytes: &mut [u8], mask: [u8; 4], offset: u64) {
    let phase = (offset % 4) as usize;
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte ^= mask[(phase + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    /// Encodes a frame as a client would: masked.
    fn client_frame(opcode: OpCode, is_final: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let header = FrameHeader {
            is_final,
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn feed_bytewise(inbound: &mut Inbound, bytes: &[u8]) -> Result<Vec<Received>, InboundError> {
        let mut received = Vec::new();
        for byte in bytes {
            let mut input = std::slice::from_ref(byte);
            while !input.is_empty() {
                received.extend(inbound.advance(&mut input)?);
            }
        }
        Ok(received)
    }

    #[test]
    fn server_frames_are_unmasked_with_the_shortest_length() {
        assert_eq!(&text(b"hi")[..], b"\x81\x02hi");
        assert_eq!(&ping()[..], b"\x89\x00");
        assert_eq!(
            &close(Some(CloseCode::Away), "bye")[..],
            b"\x88\x05\x03\xe9bye"
        );
        let long = text(&[b'a'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn data_is_skipped_and_control_frames_are_returned_even_split_bytewise() {
        let mut bytes = client_frame(OpCode::Data(Data::Text), true, &[b'x'; 1000]);
        bytes.extend(client_frame(OpCode::Control(Control::Ping), true, b"abc"));
        bytes.extend(client_frame(OpCode::Data(Data::Binary), false, b"part"));
        bytes.extend(client_frame(OpCode::Control(Control::Pong), true, b""));
        bytes.extend(client_frame(OpCode::Data(Data::Continue), true, b"end"));
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"done");
        bytes.extend(client_frame(
            OpCode::Control(Control::Close),
            true,
            &payload,
        ));

        let expected = vec![
            Received::Ping(b"abc".to_vec()),
            Received::Close(Some(CloseCode::Normal)),
        ];
        assert_eq!(
            feed_bytewise(&mut Inbound::new(4096, false), &bytes),
            Ok(expected.clone())
        );

        let mut whole = Inbound::new(4096, false);
        let mut input = &bytes[..];
        let mut received = Vec::new();
        while !input.is_empty() {
            received.extend(whole.advance(&mut input).unwrap());
        }
        assert_eq!(received, expected);
    }

    #[test]
    fn protocol_violations_are_refused() {
        let unmasked = [0x81, 0x00];
        assert_eq!(
            Inbound::new(64, false).advance(&mut &unmasked[..]),
            Err(InboundError::Protocol)
        );
        let stray_continue = client_frame(OpCode::Data(Data::Continue), true, b"x");
        assert_eq!(
            Inbound::new(64, false).advance(&mut &stray_continue[..]),
            Err(InboundError::Protocol)
        );
        let long_ping = client_frame(OpCode::Control(Control::Ping), true, &[0; 126]);
        assert_eq!(
            Inbound::new(64, false).advance(&mut &long_ping[..]),
            Err(InboundError::Protocol)
        );
        let reserved = client_frame(OpCode::Data(Data::Reserved(3)), true, b"");
        assert_eq!(
            Inbound::new(64, false).advance(&mut &reserved[..]),
            Err(InboundError::Protocol)
        );
    }

    #[test]
    fn messages_over_the_limit_are_too_big_across_fragments() {
        let mut inbound = Inbound::new(10, false);
        let first = client_frame(OpCode::Data(Data::Text), false, b"123456");
        assert_eq!(inbound.advance(&mut &first[..]), Ok(None));
        let second = client_frame(OpCode::Data(Data::Continue), true, b"78901");
        assert_eq!(inbound.advance(&mut &second[..]), Err(InboundError::TooBig));
        let exact = client_frame(OpCode::Data(Data::Text), true, b"1234567890");
        assert_eq!(Inbound::new(10, false).advance(&mut &exact[..]), Ok(None));

        // The parser stays in step after refusing a message.
        let mut after = client_frame(OpCode::Data(Data::Text), true, &[b'x'; 11]);
        after.extend(client_frame(OpCode::Control(Control::Close), true, b""));
        let mut inbound = Inbound::new(10, false);
        let mut input = &after[..];
        assert_eq!(inbound.advance(&mut input), Err(InboundError::TooBig));
        assert_eq!(inbound.advance(&mut input), Ok(Some(Received::Close(None))));
    }

    /// Every message and control frame `bytes` yields, fed in one piece.
    fn feed_whole(inbound: &mut Inbound, bytes: &[u8]) -> Result<Vec<Received>, InboundError> {
        let mut input = bytes;
        let mut received = Vec::new();
        while !input.is_empty() {
            received.extend(inbound.advance(&mut input)?);
        }
        Ok(received)
    }

    #[test]
    fn kept_messages_are_reassembled_around_control_frames() {
        let mut bytes = client_frame(OpCode::Data(Data::Text), false, "Conne".as_bytes());
        bytes.extend(client_frame(OpCode::Control(Control::Ping), true, b"p"));
        // "é" is split between two fragments.
        bytes.extend(client_frame(OpCode::Data(Data::Continue), false, b"ct\xc3"));
        bytes.extend(client_frame(OpCode::Data(Data::Continue), true, b"\xa9"));
        bytes.extend(client_frame(OpCode::Data(Data::Binary), true, &[0, 255]));
        bytes.extend(client_frame(OpCode::Data(Data::Text), true, b""));
        let expected = vec![
            Received::Ping(b"p".to_vec()),
            Received::Message(Message::Text("Connecté".into())),
            Received::Message(Message::Binary(Bytes::from_static(&[0, 255]))),
            Received::Message(Message::Text(String::new())),
        ];
        assert_eq!(
            feed_whole(&mut Inbound::new(64, true), &bytes),
            Ok(expected.clone())
        );
        assert_eq!(
            feed_bytewise(&mut Inbound::new(64, true), &bytes),
            Ok(expected)
        );
        // Without keeping, the same stream yields only the control frame.
        assert_eq!(
            feed_whole(&mut Inbound::new(64, false), &bytes),
            Ok(vec![Received::Ping(b"p".to_vec())])
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_message_ends_kept_or_not() {
        for keep in [true, false] {
            let mut inbound = Inbound::new(64, keep);
            let first = client_frame(OpCode::Data(Data::Text), false, b"ok\xc3(");
            assert_eq!(
                feed_whole(&mut inbound, &first),
                Err(InboundError::InvalidUtf8)
            );
            // The rest of the refused message is skipped; the parser stays in step.
            let mut rest = client_frame(OpCode::Data(Data::Continue), true, b"\xff");
            rest.extend(client_frame(OpCode::Control(Control::Close), true, b""));
            assert_eq!(
                feed_whole(&mut inbound, &rest),
                Ok(vec![Received::Close(None)])
            );
            // A message that ends inside a character is invalid too.
            let truncated = client_frame(OpCode::Data(Data::Text), true, b"\xe2\x82");
            assert_eq!(
                feed_whole(&mut Inbound::new(64, keep), &truncated),
                Err(InboundError::InvalidUtf8)
            );
        }
    }

    #[test]
    fn a_length_with_the_top_bit_set_is_a_protocol_error() {
        // 127 announces a 64-bit length; RFC 6455 requires its top bit clear.
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            Inbound::new(64, true).advance(&mut &frame[..]),
            Err(InboundError::Protocol)
        );
    }
}
