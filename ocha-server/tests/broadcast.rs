//! WebSocket broadcasts, end to end: real clients on `/` of a real server.

mod common;

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use http::{Method, StatusCode};
use ocha_realtime::{Admission, Hub};
use ocha_server::config::Database;
use ocha_server::event::Event;
use ocha_server::store::Store;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The frame every client must receive for a product created with
/// `created`, the `id`th event in the log.
fn expected_frame(created: &Reply, id: u64) -> String {
    format!(
        r#"{{"type":"new_product","product":{},"id":"{id}"}}"#,
        raw_product(created)
    )
}

#[tokio::test]
async fn a_new_product_reaches_every_client_exactly_once() {
    let dir = TempDir::new("broadcast");
    let server = TestServer::start(&dir.database()).await;
    let mut clients = [
        ws_connect(server.addr).await,
        ws_connect(server.addr).await,
        ws_connect(server.addr).await,
    ];

    let created = create(&server, 1).await;
    let product = created.json()["product"].clone();

    for client in &mut clients {
        let frame = next_text(client).await;
        // The same bytes as the 201 body's product...
        assert_eq!(frame, expected_frame(&created, 1));
        // ...which parse to the same document and to the library's event type.
        let parsed: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            parsed,
            json!({"type": "new_product", "product": product, "id": "1"})
        );
        let Event::NewProduct { product: typed } = serde_json::from_str(&frame).unwrap() else {
            panic!("not a new_product event");
        };
        assert_eq!(serde_json::to_value(typed).unwrap(), product);
    }
    join_all(clients.iter_mut().map(assert_quiet)).await;
    // Gone clients let shutdown skip the closing handshake.
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn failed_requests_broadcast_nothing() {
    let dir = TempDir::new("quiet");
    let server = TestServer::start(&dir.database()).await;
    let existing = create(&server, 1).await;
    let existing_id = existing.json()["product"]["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut clients = [
        ws_connect(server.addr).await,
        ws_connect(server.addr).await,
        ws_connect(server.addr).await,
    ];

    let addr = server.addr;
    let admin = server.admin_token();
    let user = server.token("user");
    let with = |field: &str, value: Value| {
        let mut body = product_body(2);
        body[field] = value;
        body.to_string()
    };
    let mut huge = product_body(2).to_string().into_bytes();
    huge.resize(1024 * 1024 + 1, b' ');

    let failures: Vec<(Option<&str>, Vec<u8>, u16)> = vec![
        (None, product_body(2).to_string().into(), 401),
        (Some("garbage"), product_body(2).to_string().into(), 401),
        (Some(&user), product_body(2).to_string().into(), 403),
        (Some(&admin), with("image", json!("")).into(), 400),
        (Some(&admin), b"{not json".to_vec(), 400),
        (Some(&admin), with("basePriceCHF", json!(-2)).into(), 422),
        (
            Some(&admin),
            with("slug", json!("matcha-latte-1")).into(),
            409,
        ),
        (
            Some(&admin),
            with("name", json!("Matcha Latte 1")).into(),
            409,
        ),
        (Some(&admin), huge, 413),
    ];
    for (token, body, status) in failures {
        let reply = send(addr, Method::POST, "/api/v1/products", token, body).await;
        assert_eq!(reply.status.as_u16(), status, "{}", reply.text());
    }
    // Reads and routing errors do not broadcast either.
    get(addr, "/api/v1/products").await;
    get(addr, &format!("/api/v1/products/{existing_id}")).await;
    get(addr, "/api/v1/nothing").await;
    send(addr, Method::DELETE, "/api/v1/products", Some(&admin), "").await;

    // The failures took no event id either.
    let created = create(&server, 2).await;
    for client in &mut clients {
        assert_eq!(next_text(client).await, expected_frame(&created, 2));
    }
    join_all(clients.iter_mut().map(assert_quiet)).await;
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_finishes_requests_in_flight() {
    let dir = TempDir::new("shutdown");
    let server = TestServer::start(&dir.database()).await;
    let addr = server.addr;
    let mut clients = [
        ws_connect(addr).await,
        ws_connect(addr).await,
        ws_connect(addr).await,
    ];

    // A creation whose body is only half sent when shutdown begins.
    let body = product_body(1).to_string();
    let (first_half, second_half) = body.split_at(body.len() / 2);
    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/products HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        server.admin_token(),
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(first_half.as_bytes()).await.unwrap();
    // Let the server start on the request before shutting down.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopped = server.begin_shutdown();

    for client in &mut clients {
        assert_eq!(close_code(client).await, 1001);
    }
    // No new connections are accepted.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !stopped.is_finished(),
        "run returned before the request finished"
    );

    in_flight.write_all(second_half.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, in_flight.read_to_string(&mut response))
        .await
        .expect("the response and the close in time")
        .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 201 Created\r\n"),
        "{response}"
    );
    assert!(
        response.contains(r#"{"message":"Product created","product":{"#),
        "{response}"
    );

    tokio::time::timeout(PATIENCE, stopped)
        .await
        .unwrap()
        .unwrap();

    let store = Store::open(&Database::File(dir.database())).await.unwrap();
    let page = store
        .list(ocha_server::store::Activity::Any, 0, 10)
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.products[0].slug, "matcha-latte-1");
}

