//! The opening handshake, over real sockets.

mod support;

use http::{Request, StatusCode};
use ocha_realtime::{Admission, Config, HandshakeError, Hub, OCHA_WELCOME};
use support::{connect, raw_exchange, raw_request, serve, upgrade_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn welcome_is_the_ocha_text_byte_for_byte() {
    let (_hub, addr) = serve(Config::default()).await;
    let response = raw_exchange(addr, &upgrade_request("")).await;
    let head_len = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = std::str::from_utf8(&response[..head_len]).unwrap();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    let welcome = OCHA_WELCOME.as_bytes();
    let frame = &response[head_len..];
    assert_eq!(frame[0], 0x81, "a final text frame");
    assert_eq!(
        usize::from(frame[1]),
        welcome.len(),
        "unmasked, exact length"
    );
    assert_eq!(&frame[2..], welcome);
    assert_eq!(OCHA_WELCOME, r#"{"message":"Connecté au WebSocket"}"#);
}

#[tokio::test]
async fn each_bad_handshake_gets_its_status_and_a_plain_reason() {
    let (_hub, addr) = serve(Config::default().allowed_origins(["https://shop.example"])).await;
    let valid = upgrade_request("");
    let cases = [
        (valid.replacen("GET", "POST", 1), "400 Bad Request"),
        (valid.replacen("HTTP/1.1", "HTTP/1.0", 1), "400 Bad Request"),
        (
            valid.replace("Connection: Upgrade", "Connection: keep-alive"),
            "400 Bad Request",
        ),
        (
            valid.replace("dGhlIHNhbXBsZSBub25jZQ==", "nope"),
            "400 Bad Request",
        ),
        (
            valid.replace("Version: 13", "Version: 8"),
            "426 Upgrade Required",
        ),
        (
            upgrade_request("Origin: https://evil.example\r\n"),
            "403 Forbidden",
        ),
    ];
    for (request, status) in cases {
        let response = raw_request(addr, &request).await;
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        let status_line = response.lines().next().unwrap_or_default();
        assert!(
            status_line.ends_with(&format!(" {status}")),
            "{request}\n=> {response}"
        );
        assert!(
            response.contains("content-type: text/plain; charset=utf-8\r\n"),
            "{response}"
        );
        let body = &response[response.find("\r\n\r\n").unwrap() + 4..];
        assert!(!body.is_empty(), "a reason for {status}");
        if status.starts_with("426") {
            assert!(
                response.contains("sec-websocket-version: 13\r\n"),
                "{response}"
            );
        }
    }
    let allowed = raw_request(addr, &upgrade_request("Origin: https://shop.example\r\n")).await;
    assert!(allowed.starts_with("HTTP/1.1 101"), "{allowed}");
}

#[tokio::test]
async fn upgrades_past_max_connections_get_503() {
    let (hub, addr) = serve(Config::default().max_connections(2)).await;
    let _first = connect(addr, "/", OCHA_WELCOME).await;
    let second = connect(addr, "/", OCHA_WELCOME).await;
    let response = raw_request(addr, &upgrade_request("")).await;
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{response}"
    );
    drop(second);
    support::eventually("a slot frees", || hub.stats().connections == 1).await;
    let _third = connect(addr, "/", OCHA_WELCOME).await;
}

/// An upgrade request from `peer`, as a proxy would report it.
fn upgrade_from(peer: &str) -> String {
    upgrade_request("").replacen("GET / ", &format!("GET /?peer={peer} "), 1)
}

#[tokio::test]
async fn upgrades_past_max_connections_per_peer_get_429_and_other_peers_are_served() {
    let (hub, addr) = serve(Config::default().max_connections_per_peer(2)).await;
    let _first = connect(addr, "/?peer=192.0.2.1", OCHA_WELCOME).await;
    let second = connect(addr, "/?peer=192.0.2.1", OCHA_WELCOME).await;

    let refused = raw_request(addr, &upgrade_from("192.0.2.1")).await;
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{refused}"
    );
    assert!(
        refused.ends_with("too many connections from this address; close one or try again later"),
        "{refused}"
    );
    // Other addresses, IPv6 ones too, and connections admitted without an
    // address are not held back.
    let _other = connect(addr, "/?peer=192.0.2.2", OCHA_WELCOME).await;
    let _v6 = connect(addr, "/?peer=2001:db8::1", OCHA_WELCOME).await;
    let _unknown = [
        connect(addr, "/", OCHA_WELCOME).await,
        connect(addr, "/", OCHA_WELCOME).await,
        connect(addr, "/", OCHA_WELCOME).await,
    ];

    // A connection that ends gives its place back.
    drop(second);
    support::eventually("the connection is gone", || hub.stats().connections == 6).await;
    let _again = connect(addr, "/?peer=192.0.2.1", OCHA_WELCOME).await;
}

