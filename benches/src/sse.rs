//! Server-Sent Events for `--sse` readers: [`EventStream`] sends
//! `GET /api/v1/events` on a connected socket and hands back what the body
//! says, as [`Item`]s that a [`Parser`] makes of the body. The parser takes
//! the body in pieces cut anywhere (HTTP chunks and socket reads fall where
//! they fall, even inside a UTF-8 character).
//!
//! It follows the WHATWG event-stream format as far as a load generator
//! needs: lines end at LF, CR or CRLF; a line starting with `:` is a
//! comment; `data` lines join with LF; `id` sets the block's id; a blank
//! line ends a block. Unlike `EventSource`, it hands over comments and
//! blocks without data too, so that a client can check the welcome comment
//! and the position block that ocha-server opens a stream with.
//!
//! The HTTP side is done by hand on the socket: the request, the response
//! head through `httparse`, then the chunked body through [`Chunked`].
//! hyper's client connection did the same for about 1.4 times the
//! WebSocket readers' CPU per event and 8 KiB more per reader (an 8 KiB
//! header buffer, its dispatcher and a body channel; see BENCHMARKS.md,
//! "Server-Sent Events"): on the one loadgen thread that serves 10,000
//! readers, that cost shows in the very latencies measured.

use crate::chunked::Chunked;
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time, the WebSocket clients' read buffer
/// size: thousands of readers each hold one. A burst of events takes a few
/// reads more.
const READ_BUFFER: usize = 2048;
/// The longest response head accepted; ocha-server's is about 200 bytes.
const MAX_HEAD: usize = 8192;
/// Response header lines accepted.
const MAX_HEADERS: usize = 32;

/// One reader's `text/event-stream` response, read as it arrives.
pub(crate) struct EventStream {
    socket: TcpStream,
    buffer: Box<[u8]>,
    chunked: Chunked,
    parser: Parser,
}

impl EventStream {
    /// Sends `GET path` for `authority` over `socket`; fails unless the
    /// answer is a 200 `text/event-stream` with a chunked body.
    pub(crate) async fn open(
        mut socket: TcpStream,
        authority: &str,
        path: &str,
    ) -> Result<EventStream, String> {
        let fail = |e: String| format!("GET {path}: {e}");
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {authority}\r\naccept: text/event-stream\r\n\r\n"
        );
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut head = Vec::with_capacity(READ_BUFFER);
        let length = loop {
            match socket.read_buf(&mut head).await {
                Ok(0) => return Err(fail("closed before the response".into())),
                Ok(_) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&head) {
                Ok(httparse::Status::Complete(length)) => {
                    check_head(&response).map_err(fail)?;
                    break length;
                }
                Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    return Err(fail(format!("response head over {MAX_HEAD} bytes")))
                }
                Err(e) => return Err(fail(format!("bad response: {e}"))),
            }
        };
        let mut stream = EventStream {
            socket,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            chunked: Chunked::default(),
            parser: Parser::default(),
        };
        // The body may have come along with the head.
        take(&mut stream.chunked, &mut stream.parser, &head[length..])?;
        Ok(stream)
    }

    /// Reads the opening of an ocha-server stream: `welcome` as a comment,
    /// then a block that sets the client's position to the last event's id
    /// and dispatches nothing.
    pub(crate) async fn welcome(&mut self, welcome: &str) -> Result<(), String> {
        let greeting = self.next().await;
        if !matches!(&greeting, Some(Ok(Item::Comment(text))) if text == welcome) {
            return Err(format!("bad welcome: {greeting:?}"));
        }
        match self.next().await {
            Some(Ok(Item::Block {
                id: Some(id),
                data: None,
            })) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
            other => Err(format!("bad position after the welcome: {other:?}")),
        }
    }

    /// The next item of the stream; `None` once the body ended, an error if
    /// the stream broke or is not an event stream.
    pub(crate) async fn next(&mut self) -> Option<Result<Item, String>> {
        loop {
            if let Some(item) = self.parser.next() {
                return Some(Ok(item));
            }
            if self.chunked.is_done() {
                return None;
            }
            let read = match self.socket.read(&mut self.buffer).await {
                Ok(0) => return Some(Err("event stream: closed within the body".into())),
                Ok(read) => read,
                Err(e) => return Some(Err(format!("event stream: {e}"))),
            };
            let bytes = &self.buffer[..read];
            if let Err(e) = take(&mut self.chunked, &mut self.parser, bytes) {
                return Some(Err(e));
            }
        }
    }
}

/// Checks that a response head announces an event stream in a chunked body.
fn check_head(response: &httparse::Response<'_, '_>) -> Result<(), String> {
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| String::from_utf8_lossy(header.value))
    };
    let code = response.code.unwrap_or_default();
    let kind = header("content-type");
    if code != 200
        || !kind
            .as_ref()
            .is_some_and(|k| k.starts_with("text/event-stream"))
    {
        return Err(format!("{code}, content-type {kind:?}"));
    }
    // Any other coding, such as a compressed body, is not for this parser.
    match header("transfer-encoding") {
        Some(coding) if coding.eq_ignore_ascii_case("chunked") => Ok(()),
        coding => Err(format!("transfer-encoding {coding:?}, not chunked")),
    }
}