#[tokio::test]
async fn refused_handshakes_get_the_hubs_answer() {
    let dir = TempDir::new("handshake");
    let server = TestServer::start(&dir.database()).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let request = http::Request::builder()
        .uri(format!("ws://{}/", server.addr))
        .header("host", server.addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let refused = tokio_tungstenite::client_async(request, stream).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn commits_and_broadcasts_stay_paired_when_clients_hang_up() {
    let dir = TempDir::new("hang-up");
    let server = TestServer::start(&dir.database()).await;
    let mut client = ws_connect(server.addr).await;

    // Complete requests whose senders hang up at once: hyper may drop the
    // handler anywhere, yet every committed product must be broadcast.
    for n in 1..=5 {
        let body = product_body(n).to_string();
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "POST /api/v1/products HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
             content-length: {}\r\n\r\n{body}",
            server.addr,
            server.admin_token(),
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        drop(stream);
    }
    create(&server, 99).await;

    let mut broadcast = Vec::new();
    while let Ok(message) = tokio::time::timeout(QUIET, next_text(&mut client)).await {
        let event: Value = serde_json::from_str(&message).unwrap();
        broadcast.push(event["product"]["slug"].as_str().unwrap().to_owned());
    }
    let listing = get(server.addr, "/api/v1/products?limit=100").await.json();
    let mut committed: Vec<String> = listing["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|product| product["slug"].as_str().unwrap().to_owned())
        .collect();
    broadcast.sort();
    committed.sort();
    assert_eq!(broadcast, committed);
    assert!(committed.contains(&"matcha-latte-99".to_owned()));

    drop(client);
    server.stop().await;
}

/// A waker whose `wake` blocks until released, and reports being entered.
/// `Hub::publish` wakes every connection it queues a frame for, so a
/// publish to a connection polled with this waker stalls in the fan-out,
/// like one to thousands of connections takes long.
struct Stall {
    entered: Notify,
    released: Mutex<bool>,
    release: Condvar,
}

impl Stall {
    fn new() -> Arc<Stall> {
        Arc::new(Stall {
            entered: Notify::new(),
            released: Mutex::new(false),
            release: Condvar::new(),
        })
    }

    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.release.notify_all();
    }
}

impl Wake for Stall {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.entered.notify_one();
        let mut released = self.released.lock().unwrap();
        while !*released {
            released = self.release.wait(released).unwrap();
        }
    }
}

/// Releases the stall when dropped, so that a failing assertion does not
/// leave a thread blocked in `wake`.
struct ReleaseOnDrop(Arc<Stall>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

// Two workers: after the fix, the stalled fan-out holds one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broadcast_does_not_hold_up_the_store() {
    let dir = TempDir::new("stalled-broadcast");
    let hub = Hub::default();
    let server = TestServer::with_hub(&dir.database(), hub.clone()).await;

    // A connection polled once with the stalling waker: it sends its
    // welcome, then waits for the hub to wake it.
    let (client, io) = tokio::io::duplex(64 * 1024);
    let mut connection = Box::pin(async move { hub.serve(io, Admission::anonymous()).await });
    let stall = Stall::new();
    let release = ReleaseOnDrop(stall.clone());
    let waker = Waker::from(stall.clone());
    assert!(connection
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());

    let (addr, admin) = (server.addr, server.admin_token());
    let first =
        tokio::spawn(async move { post_product(addr, Some(&admin), &product_body(1)).await });
    tokio::time::timeout(PATIENCE, stall.entered.notified())
        .await
        .expect("the broadcast reaches the connection");

    // While that broadcast is stalled, the store serves reads and writes.
    let listing = tokio::time::timeout(PATIENCE / 2, get(server.addr, "/api/v1/products"))
        .await
        .expect("a listing while a broadcast is stalled");
    assert_eq!(listing.json()["totalProducts"], 1);
    let second = tokio::time::timeout(
        PATIENCE / 2,
        post_product(server.addr, Some(&server.admin_token()), &product_body(2)),
    )
    .await
    .expect("a creation while a broadcast is stalled");
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text());

    // Once the fan-out moves on, the connection gets both, in commit order.
    drop(release);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    tokio::spawn(connection);
    let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    assert_eq!(next_text(&mut client).await, ocha_realtime::OCHA_WELCOME);
    assert_eq!(next_text(&mut client).await, expected_frame(&first, 1));
    assert_eq!(next_text(&mut client).await, expected_frame(&second, 2));
    assert_quiet(&mut client).await;

    drop(client);
    server.stop().await;
}
