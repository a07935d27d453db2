//! WebSocket framing for the server side of a connection.
//!
//! Outbound frames are encoded once into [`Bytes`] and shared by every
//! connection that sends them, which is what makes a broadcast cheap: a
//! connection's write path only hands those bytes to its socket. Inbound
//! frames are parsed with tungstenite's [`FrameHeader`] and, since clients
//! have nothing to tell the hub, their payloads are skipped rather than
//! buffered; only control frames (at most 125 bytes) are kept.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
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

/// A control frame the connection has to answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Received {
    /// A ping, with its payload to echo in the pong.
    Ping(Vec<u8>),
    /// The peer started or answered the close handshake.
    Close(Option<CloseCode>),
}

/// Why the inbound stream cannot go on; the connection closes with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboundError {
    /// The peer broke RFC 6455 (1002); what follows cannot be parsed.
    Protocol,
    /// A message exceeded the configured maximum (1009). The parser skips
    /// it and stays usable.
    TooBig,
    /// A close reason that is not UTF-8 (1007).
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
    /// Discarding the rest of a data frame's payload.
    Skip(u64),
    /// Collecting a control frame's payload.
    Control {
        opcode: Control,
        mask: [u8; 4],
        remaining: u64,
    },
}

/// Incremental parser of the frames a client sends.
///
/// It holds no buffer for data payloads, so an idle connection costs only
/// this struct.
#[derive(Debug)]
pub(crate) struct Inbound {
    state: State,
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Payload of the control frame being collected; allocated only for
    /// control frames that carry a payload.
    control: Vec<u8>,
    /// Whether a fragmented data message is in progress.
    in_message: bool,
    /// Payload bytes of the data message so far.
    message_len: u64,
    max_message_size: u64,
}

impl Inbound {
    /// A parser that refuses messages longer than `max_message_size` bytes.
    pub(crate) fn new(max_message_size: usize) -> Self {
        Inbound {
            state: State::Header,
            header: [0; MAX_HEADER],
            header_len: 0,
            control: Vec::new(),
            in_message: false,
            message_len: 0,
            max_message_size: max_message_size as u64,
        }
    }

    /// Consumes bytes from the front of `input` until a control frame to
    /// answer is complete or `input` is empty.
    ///
    /// The caller calls again with what is left of `input`.
    pub(crate) fn advance(&mut self, input: &mut &[u8]) -> Result<Option<Received>, InboundError> {
        while !input.is_empty() {
            let received = match &mut self.state {
                State::Header => self.read_header(input)?,
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
                    for (i, byte) in self.control[start..].iter_mut().enumerate() {
                        *byte ^= mask[(start + i) % 4];
                    }
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
        // Clients must mask; no extension is negotiated, so no RSV bit is valid.
        let Some(mask) = header.mask else {
            return Err(InboundError::Protocol);
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(InboundError::Protocol);
        }
        match header.opcode {
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
            OpCode::Data(Data::Continue) if !self.in_message => {
                return Err(InboundError::Protocol);
            }
            OpCode::Data(Data::Text | Data::Binary) if self.in_message => {
                return Err(InboundError::Protocol);
            }
            OpCode::Data(_) => {}
        }
        self.message_len = self.message_len.saturating_add(length);
        let too_big = self.message_len > self.max_message_size;
        self.in_message = !header.is_final;
        if header.is_final {
            self.message_len = 0;
        }
        if length > 0 {
            self.state = State::Skip(length);
        }
        // Skipping the payload keeps the parser in step with the stream, so
        // the client's answer to our close can still be recognized.
        if too_big {
            return Err(InboundError::TooBig);
        }
        Ok(None)
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
            feed_bytewise(&mut Inbound::new(4096), &bytes),
            Ok(expected.clone())
        );

        let mut whole = Inbound::new(4096);
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
            Inbound::new(64).advance(&mut &unmasked[..]),
            Err(InboundError::Protocol)
        );
        let stray_continue = client_frame(OpCode::Data(Data::Continue), true, b"x");
        assert_eq!(
            Inbound::new(64).advance(&mut &stray_continue[..]),
            Err(InboundError::Protocol)
        );
        let long_ping = client_frame(OpCode::Control(Control::Ping), true, &[0; 126]);
        assert_eq!(
            Inbound::new(64).advance(&mut &long_ping[..]),
            Err(InboundError::Protocol)
        );
        let reserved = client_frame(OpCode::Data(Data::Reserved(3)), true, b"");
        assert_eq!(
            Inbound::new(64).advance(&mut &reserved[..]),
            Err(InboundError::Protocol)
        );
    }

    #[test]
    fn messages_over_the_limit_are_too_big_across_fragments() {
        let mut inbound = Inbound::new(10);
        let first = client_frame(OpCode::Data(Data::Text), false, b"123456");
        assert_eq!(inbound.advance(&mut &first[..]), Ok(None));
        let second = client_frame(OpCode::Data(Data::Continue), true, b"78901");
        assert_eq!(inbound.advance(&mut &second[..]), Err(InboundError::TooBig));
        let exact = client_frame(OpCode::Data(Data::Text), true, b"1234567890");
        assert_eq!(Inbound::new(10).advance(&mut &exact[..]), Ok(None));

        // The parser stays in step after refusing a message.
        let mut after = client_frame(OpCode::Data(Data::Text), true, &[b'x'; 11]);
        after.extend(client_frame(OpCode::Control(Control::Close), true, b""));
        let mut inbound = Inbound::new(10);
        let mut input = &after[..];
        assert_eq!(inbound.advance(&mut input), Err(InboundError::TooBig));
        assert_eq!(inbound.advance(&mut input), Ok(Some(Received::Close(None))));
    }
}
