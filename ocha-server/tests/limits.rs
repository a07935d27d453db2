//! The real binary under abuse: raw sockets that send slowly, too much or
//! nothing at all, too many connections, a process out of descriptors; and
//! well-behaved clients served all the while.

#![cfg(target_os = "linux")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::MaybeTlsStream;

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

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
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

/// Waits until the server closes `stream`, and returns what it sent first.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection in time")
        .expect("a clean close");
    received
}

/// Sends `bytes` one at a time, 100 ms apart, until the server hangs up,
/// and returns what it answered; fails if it waited for all of them.
async fn drip(stream: &mut TcpStream, bytes: &[u8]) -> String {
    let (mut reader, mut writer) = stream.split();
    let send = async {
        for byte in bytes {
            if writer.write_all(&[*byte]).await.is_err() {
                // Hung up on: the answer is being read.
                return std::future::pending().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server waited for all of a slow message");
    };
    let answer = async {
        let mut received = Vec::new();
        let mut chunk = [0; 4096];
        // A reset after the answer (the server closing on unread bytes)
        // ends it as well as a close does.
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            received.extend_from_slice(&chunk[..n]);
        }
        received
    };
    let answered = async {
        tokio::select! {
            () = send => unreachable!(),
            answer = answer => String::from_utf8(answer).expect("a UTF-8 answer"),
        }
    };
    tokio::time::timeout(PATIENCE, answered)
        .await
        .expect("an answer in time")
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
async fn headers_must_arrive_in_time_or_get_408_and_idle_connections_are_closed() {
    let dir = TempDir::new("header-timeout");
    let (mut child, addr, _) = start(server_command(&dir).env("HEADER_TIMEOUT_SECS", "1")).await;

    // Slowloris: a head sent a byte at a time, well within any read timeout.
    let mut dripping = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    // A connection that sends nothing, and one gone idle after a request.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    assert_served(&mut idle).await;
    // A well-behaved client is served meanwhile.
    let (answer, ()) = tokio::join!(drip(&mut dripping, HEALTH.as_bytes()), assert_healthy(addr));

    let elapsed = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n{\"message\":\"Request header timed out\"}"),
        "{answer}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "answered after {elapsed:?}"
    );
    // Nothing for the others: a 408 there would answer their next request.
    assert!(read_to_close(&mut silent).await.is_empty());
    assert!(read_to_close(&mut idle).await.is_empty());

    assert_healthy(addr).await;
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn headers_over_max_header_bytes_get_431() {
    let dir = TempDir::new("header-bytes");
    let (mut child, addr) = start_binary(&dir).await;

    // Under the default 16 KiB, as a large cookie may be.
    let cookie = "c".repeat(15 * 1024);
    let mut fits = sent(
        addr,
        format!("GET /api/v1/health HTTP/1.1\r\nhost: ocha\r\ncookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(read_reply(&mut fits).await.status(), 200);

    let cookie = "c".repeat(20 * 1024);
    let mut over = sent(
        addr,
        format!("GET /api/v1/health HTTP/1.1\r\nhost: ocha\r\ncookie: {cookie}\r\n\r\n").as_bytes(),
    )
    .await;
    let answer = String::from_utf8_lossy(&read_to_close(&mut over).await).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );

    assert_healthy(addr).await;
    stop_binary(&mut child).await;
}

/// Unfinished heads cost the server at most `MAX_HEADER_BYTES` each, not
/// hyper's ~400 KB read buffer: 500 of them held about 176 MiB before.
#[tokio::test]
async fn unfinished_heads_hold_little_memory() {
    const SOCKETS: usize = 500;
    let dir = TempDir::new("header-memory");
    let (mut child, addr) = start_binary(&dir).await;
    assert_healthy(addr).await;
    let before = proc_status_kb(&child, "VmRSS");

    // Just under the limit, never finished.
    let head = format!(
        "GET /api/v1/health HTTP/1.1\r\nhost: ocha\r\ncookie: {}",
        "c".repeat(15 * 1024)
    );
    let mut held = Vec::with_capacity(SOCKETS);
    for _ in 0..SOCKETS {
        held.push(sent(addr, head.as_bytes()).await);
    }
    // The server has read them all once a request behind them is answered
    // and its resident memory stops growing.
    assert_healthy(addr).await;
    let mut during = proc_status_kb(&child, "VmRSS");
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = proc_status_kb(&child, "VmRSS");
        if now <= during {
            break;
        }
        during = now;
    }
    let grown_mib = during.saturating_sub(before) as f64 / 1024.0;
    eprintln!(
        "{SOCKETS} unfinished 15 KiB heads: RSS {before} kB -> {during} kB (+{grown_mib:.1} MiB)"
    );
    assert!(
        grown_mib < 48.0,
        "{SOCKETS} unfinished heads grew the server by {grown_mib:.1} MiB"
    );

    assert_healthy(addr).await;
    drop(held);
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn bodies_must_arrive_in_time_and_oversized_ones_are_refused_unread() {
    let dir = TempDir::new("body-limits");
    let (mut child, addr, _) = start(server_command(&dir).env("BODY_TIMEOUT_SECS", "1")).await;
    let token = admin_token();
    let post = |length: usize, extra: &str| {
        format!(
            "POST /api/v1/products HTTP/1.1\r\nhost: ocha\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
        )
    };
    let body = product_body(1).to_string();

    // A body that stalls halfway, and one that drips.
    let mut stalled = sent(
        addr,
        format!("{}{}", post(body.len(), ""), &body[..10]).as_bytes(),
    )
    .await;
    let mut dripping = sent(addr, post(body.len(), "").as_bytes()).await;
    let started = Instant::now();
    // A well-behaved admin is served meanwhile.
    let other = product_body(2);
    let (dripped, created) = tokio::join!(
        drip(&mut dripping, body.as_bytes()),
        post_product(addr, Some(&token), &other)
    );
    assert_eq!(created.status, StatusCode::CREATED);
    let elapsed = started.elapsed();
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "answered after {elapsed:?}"
    );
    let mut dripped = dripped.split("\r\n\r\n");
    let reply = RawReply {
        head: dripped.next().unwrap().to_owned(),
        body: dripped.next().expect("a body").to_owned(),
    };
    for reply in [read_reply(&mut stalled).await, reply] {
        assert_eq!(reply.status(), 408, "{reply:?}");
        assert_eq!(reply.json()["message"], "Request body timed out");
        assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    }
    read_to_close(&mut stalled).await;

    // Over the 1 MiB limit by its Content-Length: refused at once, before
    // any of it is sent.
    let too_large = 2 * 1024 * 1024;
    let mut declared = sent(addr, post(too_large, "").as_bytes()).await;
    let reply = read_reply(&mut declared).await;
    assert_eq!(reply.status(), 413, "{reply:?}");
    assert_eq!(reply.json()["message"], "Request body too large");
    // A client that asks first is told no, without a 100 Continue.
    let mut asking = sent(addr, post(too_large, "expect: 100-continue\r\n").as_bytes()).await;
    let reply = read_reply(&mut asking).await;
    assert_eq!(reply.status(), 413, "{reply:?}");
    // One within the limit is asked for it.
    let mut within = sent(
        addr,
        post(body.len(), "expect: 100-continue\r\n").as_bytes(),
    )
    .await;
    assert_eq!(read_reply(&mut within).await.status(), 100);
    within.write_all(body.as_bytes()).await.unwrap();
    assert_eq!(read_reply(&mut within).await.status(), 201);

    stop_binary(&mut child).await;
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

/// A WebSocket handshake from `local`, a loopback address of the client's
/// choosing, as from another machine.
async fn ws_from(local: &str, addr: SocketAddr) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{addr}/");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("WebSocket handshake");
    ws
}

#[tokio::test]
async fn max_connections_per_ip_refuses_websockets_past_it_with_429() {
    let dir = TempDir::new("per-ip");
    let (mut child, addr, _) = start(server_command(&dir).env("MAX_CONNECTIONS_PER_IP", "2")).await;

    let first = ws_connect(addr).await;
    let _second = ws_connect(addr).await;
    match tokio_tungstenite::connect_async(format!("ws://{addr}/")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()["content-type"], "application/json");
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["message"], "Too many connections from this address");
        }
        other => panic!("expected a 429 refusal, got {other:?}"),
    }
    // Another address is not held back, and neither are plain requests.
    let _elsewhere = ws_from("127.0.0.2", addr).await;
    assert_healthy(addr).await;

    // A connection that closes gives its place back.
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/")).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(error) => panic!("the place was not given back: {error}"),
        }
    }
    stop_binary(&mut child).await;
}
