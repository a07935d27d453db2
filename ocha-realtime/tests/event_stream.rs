//! Server-Sent Events connections of a hub, over real sockets: a client
//! that stops reading is closed as a slow consumer without holding up the
//! others, channels and sends reach SSE clients as WebSocket ones, and
//! idle streams get heartbeats.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{Admission, Config, EventId, Frame, HandshakeError, Hub};
use support::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `hub`'s event streams on `/` (`/?channel=NAME` joins a channel).
async fn serve(hub: Hub) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // Without the send buffer cap, a stalled client hides events in
            // megabytes of kernel buffer before it is found slow.
            hub.tune(&stream);
            let hub = hub.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let admission = match request
                    .uri()
                    .query()
                    .and_then(|q| q.strip_prefix("channel="))
                {
                    Some(channel) => Admission::anonymous().channel(channel),
                    None => Admission::anonymous(),
                };
                let response = match hub.event_stream(&request, admission) {
                    Ok(stream) => stream.map(Either::Left),
                    Err(refused) => refused.into_response().map(Either::Right),
                };
                async move { Ok::<Response<Either<_, Full<Bytes>>>, Infallible>(response) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    addr
}

/// Opens a stream and returns the socket once the response head and the
/// welcome have arrived.
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

#[tokio::test]
async fn a_stream_that_is_not_read_is_dropped_and_the_others_carry_on() {
    let hub = Hub::new(
        Config::default()
            .outbound_capacity(8)
            .send_buffer_size(Some(4096)),
    );
    let addr = serve(hub.clone()).await;
    let _stalled = open(addr, "/").await;
    let mut reader = open(addr, "/").await;
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
    assert_eq!(hub.publish(&Frame::text("after")), 1);
    read_until(&mut reader, "data: after\n\n").await;
}

#[tokio::test]
async fn channels_and_sends_reach_streams_and_binary_frames_are_left_out() {
    let hub = Hub::default();
    let addr = serve(hub.clone()).await;
    let mut member = open(addr, "/?channel=room").await;
    let mut other = open(addr, "/").await;
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
    let refused = hub.event_stream(
        &Request::post("/").body(()).unwrap(),
        Admission::anonymous(),
    );
    assert_eq!(refused.unwrap_err(), HandshakeError::Method);
}

#[tokio::test]
async fn idle_streams_get_heartbeats_from_the_hub() {
    let hub = Hub::new(Config::default().sse_heartbeat_interval(Duration::from_millis(50)));
    let addr = serve(hub.clone()).await;
    let mut stream = open(addr, "/").await;
    // Comment lines, each a chunk of its own.
    read_until(&mut stream, "2\r\n:\n\r\n2\r\n:\n\r\n").await;
}
