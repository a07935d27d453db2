//! The real binary under abuse: too many connections, a process out of
//! descriptors; and well-behaved clients served all the while.

#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A health check, as a well-behaved client sends it.
const HEALTH: &str = "GET /api/v1/health HTTP/1.1\r\nhost: ocha\r\n\r\n";

/// A response read off a raw socket.
#[derive(Debug)]
struct RawReply {
    head: String,
    body: String,
}

impl RawReply {
    fn status(&self) -> u16 {
        self.head[9..12].parse().expect("a status code")
    }
}

/// Reads one response (head and `content-length` body) off `stream`.
async fn read_reply(stream: &mut TcpStream) -> RawReply {
    let mut received = Vec::new();
    let read = async {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(received[..end].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .map_or(0, |length| length.parse().unwrap());
                if received.len() >= end + 4 + length {
                    let body = String::from_utf8(received[end + 4..end + 4 + length].to_vec());
                    return RawReply {
                        head,
                        body: body.unwrap(),
                    };
                }
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert_ne!(n, 0, "the connection closed before a whole response");
            received.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a response in time")
}

/// Asserts that nothing arrives on `stream` for [`QUIET`].
async fn assert_no_reply(stream: &mut TcpStream) {
    let mut byte = [0];
    if let Ok(read) = tokio::time::timeout(QUIET, stream.read(&mut byte)).await {
        panic!("expected no reply, got {read:?}");
    }
}

/// A raw connection to `addr` that has sent `bytes`.
async fn sent(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    stream
}

/// A health check on an open connection, answered 200.
async fn assert_served(stream: &mut TcpStream) {
    stream.write_all(HEALTH.as_bytes()).await.unwrap();
    let reply = read_reply(stream).await;
    assert_eq!((reply.status(), reply.body.as_str()), (200, "Ignition!"));
}

#[tokio::test]
async fn past_max_http_connections_new_connections_wait_and_existing_ones_are_served() {
    let dir = TempDir::new("max-http-connections");
    let (mut child, addr, _) = start(
        server_command(&dir)
            .env("MAX_HTTP_CONNECTIONS", "3")
            .env("HEADER_TIMEOUT_SECS", "60"),
    )
    .await;

    // An upgraded WebSocket leaves the count.
    let mut ws = ws_connect(addr).await;
    let mut keep_alive = TcpStream::connect(addr).await.unwrap();
    assert_served(&mut keep_alive).await;
    let first_idle = TcpStream::connect(addr).await.unwrap();
    let _second_idle = TcpStream::connect(addr).await.unwrap();

    // The kernel completes the connection, but the server does not take it.
    let mut waiting = sent(addr, HEALTH.as_bytes()).await;
    assert_no_reply(&mut waiting).await;
    // Connections already in are served as before, WebSockets included.
    assert_served(&mut keep_alive).await;
    let created = create_product_over(&mut keep_alive, 1).await;
    assert_eq!(created.status(), 201);
    assert_eq!(
        event_product_name(&next_text(&mut ws).await),
        "Matcha Latte 1"
    );

    // A connection ending lets the waiting one in.
    drop(first_idle);
    let reply = read_reply(&mut waiting).await;
    assert_eq!((reply.status(), reply.body.as_str()), (200, "Ignition!"));

    drop(ws);
    stop_binary(&mut child).await;
}

/// Creates product `n` over an open connection.
async fn create_product_over(stream: &mut TcpStream, n: u32) -> RawReply {
    let body = product_body(n).to_string();
    let request = format!(
        "POST /api/v1/products HTTP/1.1\r\nhost: ocha\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        admin_token(),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_reply(stream).await
}

#[tokio::test]
async fn out_of_descriptors_the_server_logs_once_backs_off_and_recovers() {
    use rustix::process::{prlimit, Pid, Resource, Rlimit};

    let dir = TempDir::new("out-of-descriptors");
    let (mut child, addr, mut log) = start(
        server_command(&dir)
            .env("MAX_HTTP_CONNECTIONS", "1000")
            .env("HEADER_TIMEOUT_SECS", "60"),
    )
    .await;
    let mut keep_alive = TcpStream::connect(addr).await.unwrap();
    assert_served(&mut keep_alive).await;

    // Room for a few more descriptors only.
    let pid = child.id().expect("the server is running");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = Some(open + 8);
    let pid = Pid::from_raw(pid as i32).expect("a process id");
    let new = Rlimit {
        current: limit,
        maximum: limit,
    };
    prlimit(Some(pid), Resource::Nofile, new).expect("lower the server's open-file limit");

    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut waiting = sent(addr, HEALTH.as_bytes()).await;
    let warned = log.line("cannot accept connections").await;
    assert!(warned.contains("Too many open files"), "{warned}");
    // Failing for a while: each retry waits longer, and says nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_no_reply(&mut waiting).await;
    // A client already connected needs no new descriptor, and is served.
    assert_served(&mut keep_alive).await;

    // Descriptors free up: everything waiting is taken in, within a second.
    drop(idle);
    let reply = read_reply(&mut waiting).await;
    assert_eq!(reply.status(), 200);
    let lines = log.lines_until("accepting connections again").await;
    let recovered = lines.last().unwrap();
    let failures: u32 = recovered
        .split_whitespace()
        .find_map(|field| field.strip_prefix("failures="))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no failures= in {recovered}"));
    // About 10 ms, doubled to a second: some eight retries in two seconds,
    // not two hundred.
    assert!((3..=20).contains(&failures), "{recovered}");
    // The one line when it began was all until then.
    let failure_lines: Vec<_> = lines
        .iter()
        .filter(|line| line.contains("cannot accept connections"))
        .collect();
    assert!(failure_lines.is_empty(), "{failure_lines:#?}");
    assert_healthy(addr).await;

    stop_binary(&mut child).await;
}
