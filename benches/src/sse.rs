//! Server-Sent Events for `--sse` readers: [`EventStream`] opens
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
//! The HTTP side is hyper's client connection, one per reader, polled by
//! the reader's own task together with the body: no task of its own.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use tokio::net::TcpStream;

/// Bytes hyper reads from the socket at a time. Small, like the WebSocket
/// clients' read buffer: thousands of readers each hold one. A burst of
/// events takes a few reads more.
const READ_BUFFER: usize = 2048;

/// One reader's `text/event-stream` response, read as it arrives.
pub(crate) struct EventStream {
    /// Kept: dropping it would make hyper close the connection's write side,
    /// which the server takes for the client leaving.
    _requests: SendRequest<Empty<Bytes>>,
    /// Drives the socket; `None` once it finished, the body's end included.
    connection: Option<Connection<TokioIo<TcpStream>, Empty<Bytes>>>,
    body: Incoming,
    parser: Parser,
}

/// What polling the connection and the body together gave.
enum Polled {
    Body(Option<Result<Frame<Bytes>, hyper::Error>>),
    ConnectionDone(hyper::Result<()>),
}

impl EventStream {
    /// Sends `GET path` for `authority` over `socket`; fails unless the
    /// answer is a 200 `text/event-stream`.
    pub(crate) async fn open(
        socket: TcpStream,
        authority: &str,
        path: &str,
    ) -> Result<EventStream, String> {
        let (mut requests, mut connection) = http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUFFER))
            .handshake(TokioIo::new(socket))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        let request = Request::get(path)
            .header(HOST, authority)
            .header(ACCEPT, "text/event-stream")
            .body(Empty::new())
            .map_err(|e| format!("GET {path}: {e}"))?;
        // The connection writes the request and reads the answer: poll it
        // until the response head is in.
        let response = tokio::select! {
            response = requests.send_request(request) => {
                response.map_err(|e| format!("GET {path}: {e}"))?
            }
            done = &mut connection => {
                return Err(format!("GET {path}: connection ended before the response: {done:?}"));
            }
        };
        let kind = response.headers().get(CONTENT_TYPE);
        if response.status() != StatusCode::OK
            || kind.is_none_or(|kind| !kind.as_bytes().starts_with(b"text/event-stream"))
        {
            return Err(format!("GET {path}: {} {kind:?}", response.status()));
        }
        Ok(EventStream {
            _requests: requests,
            connection: Some(connection),
            body: response.into_body(),
            parser: Parser::default(),
        })
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

    /// The next item of the stream; `None` once it ended, an error if it
    /// broke or is not an event stream.
    pub(crate) async fn next(&mut self) -> Option<Result<Item, String>> {
        loop {
            if let Some(item) = self.parser.next() {
                return Some(Ok(item));
            }
            let data = match self.data().await? {
                Ok(data) => data,
                Err(e) => return Some(Err(e)),
            };
            if let Err(e) = self.parser.feed(&data) {
                return Some(Err(e));
            }
        }
    }

    /// The next piece of the body, polling the connection meanwhile.
    async fn data(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            let polled = match &mut self.connection {
                Some(connection) => tokio::select! {
                    frame = self.body.frame() => Polled::Body(frame),
                    done = connection => Polled::ConnectionDone(done),
                },
                None => Polled::Body(self.body.frame().await),
            };
            match polled {
                Polled::Body(None) => return None,
                Polled::Body(Some(Err(e))) => return Some(Err(format!("event stream: {e}"))),
                Polled::Body(Some(Ok(frame))) => {
                    // Trailers carry no events.
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                // What it read is in the body already, for the next loop.
                Polled::ConnectionDone(Ok(())) => self.connection = None,
                Polled::ConnectionDone(Err(e)) => {
                    return Some(Err(format!("event stream connection: {e}")))
                }
            }
        }
    }
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

    /// Answers one request on a local port with `head`, then `body` in
    /// HTTP chunks of `chunk` bytes, each written on its own, then the last
    /// chunk. Returns the port's address.
    async fn serve_once(head: &'static str, body: &'static str, chunk: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 1024];
            let _ = socket.read(&mut request).await.unwrap();
            socket.write_all(head.as_bytes()).await.unwrap();
            for piece in body.as_bytes().chunks(chunk) {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                socket.write_all(&framed).await.unwrap();
                socket.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            socket.write_all(b"0\r\n\r\n").await.unwrap();
        });
        addr
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
    }
}
