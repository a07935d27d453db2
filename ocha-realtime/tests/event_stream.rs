//! Server-Sent Events connections of a hub, over real sockets, pulled by
//! hyper or handed their socket (`HandoffIo`): the same bytes either
//! way; a client that stops reading is closed as a slow consumer without
//! holding up the others; channels and sends reach SSE clients as
//! WebSocket ones; heartbeats; shutdown ends streams with the body's last
//! chunk.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use hyper::Request;
use ocha_realtime::{Admission, Config, EventId, Frame, HandshakeError, Hub, OCHA_WELCOME};
use support::{eventually, serve_events, Io};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const STREAM_REQUEST: &str =
    "GET /events HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n";

/// Opens a stream at `path` and returns the socket once the response head
/// and the welcome have arrived.
async fn open(addr: SocketAddr, path: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    read_until(&mut socket, "id: 0\n\n").await;
    socket
}

/// Reads until `needle` has arrived; returns all that was read.
async fn read_until(socket: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let mut chunk = [0; 4096];
            let read = socket.read(&mut chunk).await.unwrap();
            assert_ne!(read, 0, "the stream ended before {needle:?}");
            seen.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no {needle:?} in time; got {:?}",
            String::from_utf8_lossy(&seen)
        )
    });
    String::from_utf8(seen).unwrap()
}

/// Reads until the server hangs up; returns all that was read.
async fn read_to_close(socket: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest))
        .await
        .expect("the server hangs up in time")
        .expect("a clean close");
    rest
}

#[tokio::test]
async fn streams_handed_their_socket_send_the_bytes_hyper_would() {
    let mut transcripts = Vec::new();
    for io in [Io::Tokio, Io::Handoff] {
        let hub = Hub::default();
        let addr = serve_events(hub.clone(), io).await;
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // A plain request first: the connection then becomes the stream.
        socket
            .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut socket, "\r\n\r\nok").await;
        socket.write_all(STREAM_REQUEST.as_bytes()).await.unwrap();
        let mut transcript = read_until(&mut socket, "id: 0\n\n\r\n").await;
        hub.publish_event(EventId::new(1), &Frame::text(r#"{"n":1}"#));
        transcript += &read_until(&mut socket, "\n\n\r\n").await;
        hub.publish(&Frame::text(&"x".repeat(300)));
        transcript += &read_until(&mut socket, "\n\n\r\n").await;
        // Shutdown sends the body's last chunk.
        hub.shutdown(Duration::from_secs(1)).await;
        transcript += &read_until(&mut socket, "0\r\n\r\n").await;
        if io == Io::Handoff {
            // And the connection, no longer hyper's, ends with the stream.
            assert_eq!(read_to_close(&mut socket).await, b"");
        }
        let date = transcript.find("date: ").expect("a date header");
        transcript.replace_range(
            date..date + transcript[date..].find("\r\n").unwrap(),
            "date",
        );
        transcripts.push(transcript);
    }
    let welcome = format!(": {OCHA_WELCOME}\nid: 0\n\n");
    let expected = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\ndate\r\n\r\n\
         {:X}\r\n{welcome}\r\n15\r\nid: 1\ndata: {{\"n\":1}}\n\n\r\n\
         134\r\ndata: {}\n\n\r\n0\r\n\r\n",
        welcome.len(),
        "x".repeat(300)
    );
    assert_eq!(transcripts, [expected.clone(), expected]);
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_dropped_and_the_others_carry_on() {
    for io in [Io::Tokio, Io::Handoff] {
        let hub = Hub::new(
            Config::default()
                .outbound_capacity(8)
                .send_buffer_size(Some(4096)),
        );
        let addr = serve_events(hub.clone(), io).await;
        let mut stalled = open(addr, "/events").await;
        let mut reader = open(addr, "/events").await;
        let big = "x".repeat(16 * 1024);
        for id in 1..=64 {
            let event = format!(r#"{{"n":{id},"pad":"{big}"}}"#);
            hub.publish_event(EventId::new(id), &Frame::text(&event));
            read_until(&mut reader, &format!("id: {id}\n")).await;
        }
        eventually("the stalled stream is closed as slow", || {
            hub.stats().slow_consumer_closes == 1
        })
        .await;
        // It takes nothing more; the reader still takes everything.
        assert_eq!(hub.publish(&Frame::text("after")), 1, "{io:?}");
        read_until(&mut reader, "data: after\n\n").await;
        if io == Io::Handoff {
            // Its socket is let go at once, with the body cut short: its
            // EventSource reconnects and resumes.
            let rest = read_to_close(&mut stalled).await;
            assert!(!rest.ends_with(b"0\r\n\r\n"));
            assert!(!String::from_utf8_lossy(&rest).contains("id: 64\n"));
        }
    }
}

#[tokio::test]
async fn channels_and_sends_reach_streams_and_binary_frames_are_left_out() {
    for io in [Io::Tokio, Io::Handoff] {
        let hub = Hub::default();
        let addr = serve_events(hub.clone(), io).await;
        let mut member = open(addr, "/events?channel=room").await;
        let mut other = open(addr, "/events").await;
        assert_eq!(
            hub.publish(&Frame::binary(b"\x00")),
            0,
            "SSE cannot carry binary"
        );
        assert_eq!(hub.publish_to("room", &Frame::text("for the room")), 1);
        read_until(&mut member, "data: for the room\n\n").await;
        assert_eq!(hub.publish(&Frame::text("line one\nline two")), 2);
        for stream in [&mut member, &mut other] {
            read_until(stream, "data: line one\ndata: line two\n\n").await;
        }
    }
    let refused = Hub::default().event_stream(
        &Request::post("/").body(()).unwrap(),
        Admission::anonymous(),
    );
    assert_eq!(refused.unwrap_err(), HandshakeError::Method);
}

#[tokio::test]
async fn idle_streams_get_heartbeats_from_the_hub() {
    for io in [Io::Tokio, Io::Handoff] {
        let hub = Hub::new(Config::default().sse_heartbeat_interval(Duration::from_millis(50)));
        let addr = serve_events(hub.clone(), io).await;
        let mut stream = open(addr, "/events").await;
        // Comment lines, each a chunk of its own.
        read_until(&mut stream, "2\r\n:\n\r\n2\r\n:\n\r\n").await;
    }
}

#[tokio::test]
async fn websocket_upgrades_still_work_over_a_handoff_io() {
    let hub = Hub::default();
    let addr = serve_events(hub.clone(), Io::Handoff).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut socket, "\r\n\r\nok").await;
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), socket)
        .await
        .expect("a WebSocket handshake");
    let text = |message: Option<Result<Message, _>>| match message {
        Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
        other => panic!("expected a text message, got {other:?}"),
    };
    assert_eq!(text(client.next().await), OCHA_WELCOME);
    assert_eq!(hub.publish(&Frame::text("hello")), 1);
    assert_eq!(text(client.next().await), "hello");
}