#[tokio::test]
async fn an_upgrade_refused_for_its_peer_takes_no_place_in_the_hub() {
    let config = Config::default()
        .max_connections(2)
        .max_connections_per_peer(1);
    let (hub, addr) = serve(config).await;
    let _first = connect(addr, "/?peer=192.0.2.1", OCHA_WELCOME).await;
    for _ in 0..3 {
        let refused = raw_request(addr, &upgrade_from("192.0.2.1")).await;
        assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    }
    assert_eq!(hub.stats().connections, 1);
    let _second = connect(addr, "/?peer=192.0.2.2", OCHA_WELCOME).await;
    // The hub is full now: its own limit answers, with 503.
    let full = raw_request(addr, &upgrade_from("192.0.2.3")).await;
    assert!(full.starts_with("HTTP/1.1 503"), "{full}");
}

#[tokio::test]
async fn connections_served_directly_count_against_their_peer() {
    let hub = Hub::new(Config::default().max_connections_per_peer(1));
    let addr = support::serve_hub(hub.clone()).await;
    let (client, server) = tokio::io::duplex(4096);
    let served = hub.clone();
    let peer = "192.0.2.1".parse().unwrap();
    tokio::spawn(async move {
        served
            .serve(server, Admission::anonymous().peer(peer))
            .await
    });
    support::eventually("it is connected", || hub.stats().connections == 1).await;

    let refused = raw_request(addr, &upgrade_from("192.0.2.1")).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    drop(client);
    support::eventually("it is gone", || hub.stats().connections == 0).await;
    let _upgraded = connect(addr, "/?peer=192.0.2.1", OCHA_WELCOME).await;
}

#[tokio::test]
async fn hub_sits_beside_a_plain_route_and_takes_any_body_type() {
    let (hub, addr) = serve(Config::default()).await;
    let plain = raw_request(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        plain.starts_with("HTTP/1.1 200 OK\r\n") && plain.ends_with("ok"),
        "{plain}"
    );
    let _incoming = connect(addr, "/", OCHA_WELCOME).await;
    let _mapped = connect(addr, "/mapped", OCHA_WELCOME).await;
    assert_eq!(hub.stats().connections, 2);
}

#[tokio::test]
async fn a_request_hyper_cannot_upgrade_is_refused_not_hung() {
    let hub = Hub::default();
    let request = Request::get("/")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    assert!(ocha_realtime::is_websocket_upgrade(&request));
    let error = hub.upgrade(request).unwrap_err();
    assert_eq!(error, HandshakeError::NotUpgradable);
    assert_eq!(
        error.into_response().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn a_frame_sent_right_behind_the_handshake_is_not_lost() {
    let (_hub, addr) = serve(Config::default()).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A masked ping with payload "hi" (mask 0), in the same write as the request.
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend_from_slice(&[0x89, 0x82, 0, 0, 0, 0, b'h', b'i']);
    stream.write_all(&bytes).await.unwrap();
    let welcome_frame_len = 2 + OCHA_WELCOME.len();
    let mut received = Vec::new();
    let pong = [0x8a, 0x02, b'h', b'i'];
    while !received.ends_with(&pong) {
        let mut chunk = [0; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the ping is answered")
            .unwrap();
        assert_ne!(n, 0, "connection closed early");
        received.extend_from_slice(&chunk[..n]);
    }
    let head_len = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(received.len(), head_len + welcome_frame_len + pong.len());
}

#[tokio::test]
async fn works_inside_an_axum_handler() {
    let hub = Hub::default();
    let app = axum::Router::new()
        .route("/", axum::routing::get(support::axum_upgrade))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut client = connect(addr, "/", OCHA_WELCOME).await;
    assert_eq!(hub.publish(&support::product("Sencha", 10)), 1);
    assert_eq!(
        support::product_name(&support::next_text(&mut client).await),
        "Sencha"
    );
}
