//! Server-Sent Events on `GET /api/v1/events`, through the real binary:
//! the same events as the WebSocket, ids, resume by `Last-Event-ID` or
//! `?since=`, heartbeats, limits and shutdown.

mod common;

use common::*;

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
