//! Server-Sent Events on `GET /api/v1/events`, through the real binary:
//! the same events as the WebSocket, ids, resume by `Last-Event-ID` or
//! `?since=`, heartbeats, limits and shutdown; and, seen from a raw socket,
//! the bytes of the stream, which leaves hyper once its head is out.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn create_on(addr: std::net::SocketAddr, n: u32) -> Reply {
    let reply = post_product(addr, Some(&admin_token()), &product_body(n)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply
}

#[tokio::test]
async fn the_stream_carries_the_websocket_events_with_their_ids() {
    let dir = TempDir::new("sse");
    let (mut server, addr) = start_binary(&dir).await;
    let mut sse = SseClient::open(addr, "/api/v1/events", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    // A comment for a welcome, and the position, which sets the client's
    // last event id without an event.
    assert_eq!(
        sse.next_block().await.unwrap(),
        ": {\"message\":\"Connecté au WebSocket\"}\nid: 0"
    );
    let mut ws = ws_connect(addr).await;
    create_on(addr, 1).await;
    let over_websocket = next_text(&mut ws).await;
    assert_eq!(
        sse.next_block().await.unwrap(),
        format!("id: 1\ndata: {over_websocket}")
    );
    drop((sse, ws));
    stop_binary(&mut server).await;
}

#[tokio::test]
async fn a_reconnecting_client_resumes_by_last_event_id_or_since() {
    let dir = TempDir::new("sse-resume");
    let mut command = server_command(&dir);
    command.env("EVENT_HISTORY", "2");
    let (mut server, addr, _) = start(&mut command).await;
    for n in 1..=3 {
        create_on(addr, n).await;
    }
    let mut resumed = SseClient::open(addr, "/api/v1/events", &[("last-event-id", "1")]).await;
    assert_eq!(resumed.next_event().await.1.as_deref(), Some("2"));
    assert_eq!(resumed.next_event().await.1.as_deref(), Some("3"));
    let mut by_query = SseClient::open(addr, "/api/v1/events?since=2", &[]).await;
    assert_eq!(by_query.next_event().await.1.as_deref(), Some("3"));
    for stale in ["0", "nope", "9"] {
        let mut old = SseClient::open(addr, "/api/v1/events", &[("last-event-id", stale)]).await;
        assert_eq!(
            old.next_event().await,
            (r#"{"type":"resync"}"#.to_owned(), None),
            "{stale}"
        );
    }
    create_on(addr, 4).await;
    let (event, id) = resumed.next_event().await;
    assert_eq!(
        (event_product_name(&event), id.as_deref()),
        ("Matcha Latte 4".into(), Some("4"))
    );
    drop((resumed, by_query));
    stop_binary(&mut server).await;
}

#[tokio::test]
async fn idle_streams_get_heartbeats_and_shutdown_ends_them_cleanly() {
    let dir = TempDir::new("sse-heartbeat");
    let mut command = server_command(&dir);
    command.env("SSE_HEARTBEAT_SECS", "1");
    let (mut server, addr, _) = start(&mut command).await;
    let mut sse = SseClient::open(addr, "/api/v1/events", &[]).await;
    sse.next_block().await.unwrap();
    let started = std::time::Instant::now();
    // Comment lines only, about one a second.
    assert_eq!(sse.up_to(":\n:\n").await.unwrap(), ":\n:\n");
    let elapsed = started.elapsed();
    assert!(
        (std::time::Duration::from_millis(1500)..std::time::Duration::from_secs(4))
            .contains(&elapsed),
        "two heartbeats took {elapsed:?}"
    );
    drop(sse);

    let mut sse = SseClient::open(addr, "/api/v1/events", &[]).await;
    sse.next_block().await.unwrap();
    sigterm(&server);
    assert_eq!(
        sse.next_block().await,
        None,
        "the chunked body ends properly"
    );
    assert_eq!(exit_status(&mut server).await.code(), Some(0));
}

#[tokio::test]
async fn streams_count_against_the_connection_cap_and_the_origin_allow_list() {
    let dir = TempDir::new("sse-limits");
    let mut command = server_command(&dir);
    command
        .env("WS_MAX_CONNECTIONS", "1")
        .env("WS_ALLOWED_ORIGINS", "https://shop.example");
    let (mut server, addr, _) = start(&mut command).await;
    let refused = SseClient::open(
        addr,
        "/api/v1/events",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused.status, 403);
    let sse = SseClient::open(
        addr,
        "/api/v1/events",
        &[("origin", "https://shop.example")],
    )
    .await;
    assert_eq!(sse.status, 200);
    let full = SseClient::open(addr, "/api/v1/events", &[]).await;
    assert_eq!(full.status, 503);
    match tokio_tungstenite::connect_async(format!("ws://{addr}/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(refusal)) => {
            assert_eq!(refusal.status(), 503, "WebSockets share the cap");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    drop(sse);
    stop_binary(&mut server).await;
}

#[tokio::test]
async fn event_streams_leave_the_http_connection_count_as_websockets_do() {
    let dir = TempDir::new("sse-http-limit");
    let mut command = server_command(&dir);
    command.env("MAX_HTTP_CONNECTIONS", "2");
    let (mut server, addr, _) = start(&mut command).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut sse = SseClient::open(addr, "/api/v1/events", &[]).await;
        sse.next_block().await.unwrap();
        streams.push(sse);
    }
    // Four streams open, and room for requests all the same.
    assert_healthy(addr).await;
    create_on(addr, 1).await;
    for sse in &mut streams {
        assert_eq!(sse.next_event().await.1.as_deref(), Some("1"));
    }
    drop(streams);
    stop_binary(&mut server).await;
}

/// A client on a raw socket, which sees the bytes the server writes.
struct Raw {
    socket: TcpStream,
    /// Read and not yet consumed.
    received: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw::over(TcpStream::connect(addr).await.expect("connect"))
    }

    fn over(socket: TcpStream) -> Raw {
        Raw {
            socket,
            received: Vec::new(),
        }
    }

    async fn send(&mut self, request: &str) {
        self.socket.write_all(request.as_bytes()).await.unwrap();
    }

    /// Asks for the event stream.
    async fn open_stream(&mut self) {
        self.send("GET /api/v1/events HTTP/1.1\r\nhost: ocha\r\naccept: text/event-stream\r\n\r\n")
            .await;
    }

    /// The next `len` bytes.
    async fn exactly(&mut self, len: usize) -> Vec<u8> {
        while self.received.len() < len {
            let mut chunk = [0; 4096];
            let read = tokio::time::timeout(PATIENCE, self.socket.read(&mut chunk))
                .await
                .expect("more bytes in time")
                .expect("a readable socket");
            assert_ne!(
                read,
                0,
                "closed after {:?}",
                String::from_utf8_lossy(&self.received)
            );
            self.received.extend_from_slice(&chunk[..read]);
        }
        self.received.drain(..len).collect()
    }

    /// Everything up to and including the next `needle`.
    async fn through(&mut self, needle: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        while !seen.ends_with(needle) {
            seen.extend(self.exactly(1).await);
        }
        seen
    }

    /// A response head, without its `date` line (which it must have).
    async fn head(&mut self) -> String {
        let head = String::from_utf8(self.through(b"\r\n\r\n").await).unwrap();
        let lines: Vec<&str> = head
            .split_inclusive("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect();
        assert_eq!(
            lines.len() + 1,
            head.split_inclusive("\r\n").count(),
            "{head}"
        );
        lines.concat()
    }

    /// The data of the next chunk, checking its framing: an uppercase hex
    /// size, as hyper writes it.
    async fn chunk(&mut self) -> String {
        let size = String::from_utf8(self.through(b"\r\n").await).unwrap();
        let len = usize::from_str_radix(size.trim_end(), 16).expect("a hex chunk size");
        assert_eq!(size, format!("{len:X}\r\n"));
        let chunk = self.exactly(len + 2).await;
        assert!(chunk.ends_with(b"\r\n"), "{chunk:?}");
        String::from_utf8(chunk[..len].to_vec()).unwrap()
    }

    /// Everything until the server closes the connection.
    async fn rest(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.received);
        tokio::time::timeout(PATIENCE, self.socket.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection in time")
            .expect("a clean close");
        rest
    }
}

/// The first chunk of every stream: the welcome as a comment, and the
/// position.
const WELCOME_CHUNK: &[u8] =
    "2E\r\n: {\"message\":\"Connecté au WebSocket\"}\nid: 0\n\n\r\n".as_bytes();

#[tokio::test]
async fn a_raw_client_gets_the_stream_byte_for_byte_after_a_request_on_the_same_connection() {
    let dir = TempDir::new("sse-bytes");
    let mut command = server_command(&dir);
    command.env("CORS_ORIGINS", "https://shop.example");
    let (mut server, addr, _) = start(&mut command).await;
    let mut ws = ws_connect(addr).await;
    let mut raw = Raw::connect(addr).await;
    raw.send("GET /api/v1/health HTTP/1.1\r\nhost: ocha\r\n\r\n")
        .await;
    assert_eq!(
        raw.head().await,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\nvary: Origin\r\n\
         content-length: 9\r\n\r\n"
    );
    assert_eq!(raw.exactly(9).await, b"Ignition!");

    // The same connection, kept alive, becomes the stream.
    raw.send(
        "GET /api/v1/events HTTP/1.1\r\nhost: ocha\r\naccept: text/event-stream\r\n\
         origin: https://shop.example\r\n\r\n",
    )
    .await;
    assert_eq!(
        raw.head().await,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nvary: Origin\r\naccess-control-allow-origin: https://shop.example\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(raw.exactly(WELCOME_CHUNK.len()).await, WELCOME_CHUNK);
    for n in 1..=2 {
        create_on(addr, n).await;
        let event = next_text(&mut ws).await;
        assert_eq!(raw.chunk().await, format!("id: {n}\ndata: {event}\n\n"));
    }

    // Shutdown ends the body with its last chunk, then the connection.
    sigterm(&server);
    assert_eq!(raw.rest().await, b"0\r\n\r\n");
    assert_eq!(exit_status(&mut server).await.code(), Some(0));
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_cut_short_as_slow_while_the_others_carry_on() {
    let dir = TempDir::new("sse-slow");
    let mut command = server_command(&dir);
    command
        .env("WS_OUTBOUND_CAPACITY", "4")
        .env("WS_SEND_BUFFER_BYTES", "4096");
    let (mut server, addr, _) = start(&mut command).await;
    // Small kernel buffers on both sides, so that the outbox soon fills.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = Raw::over(socket.connect(addr).await.unwrap());
    stalled.open_stream().await;
    stalled.head().await;
    assert_eq!(stalled.exactly(WELCOME_CHUNK.len()).await, WELCOME_CHUNK);
    let mut reader = SseClient::open(addr, "/api/v1/events", &[]).await;

    const PRODUCTS: u32 = 40;
    for n in 1..=PRODUCTS {
        let mut body = product_body(n);
        body["description"] = json!("x".repeat(5000));
        let reply = post_product(addr, Some(&admin_token()), &body).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        assert_eq!(reader.next_event().await.1, Some(n.to_string()));
    }

    // The stalled client finds, once it reads, some events and then the
    // end of the connection, without the body's last chunk: its
    // EventSource reconnects and resumes.
    let rest = stalled.rest().await;
    assert!(!rest.ends_with(b"0\r\n\r\n"), "the body ended properly");
    let received = String::from_utf8_lossy(&rest);
    assert!(
        !received.contains(&format!("id: {PRODUCTS}\n")),
        "the stalled client got every event"
    );
    drop(reader);
    stop_binary(&mut server).await;
}

/// An idle stream costs the server a few hundred bytes, not the 16 KiB of
/// buffers hyper keeps for a connection it serves.
#[tokio::test]
async fn idle_streams_hold_little_memory() {
    const STREAMS: usize = 400;
    let dir = TempDir::new("sse-memory");
    let (mut server, addr) = start_binary(&dir).await;
    let open = |count| async move {
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let mut raw = Raw::connect(addr).await;
            raw.open_stream().await;
            raw.head().await;
            assert_eq!(raw.exactly(WELCOME_CHUNK.len()).await, WELCOME_CHUNK);
            streams.push(raw);
        }
        streams
    };
    // Warm-up: the baseline includes what the first streams grow for good
    // (the runtime's, the allocator's), and little that later ones reuse.
    drop(open(16).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proc_status_kb(&server, "VmRSS");
    let streams = open(STREAMS).await;
    let mut during = proc_status_kb(&server, "VmRSS");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = proc_status_kb(&server, "VmRSS");
        if now <= during {
            break;
        }
        during = now;
    }
    let per_stream = during.saturating_sub(before) as f64 * 1024.0 / STREAMS as f64;
    eprintln!(
        "{STREAMS} idle streams: RSS {before} kB -> {during} kB ({per_stream:.0} bytes each)"
    );
    assert!(
        per_stream < 4096.0,
        "each idle stream holds {per_stream:.0} bytes"
    );
    drop(streams);
    stop_binary(&mut server).await;
}
