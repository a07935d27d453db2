//! A hyper server embedding a hub, and clients for it, over real sockets.
#![allow(dead_code)] // each test file uses its own part of this module

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{Either, Empty, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{Admission, Config, Frame, Handoff, HandoffIo, HandshakeError, Hub};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Serves `hub` on a free port, as [`serve`] does, with a hub of your own
/// (with a message handler or a presence callback, say).
pub async fn serve_hub(hub: Hub) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(accept_loop(listener, hub));
    addr
}

/// Serves `hub` on a free port: WebSocket upgrades on `/` (with hyper's
/// `Incoming` body) and on `/mapped` (with the body replaced, as a framework
/// would), and a plain route on `/health`. `/?since=ID` resumes after `ID`;
/// `/?channel=NAME&since=ID` joins `NAME` and resumes its events after `ID`;
/// `/?peer=IP` admits the client as coming from `IP`, as a proxy would
/// report it.
pub async fn serve(config: Config) -> (Hub, SocketAddr) {
    let hub = Hub::new(config);
    let addr = serve_hub(hub.clone()).await;
    (hub, addr)
}

async fn accept_loop(listener: TcpListener, hub: Hub) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let hub = hub.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            // `/?since=ID` resumes, `&channel=NAME` in a channel instead;
            // ids and names here need no decoding.
            let param = |name: &str| {
                request.uri().query().and_then(|query| {
                    query
                        .split('&')
                        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_owned)
                })
            };
            let (since, channel, peer) = (param("since"), param("channel"), param("peer"));
            let response = match request.uri().path() {
                "/" => {
                    let mut admission = match (since, channel) {
                        (Some(since), Some(channel)) => {
                            Admission::anonymous().channel_since(channel, &since)
                        }
                        (Some(since), None) => Admission::anonymous().since(&since),
                        (None, _) => Admission::anonymous(),
                    };
                    if let Some(peer) = peer {
                        admission = admission.peer(peer.parse().expect("an IP address"));
                    }
                    hub.upgrade_with(request, admission)
                }
                "/mapped" => hub.upgrade(request.map(|_| Empty::<Bytes>::new())),
                _ => Ok(Response::new(Full::new(Bytes::from("ok")))),
            };
            let response = response.unwrap_or_else(HandshakeError::into_response);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(connection);
    }
}

/// How [`serve_events`] serves its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// As any hyper server does: hyper pulls each event stream's body.
    Tokio,
    /// Over [`HandoffIo`]: event streams take their socket from hyper.
    Handoff,
}

/// Serves `hub`'s event streams on `/events` (`/events?channel=NAME`
/// joins a channel), WebSocket upgrades on `/`, and `ok` on any other
/// path, over `io`.
pub async fn serve_events(hub: Hub, io: Io) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // Without the send buffer cap, a stalled client hides events in
            // megabytes of kernel buffer before it is found slow.
            hub.tune(&stream);
            match io {
                Io::Tokio => serve_events_on(TokioIo::new(stream), hub.clone(), None),
                Io::Handoff => {
                    let stream = HandoffIo::new(stream);
                    let handoff = stream.handoff();
                    serve_events_on(stream, hub.clone(), Some(handoff));
                }
            }
        }
    });
    addr
}

/// Serves one connection for [`serve_events`], offering its socket to
/// event streams through `handoff` if given.
fn serve_events_on<IO>(io: IO, hub: Hub, handoff: Option<Handoff>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request: Request<Incoming>| {
        if let Some(handoff) = &handoff {
            request.extensions_mut().insert(handoff.clone());
        }
        let refused = |refused: HandshakeError| refused.into_response().map(Either::Right);
        let response = match request.uri().path() {
            "/events" => {
                let admission = match request.uri().query() {
                    Some(query) => Admission::anonymous()
                        .channel(query.strip_prefix("channel=").expect("a channel")),
                    None => Admission::anonymous(),
                };
                match hub.event_stream(&request, admission) {
                    Ok(stream) => stream.map(Either::Left),
                    Err(refusal) => refused(refusal),
                }
            }
            "/" => hub
                .upgrade(request)
                .map_or_else(refused, |switching| switching.map(Either::Right)),
            _ => Response::new(Either::Right(Full::new(Bytes::from("ok")))),
        };
        async move { Ok::<_, Infallible>(response) }
    });
    tokio::spawn(
        http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades(),
    );
}

