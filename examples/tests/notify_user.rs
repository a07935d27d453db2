//! The `notify_user` example over real sockets: the example binary runs as
//! a child process on a free port, and the tests are its clients.
//!
//! `cargo test -p examples` builds the examples before running the tests.
//! `cargo test -p examples --test notify_user` does not: build the example
//! first (`cargo build -p examples --example notify_user`), or an old
//! binary is tested.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "notify-user-test-secret";

/// Valid JSON that re-serializing would change (spacing, escapes, unicode,
/// number forms), so clients must receive exactly these bytes.
const NOTIFICATION: &str = r#"{ "type" : "order_ready",
  "note": "thé 🍵 \u00e9\n\/", "amounts": [1e-7, -0.0, 1.50, 12345678901234567890],
  "empty": { } }"#;

/// Longest wait for anything the server should send.
const PATIENCE: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The example running as a child process; dropping it (also when a test
/// panics) kills the process.
struct Server {
    process: Child,
    /// `127.0.0.1:PORT`, from the line the example prints when listening.
    addr: String,
}

impl Server {
    fn start() -> Server {
        let process = Command::new(example_binary())
            .env("PORT", "0")
            .env("JWT_SECRET", SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the notify_user example");
        let mut server = Server {
            process,
            addr: String::new(),
        };
        let stdout = server.process.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        server.addr = line
            .trim_end()
            .strip_prefix("listening on ws://")
            .unwrap_or_else(|| panic!("expected `listening on ws://ADDR`, got {line:?}"))
            .to_owned();
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The example binary that `cargo test` builds beside this test:
/// target/PROFILE/deps/notify_user-HASH runs target/PROFILE/examples/notify_user.
fn example_binary() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/PROFILE/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("notify_user{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test -p examples`, which builds the examples, \
         or `cargo build -p examples --example notify_user`",
        binary.display()
    );
    binary
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token holding `claims`, signed with `secret`.
fn token(claims: serde_json::Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// A token the server accepts for `user` for the next ten minutes.
fn user_token(user: &str) -> String {
    token(json!({ "id": user, "exp": unix_now() + 600 }), SECRET)
}

/// A WebSocket of `user`'s that notifications reach.
async fn connect(server: &Server, user: &str) -> Client {
    let url = format!("ws://{}/?token={}", server.addr, user_token(user));
    // The hub lists a connection before it answers the upgrade, so
    // notifications reach it from here on.
    let (client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    client
}

async fn next_message(client: &mut Client) -> Message {
    timeout(PATIENCE, client.next())
        .await
        .expect("no message in time")
        .expect("the connection closed")
        .unwrap()
}

/// The status and body the handshake to `ws://ADDR/QUERY` is refused with.
async fn refused_handshake(server: &Server, query: &str) -> (u16, String) {
    let url = format!("ws://{}/{query}", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(response)) => {
            let body = response.body().as_deref().unwrap_or_default();
            (
                response.status().as_u16(),
                String::from_utf8_lossy(body).into_owned(),
            )
        }
        Ok(_) => panic!("{query:?}: upgraded, should be refused"),
        Err(error) => panic!("{query:?}: {error}"),
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
struct HttpResponse {
    status: u16,
    content_type: Option<String>,
    body: String,
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body`, asking the server to close the connection after its response,
/// and reads that response.
async fn http(server: &Server, head: &str, body: &[u8]) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(&server.addr).await.unwrap();
        let head = format!(
            "{head}\r\nHost: {}\r\nConnection: close\r\n\r\n",
            server.addr
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        response
    };
    let response = timeout(PATIENCE, exchange)
        .await
        .expect("no response in time");
    let response = String::from_utf8(response).expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .expect("a status line");
    let content_type = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    HttpResponse {
        status,
        content_type,
        body: body.to_owned(),
    }
}

async fn notify(server: &Server, user: &str, body: &[u8]) -> HttpResponse {
    let head = format!(
        "POST /notify/{user} HTTP/1.1\r\nContent-Length: {}",
        body.len()
    );
    http(server, &head, body).await
}

#[tokio::test]
async fn a_notification_reaches_every_connection_of_its_user_and_no_one_else() {
    let server = Server::start();
    let mut alice_laptop = connect(&server, "alice").await;
    let mut alice_phone = connect(&server, "alice").await;
    let mut bob = connect(&server, "bob").await;

    let response = notify(&server, "alice", NOTIFICATION.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.content_type.as_deref(), Some("application/json"));
    assert_eq!(response.body, r#"{"delivered":2}"#);

    for alice in [&mut alice_laptop, &mut alice_phone] {
        match next_message(alice).await {
            Message::Text(text) => assert_eq!(text.as_str(), NOTIFICATION),
            other => panic!("expected the notification as text, got {other:?}"),
        }
    }
    let for_bob = timeout(Duration::from_millis(300), bob.next()).await;
    assert!(for_bob.is_err(), "bob received {for_bob:?}");
}

#[tokio::test]
async fn a_notification_for_a_user_with_no_connection_reaches_no_one() {
    let server = Server::start();
    let _alice = connect(&server, "alice").await;
    let response = notify(&server, "nobody", br#"{"type":"hello"}"#).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, r#"{"delivered":0}"#);
}

#[tokio::test]
async fn a_handshake_without_a_valid_token_is_refused_with_401() {
    let server = Server::start();
    let exp = unix_now() + 600;
    let missing = r#"{"message":"Token missing"}"#;
    let invalid = r#"{"message":"Invalid or expired token"}"#;
    let signed = |claims| format!("?token={}", token(claims, SECRET));
    let cases = [
        ("no query", String::new(), missing),
        ("no token", "?user=alice".to_owned(), missing),
        ("empty token", "?token=".to_owned(), missing),
        ("not a JWT", "?token=abc".to_owned(), invalid),
        (
            "another secret",
            format!(
                "?token={}",
                token(json!({ "id": "alice", "exp": exp }), "other")
            ),
            invalid,
        ),
        (
            "expired",
            signed(json!({ "id": "alice", "exp": unix_now() - 60 })),
            invalid,
        ),
        ("no exp", signed(json!({ "id": "alice" })), invalid),
        ("no id", signed(json!({ "exp": exp })), invalid),
    ];
    for (case, query, expected_body) in cases {
        let (status, body) = refused_handshake(&server, &query).await;
        assert_eq!((status, body.as_str()), (401, expected_body), "{case}");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused() {
    let server = Server::start();
    let invalid_json = r#"{"message":"Invalid JSON"}"#;
    let not_json: [&[u8]; 5] = [
        b"",
        b"{\"type\": ",
        b"{\"type\": \"a\"} trailing",
        b"'single quotes'",
        // Invalid UTF-8 inside a string, which serde_json would skip over.
        b"{\"note\": \"\xff\"}",
    ];
    for body in not_json {
        let response = notify(&server, "alice", body).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (400, invalid_json),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }

    // Refused from its declared length, before the body is sent.
    let head = "POST /notify/alice HTTP/1.1\r\nContent-Length: 2000000";
    let response = http(&server, head, b"").await;
    assert_eq!(response.status, 413, "{response:?}");
}

#[tokio::test]
async fn other_paths_are_not_found_and_other_methods_not_allowed() {
    let server = Server::start();
    let cases = [
        ("GET /elsewhere HTTP/1.1", 404),
        ("POST /notify/ HTTP/1.1\r\nContent-Length: 0", 404),
        ("GET /notify/alice HTTP/1.1", 405),
        ("POST / HTTP/1.1\r\nContent-Length: 0", 405),
    ];
    for (head, status) in cases {
        let response = http(&server, head, b"").await;
        assert_eq!(response.status, status, "{head:?}: {response:?}");
        assert_eq!(response.content_type.as_deref(), Some("application/json"));
    }
}

#[tokio::test]
async fn without_jwt_secret_the_example_exits_with_status_1() {
    let run = tokio::process::Command::new(example_binary())
        .env("PORT", "0")
        .env_remove("JWT_SECRET")
        .kill_on_drop(true)
        .output();
    let output = timeout(PATIENCE, run)
        .await
        .expect("the example keeps running without JWT_SECRET")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("JWT_SECRET is not set"), "{stderr}");
}