/// Decodes `bytes` of a chunked body and parses the data.
fn take(chunked: &mut Chunked, parser: &mut Parser, bytes: &[u8]) -> Result<(), String> {
    chunked.decode(bytes, |data| parser.feed(data))
}

/// What a stream says, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// A comment line, without its `:` and one space after it.
    Comment(String),
    /// The fields of a block that a blank line ended; blank lines with no
    /// field before them give none. An `EventSource` dispatches an event
    /// for a block with data only, but keeps the id of one without.
    Block {
        id: Option<String>,
        /// The `data` lines joined with LF; `None` without any.
        data: Option<String>,
    },
}

/// An incremental event-stream parser: [`feed`](Parser::feed) it the body
/// as it comes, [`next`](Parser::next) returns what it made of it.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// The last line ended with CR: an LF first thing in the next piece is
    /// the rest of a CRLF, not an empty line.
    after_cr: bool,
    id: Option<String>,
    data: Option<String>,
    items: VecDeque<Item>,
}

impl Parser {
    /// Parses the next piece of the body. Fails on bytes that are not
    /// UTF-8, which no stream of ours contains; the parser is unusable after.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.after_cr) {
            bytes = bytes.strip_prefix(b"\n").unwrap_or(bytes);
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line = &bytes[..end];
            if self.partial.is_empty() {
                self.line(line)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole)?;
                // Keep the allocation for the next line cut in two.
                whole.clear();
                self.partial = whole;
            }
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// The next item, oldest first.
    pub(crate) fn next(&mut self) -> Option<Item> {
        self.items.pop_front()
    }

    /// One line, without its end.
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let line =
            std::str::from_utf8(line).map_err(|e| format!("event stream is not UTF-8: {e}"))?;
        if line.is_empty() {
            if self.id.is_some() || self.data.is_some() {
                self.items.push_back(Item::Block {
                    id: self.id.take(),
                    data: self.data.take(),
                });
            }
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "" => self.items.push_back(Item::Comment(value.to_owned())),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" => self.id = Some(value.to_owned()),
            // `event` and `retry` change what an EventSource does with an
            // event, not which events arrive; other fields are ignored by
            // the format itself.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What ocha-server sends: the welcome comment and the position, a
    /// heartbeat, then two events.
    const STREAM: &str = concat!(
        ": {\"message\":\"Connecté au WebSocket\"}\nid: 0\n\n",
        ":\n",
        "id: 1\ndata: {\"type\":\"new_product\",\"id\":\"1\"}\n\n",
        "id: 2\ndata: {\"slug\":\"lg-abc-1\"}\n\n",
    );

    fn expected() -> Vec<Item> {
        vec![
            Item::Comment(r#"{"message":"Connecté au WebSocket"}"#.into()),
            Item::Block {
                id: Some("0".into()),
                data: None,
            },
            Item::Comment(String::new()),
            Item::Block {
                id: Some("1".into()),
                data: Some(r#"{"type":"new_product","id":"1"}"#.into()),
            },
            Item::Block {
                id: Some("2".into()),
                data: Some(r#"{"slug":"lg-abc-1"}"#.into()),
            },
        ]
    }

    /// Feeds `pieces` in order and collects the items.
    fn parse<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Item> {
        let mut parser = Parser::default();
        let mut items = Vec::new();
        for piece in pieces {
            parser.feed(piece).expect("UTF-8");
            items.extend(std::iter::from_fn(|| parser.next()));
        }
        assert!(parser.partial.is_empty(), "a whole stream leaves no line");
        items
    }

    #[test]
    fn a_stream_cut_anywhere_parses_the_same() {
        let bytes = STREAM.as_bytes();
        assert_eq!(parse([bytes]), expected());
        // Every cut in two, inside "é" too, and one byte at a time.
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(parse([a, b]), expected(), "cut at {cut}");
        }
        assert_eq!(parse(bytes.chunks(1)), expected());
    }

    #[test]
    fn items_come_as_soon_as_their_line_ends() {
        let mut parser = Parser::default();
        parser.feed(b": hi\nid: 3\nda").unwrap();
        assert_eq!(parser.next(), Some(Item::Comment("hi".into())));
        assert_eq!(parser.next(), None, "the block is not over");
        parser.feed(b"ta: x\n\n").unwrap();
        let block = Item::Block {
            id: Some("3".into()),
            data: Some("x".into()),
        };
        assert_eq!(parser.next(), Some(block));
    }

    #[test]
    fn data_lines_join_and_any_line_end_ends_a_line() {
        let block = |data: &str| Item::Block {
            id: None,
            data: Some(data.into()),
        };
        let whole = |text: &str| parse([text.as_bytes()]);
        assert_eq!(whole("data: a\ndata: b\n\n"), [block("a\nb")]);
        assert_eq!(whole("data: a\r\ndata: b\r\n\r\n"), [block("a\nb")]);
        assert_eq!(whole("data: a\rdata: b\r\r"), [block("a\nb")]);
        // One space after the colon is the separator's, no more.
        assert_eq!(whole("data:a\ndata:  b\ndata\n\n"), [block("a\n b\n")]);
        assert_eq!(whole("data: \n\n"), [block("")]);
        // A CRLF cut between CR and LF is one line end, not two.
        let cut: [&[u8]; 3] = [b"data: a\r", b"\ndata: b\r", b"\n\r\n"];
        assert_eq!(parse(cut), [block("a\nb")]);
        let cut: [&[u8]; 3] = [b"data: a\r", b"", b"\n\n"];
        assert_eq!(parse(cut), [block("a")]);
    }

    #[test]
    fn blank_lines_alone_and_other_fields_give_nothing() {
        let items = parse([b"\n\n\r\nevent: x\nretry: 10\nfoo: bar\n\n:\n".as_slice()]);
        assert_eq!(items, [Item::Comment(String::new())]);
        // The last id of a block is its id.
        let items = parse([b"id: 1\nid: 2\ndata: d\n\n".as_slice()]);
        assert_eq!(
            items,
            [Item::Block {
                id: Some("2".into()),
                data: Some("d".into())
            }]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_fail() {
        let mut parser = Parser::default();
        assert!(parser.feed(b"data: \xff\n").is_err());
    }

    /// Answers one request on a local port with `pieces`, each written on
    /// its own; returns the port's address.
    async fn serve(pieces: Vec<Vec<u8>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 1024];
            let _ = socket.read(&mut request).await.unwrap();
            for piece in pieces {
                socket.write_all(&piece).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        addr
    }

    /// `head`, then `body` in HTTP chunks of `chunk` bytes, then the last
    /// chunk.
    fn chunked(head: &str, body: &str, chunk: usize) -> Vec<Vec<u8>> {
        let mut pieces = vec![head.as_bytes().to_vec()];
        for piece in body.as_bytes().chunks(chunk) {
            let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
            framed.extend_from_slice(piece);
            framed.extend_from_slice(b"\r\n");
            pieces.push(framed);
        }
        pieces.push(b"0\r\n\r\n".to_vec());
        pieces
    }

    async fn serve_once(head: &str, body: &str, chunk: usize) -> SocketAddr {
        serve(chunked(head, body, chunk)).await
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      transfer-encoding: chunked\r\n\r\n";

    async fn open(addr: SocketAddr) -> Result<EventStream, String> {
        let socket = TcpStream::connect(addr).await.unwrap();
        EventStream::open(socket, &addr.to_string(), "/api/v1/events").await
    }

    #[tokio::test]
    async fn events_cut_across_http_chunks_arrive_whole() {
        for chunk in [1, 3, 7, 64, STREAM.len()] {
            let mut events = open(serve_once(OK, STREAM, chunk).await).await.unwrap();
            let mut items = Vec::new();
            while let Some(item) = events.next().await {
                items.push(item.expect("a readable stream"));
            }
            assert_eq!(items, expected(), "chunks of {chunk}");
        }
    }

    #[tokio::test]
    async fn a_body_that_came_with_the_head_is_not_lost() {
        let whole = chunked(OK, STREAM, 9).concat();
        let mut events = open(serve(vec![whole]).await).await.unwrap();
        let mut items = Vec::new();
        while let Some(item) = events.next().await {
            items.push(item.expect("a readable stream"));
        }
        assert_eq!(items, expected());
    }

    #[tokio::test]
    async fn a_stream_cut_off_within_the_body_fails() {
        let mut pieces = chunked(OK, STREAM, 9);
        pieces.truncate(3);
        let mut events = open(serve(pieces).await).await.unwrap();
        let mut last = events.next().await;
        while let Some(Ok(_)) = last {
            last = events.next().await;
        }
        assert!(matches!(last, Some(Err(_))), "{last:?}");
    }

    #[tokio::test]
    async fn the_welcome_is_a_comment_then_the_position() {
        let welcome = r#"{"message":"Connecté au WebSocket"}"#;
        let mut events = open(serve_once(OK, STREAM, 5).await).await.unwrap();
        assert_eq!(events.welcome(welcome).await, Ok(()));
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(first, Item::Comment(String::new()), "the heartbeat is next");

        let mut events = open(serve_once(OK, STREAM, 5).await).await.unwrap();
        assert!(events.welcome("another welcome").await.is_err());
        let no_position = ": hi\ndata: x\n\n";
        let mut events = open(serve_once(OK, no_position, 5).await).await.unwrap();
        assert!(events.welcome("hi").await.is_err());
    }

    #[tokio::test]
    async fn other_answers_than_an_event_stream_fail() {
        let refused = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                       transfer-encoding: chunked\r\n\r\n";
        let Err(error) = open(serve_once(refused, "{}", 2).await).await else {
            panic!("a 503 opened a stream");
        };
        assert!(error.contains("503"), "{error}");
        let json = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        assert!(open(serve_once(json, "{}", 2).await).await.is_err());
        let sized = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                     content-length: 4\r\n\r\n:\n\n\n";
        let Err(error) = open(serve(vec![sized.into()]).await).await else {
            panic!("a body of known length opened a stream");
        };
        assert!(error.contains("not chunked"), "{error}");
    }
}