/// An axum handler that hands the request to the hub as it is.
pub async fn axum_upgrade(
    axum::extract::State(hub): axum::extract::State<Hub>,
    request: axum::extract::Request,
) -> Response<Full<Bytes>> {
    hub.upgrade(request)
        .unwrap_or_else(HandshakeError::into_response)
}

/// A client of `hub` over an in-process pipe of `buffer` bytes each way,
/// served by [`Hub::serve`]: no sockets, so tests can run on a paused clock.
pub async fn duplex_client(hub: &Hub, buffer: usize) -> WebSocketStream<DuplexStream> {
    WebSocketStream::from_raw_socket(duplex_raw(hub, buffer), Role::Client, None).await
}

/// The client end of a pipe to a connection of `hub`, for clients that
/// read and write raw bytes.
pub fn duplex_raw(hub: &Hub, buffer: usize) -> DuplexStream {
    let (client, server) = tokio::io::duplex(buffer);
    let hub = hub.clone();
    tokio::spawn(async move { hub.serve(server, Admission::anonymous()).await });
    client
}

/// A frame as a client sends it: masked.
pub fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![first_byte];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=65535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads from `stream` until `bytes` appears, failing after five seconds
/// or if the stream ends first.
pub async fn read_until(stream: &mut (impl AsyncRead + Unpin), bytes: &[u8]) {
    let mut received = Vec::new();
    while !received.windows(bytes.len()).any(|w| w == bytes) {
        let mut chunk = [0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {bytes:x?} within 5 s"))
            .unwrap();
        assert_ne!(n, 0, "the stream ended before {bytes:x?}");
        received.extend_from_slice(&chunk[..n]);
    }
}

/// Reads and discards until the peer hangs up, failing after `patience`.
pub async fn read_to_end(stream: &mut (impl AsyncRead + Unpin), patience: Duration) {
    let mut sink = [0; 4096];
    let drained = async { while !matches!(stream.read(&mut sink).await, Ok(0) | Err(_)) {} };
    tokio::time::timeout(patience, drained)
        .await
        .expect("the peer hung up in time");
}

/// Connects a client to `path` and checks that its first frame is `welcome`.
pub async fn connect(addr: SocketAddr, path: &str, welcome: &str) -> Client {
    let (mut client, response) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(next_text(&mut client).await, welcome);
    client
}

/// The next text frame, failing on anything else or after five seconds.
pub async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut WebSocketStream<S>,
) -> String {
    match next(client).await {
        Message::Text(text) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The next message, failing after five seconds.
pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(client: &mut WebSocketStream<S>) -> Message {
    tokio::time::timeout(Duration::from_secs(5), client.next())
        .await
        .expect("no message within 5 s")
        .expect("stream ended")
        .expect("read failed")
}

/// Asserts that nothing arrives for a while.
pub async fn assert_quiet(client: &mut Client) {
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(200), client.next()).await {
        panic!("expected nothing, got {message:?}");
    }
}

/// A `new_product` event as JSON text, for a product named `name` with a
/// description of `description_len` bytes.
pub fn product_json(name: &str, description_len: usize) -> String {
    serde_json::json!({
        "type": "new_product",
        "product": {"name": name, "description": "d".repeat(description_len)},
    })
    .to_string()
}

/// The same event, framed to publish.
pub fn product(name: &str, description_len: usize) -> Frame {
    Frame::text(&product_json(name, description_len))
}

/// The name of the product in a `new_product` frame.
pub fn product_name(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(value["type"], "new_product");
    value["product"]["name"].as_str().unwrap().to_owned()
}

/// Sends a raw HTTP request and returns the response as text.
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    String::from_utf8_lossy(&raw_exchange(addr, request).await).into_owned()
}

/// Sends a raw HTTP request and returns the first bytes that come back.
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .expect("no response within 5 s")
        .unwrap();
    response.truncate(n);
    response
}

/// A raw client that completes the handshake and then neither reads nor
/// answers anything.
pub async fn connect_mute(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(upgrade_request("").as_bytes())
        .await
        .unwrap();
    stream
}

/// A well-formed upgrade request with `extra` header lines appended.
pub fn upgrade_request(extra: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Polls `condition` until it holds, failing after five seconds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
