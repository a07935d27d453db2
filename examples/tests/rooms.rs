//! The `rooms` example over real sockets: the built example runs as a child
//! process on a free port, and the tests talk to it as WebSocket and HTTP
//! clients would.
//!
//! `cargo test -p examples` builds the example before running these; with
//! a narrower selection (`--test rooms`) build it first with
//! `cargo build -p examples --example rooms`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on every wait for the example, far above what it needs.
const PATIENCE: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The example, running; killed when dropped, so a failing test leaves no
/// server behind.
struct Rooms {
    addr: SocketAddr,
    child: Child,
    /// Held so that the example never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Rooms {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The example binary, beside this test's: `target/<profile>/deps/rooms-…`
/// runs, `target/<profile>/examples/rooms` is the example.
fn example_binary() -> PathBuf {
    let test = std::env::current_exe().expect("current_exe");
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let binary = profile_dir.join("examples").join("rooms");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p examples --example rooms` \
         (`cargo test -p examples` does)",
        binary.display()
    );
    binary
}

impl Rooms {
    /// Starts the example on a free port and waits until it listens.
    async fn start() -> Rooms {
        let mut child = Command::new(example_binary())
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the rooms example");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        timeout(PATIENCE, stdout.read_line(&mut line))
            .await
            .expect("the example says where it listens in time")
            .expect("read the example's stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on ws://")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the example: {line:?}"));
        Rooms {
            addr,
            child,
            _stdout: stdout,
        }
    }

    /// Connects a WebSocket client with `query` (say `channel=A&user=alice`)
    /// and returns once the hub has it, channels joined.
    async fn connect(&self, query: &str) -> Client {
        let url = format!("ws://{}/?{query}", self.addr);
        // The hub lists a connection, channels joined, before it answers
        // the upgrade.
        let (client, _) = timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        client
    }

    /// Sends an HTTP/1.1 request and returns the status and the JSON body.
    async fn http(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let (mut reader, mut writer) = stream.split();
        let mut response = String::new();
        // Read while writing: a server may refuse a large body, answer and
        // close before it is all sent, which fails the write, not the test.
        let (_, read) = timeout(PATIENCE, async {
            tokio::join!(
                writer.write_all(request.as_bytes()),
                reader.read_to_string(&mut response)
            )
        })
        .await
        .expect("answered in time");
        read.expect("read the response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
        let status = head[9..12].parse().expect("a status line");
        (status, serde_json::from_str(body).expect("a JSON body"))
    }

    /// Publishes a marker to every connection and checks that it is the
    /// next frame each client gets: whatever reached one before it would
    /// have come first.
    async fn assert_nothing_else(&self, clients: &mut [&mut Client]) {
        let marker = r#"{"marker":true}"#;
        let (status, _) = self.http("POST", "/broadcast", marker).await;
        assert_eq!(status, 200);
        for client in clients {
            assert_eq!(text(client).await, marker);
        }
    }
}

async fn next(client: &mut Client) -> Message {
    timeout(PATIENCE, client.next())
        .await
        .expect("a frame in time")
        .expect("the connection is open")
        .expect("a valid frame")
}

/// The next frame, which must be text.
async fn text(client: &mut Client) -> String {
    match next(client).await {
        Message::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next frame, which must be JSON text.
async fn json(client: &mut Client) -> Value {
    serde_json::from_str(&text(client).await).expect("JSON")
}

async fn send(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
}

#[tokio::test]
async fn channel_messages_reach_each_member_once_and_no_one_else() {
    let rooms = Rooms::start().await;
    let mut alice = rooms.connect("channel=A&user=alice").await;
    let mut bob = rooms.connect("channel=A&channel=B&user=bob").await;
    let mut carol = rooms.connect("channel=B").await;
    let mut dave = rooms.connect("").await;

    // The message is passed on as sent, spacing and all.
    send(
        &mut alice,
        r#"{"channel":"A","message":{"text": "hi", "n":[1, 2.50]}}"#,
    )
    .await;
    let said = r#"{"channel":"A","message":{"text": "hi", "n":[1, 2.50]}}"#;
    assert_eq!(text(&mut alice).await, said);
    assert_eq!(text(&mut bob).await, said);
    rooms
        .assert_nothing_else(&mut [&mut alice, &mut bob, &mut carol, &mut dave])
        .await;

    send(&mut carol, r#"{"channel":"B","message":null}"#).await;
    let said = r#"{"channel":"B","message":null}"#;
    assert_eq!(text(&mut carol).await, said);
    assert_eq!(text(&mut bob).await, said);
    rooms
        .assert_nothing_else(&mut [&mut alice, &mut bob, &mut carol, &mut dave])
        .await;

    // Only members may talk in a channel.
    send(&mut dave, r#"{"channel":"A","message":"let me in"}"#).await;
    assert!(json(&mut dave).await["error"].is_string());
    rooms
        .assert_nothing_else(&mut [&mut alice, &mut bob, &mut carol, &mut dave])
        .await;
}

#[tokio::test]
async fn clients_join_and_leave_by_message() {
    let rooms = Rooms::start().await;
    let mut client = rooms.connect("").await;

    send(&mut client, r#"{"join":"A"}"#).await;
    assert_eq!(json(&mut client).await, json!({"joined": "A"}));
    let (status, answer) = rooms.http("POST", "/channels/A", "[1]").await;
    assert_eq!((status, answer), (200, json!({"delivered": 1})));
    assert_eq!(text(&mut client).await, "[1]");
    send(&mut client, r#"{"channel":"A","message":2}"#).await;
    assert_eq!(
        json(&mut client).await,
        json!({"channel": "A", "message": 2})
    );

    send(&mut client, r#"{"leave":"A"}"#).await;
    assert_eq!(json(&mut client).await, json!({"left": "A"}));
    let (status, answer) = rooms.http("POST", "/channels/A", "[3]").await;
    assert_eq!((status, answer), (200, json!({"delivered": 0})));
    send(&mut client, r#"{"channel":"A","message":4}"#).await;
    assert!(json(&mut client).await["error"].is_string());
    rooms.assert_nothing_else(&mut [&mut client]).await;
}

#[tokio::test]
async fn bad_messages_are_answered_with_an_error() {
    let rooms = Rooms::start().await;
    let mut client = rooms.connect("channel=A").await;
    for bad in [
        "not JSON",
        "[]",
        r#"{"join":1}"#,
        r#"{"join":""}"#,
        r#"{"join":"A","leave":"A"}"#,
        r#"{"channel":"A"}"#,
        r#"{"channel":"A","message":1,"extra":2}"#,
    ] {
        send(&mut client, bad).await;
        let reply = json(&mut client).await;
        assert!(reply["error"].is_string(), "{bad} got {reply}");
    }
    client.send(Message::binary(vec![1, 2])).await.unwrap();
    assert!(json(&mut client).await["error"].is_string());
    // Still connected and still in its channel.
    send(&mut client, r#"{"channel":"A","message":"still here"}"#).await;
    assert_eq!(
        json(&mut client).await,
        json!({"channel": "A", "message": "still here"})
    );
}

#[tokio::test]
async fn posts_publish_the_body_byte_for_byte() {
    let rooms = Rooms::start().await;
    let mut member = rooms.connect("channel=news%20desk").await;
    let mut other = rooms.connect("channel=sports").await;

    let body = "{ \"headline\" : \"Matcha\u{e9}\", \"price\": 6.50 }";
    let (status, answer) = rooms.http("POST", "/channels/news%20desk", body).await;
    assert_eq!((status, answer), (200, json!({"delivered": 1})));
    assert_eq!(text(&mut member).await, body);
    rooms
        .assert_nothing_else(&mut [&mut member, &mut other])
        .await;

    let (status, answer) = rooms.http("POST", "/broadcast", "\"all\"").await;
    assert_eq!((status, answer), (200, json!({"delivered": 2})));
    assert_eq!(text(&mut member).await, "\"all\"");
    assert_eq!(text(&mut other).await, "\"all\"");

    let (status, answer) = rooms.http("POST", "/channels/sports", "{oops").await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = rooms.http("POST", "/broadcast", "").await;
    assert_eq!(status, 400, "{answer}");
    // A body of 1 MiB is accepted, one byte more refused.
    let mib = format!("\"{}\"", "x".repeat(1024 * 1024 - 2));
    let (status, answer) = rooms.http("POST", "/channels/none", &mib).await;
    assert_eq!((status, answer), (200, json!({"delivered": 0})));
    let (status, answer) = rooms
        .http("POST", "/channels/none", &format!("{mib} "))
        .await;
    assert_eq!(status, 413, "{answer}");
    rooms
        .assert_nothing_else(&mut [&mut member, &mut other])
        .await;
}

#[tokio::test]
async fn presence_counts_follow_connects_and_disconnects() {
    let rooms = Rooms::start().await;
    let presence = || async {
        let (status, answer) = rooms.http("GET", "/channels/A", "").await;
        assert_eq!(status, 200);
        answer
    };
    assert_eq!(presence().await, json!({"connections": 0, "users": {}}));

    let alice_phone = rooms.connect("channel=A&user=alice").await;
    let mut alice_laptop = rooms.connect("channel=A&channel=B&user=alice").await;
    let bob = rooms.connect("user=bob&channel=A").await;
    let anonymous = rooms.connect("channel=A").await;
    let _carol_elsewhere = rooms.connect("channel=B&user=carol").await;
    assert_eq!(
        presence().await,
        json!({"connections": 4, "users": {"alice": 2, "bob": 1}})
    );

    send(&mut alice_laptop, r#"{"leave":"A"}"#).await;
    assert_eq!(json(&mut alice_laptop).await, json!({"left": "A"}));
    assert_eq!(
        presence().await,
        json!({"connections": 3, "users": {"alice": 1, "bob": 1}})
    );

    // The hub notices a closed connection shortly after the client goes.
    drop((alice_phone, bob, anonymous));
    let deadline = Instant::now() + PATIENCE;
    let empty = json!({"connections": 0, "users": {}});
    loop {
        let now = presence().await;
        if now == empty {
            break;
        }
        assert!(Instant::now() < deadline, "still present: {now}");
        sleep(Duration::from_millis(20)).await;
    }
    let (_, b) = rooms.http("GET", "/channels/B", "").await;
    assert_eq!(
        b,
        json!({"connections": 2, "users": {"alice": 1, "carol": 1}})
    );
}
