//! `GET /metrics` on the real binary: Prometheus's text format as
//! `promtool check metrics` checks it, with the numbers of the traffic the
//! test made.

mod common;

use common::metrics::scrape;
use common::*;
use http::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const SHOP: &str = "https://shop.example";

#[tokio::test]
async fn metrics_count_the_traffic_and_pass_promtool() {
    let dir = TempDir::new("metrics");
    let (mut child, addr, _) = start(server_command(&dir).env("WS_ALLOWED_ORIGINS", SHOP)).await;

    // One WebSocket accepted, one refused for its origin.
    let mut client = ws_connect(addr).await;
    let mut refused = format!("ws://{addr}/").into_client_request().unwrap();
    refused
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(refused).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::FORBIDDEN),
        other => panic!("expected a 403 refusal, got {other:?}"),
    }
    // A product created and delivered, a product and a path not found.
    let created = post_product(addr, Some(&admin_token()), &product_body(1)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(event_id(&next_text(&mut client).await), 1);
    let missing = get(addr, "/api/v1/products/65643f1adeadbeef010a0b0c").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(get(addr, "/nope").await.status, StatusCode::NOT_FOUND);

    let metrics = scrape(addr).await;
    let websocket = [("transport", "websocket")];
    assert_eq!(metrics.get("ocha_connections_open", &websocket), 1.0);
    assert_eq!(
        metrics.get("ocha_connections_accepted_total", &websocket),
        1.0
    );
    let by_origin = [("transport", "websocket"), ("reason", "origin")];
    assert_eq!(
        metrics.get("ocha_connections_refused_total", &by_origin),
        1.0
    );
    assert_eq!(
        metrics.get("ocha_events_published_total", &[("type", "new_product")]),
        1.0
    );
    assert_eq!(metrics.get("ocha_deliveries_total", &[]), 1.0);
    assert_eq!(metrics.get("ocha_slow_consumer_closes_total", &[]), 0.0);
    assert_eq!(metrics.get("ocha_heartbeat_timeouts_total", &[]), 0.0);
    assert_eq!(metrics.get("ocha_relay_events_from_log_total", &[]), 0.0);
    // Without REDIS_URL, no Redis figures (a 0 would read as "down").
    assert_eq!(metrics.value("ocha_redis_connected", &[]), None);

    let requests = |route, method, status| {
        metrics.get(
            "ocha_http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/api/v1/products", "POST", "201"), 1.0);
    assert_eq!(requests("/api/v1/products/:id", "GET", "404"), 1.0);
    assert_eq!(requests("unmatched", "GET", "404"), 1.0);
    assert_eq!(requests("/", "GET", "101"), 1.0);
    assert_eq!(requests("/", "GET", "403"), 1.0);
    let post = [("route", "/api/v1/products"), ("method", "POST")];
    assert_eq!(
        metrics.get("ocha_http_request_duration_seconds_count", &post),
        1.0
    );
    let mut under_10s = post.to_vec();
    under_10s.push(("le", "10"));
    assert_eq!(
        metrics.get("ocha_http_request_duration_seconds_bucket", &under_10s),
        1.0
    );
    let insert = [("operation", "insert")];
    assert_eq!(
        metrics.get("ocha_store_operation_duration_seconds_count", &insert),
        1.0
    );
    assert_eq!(
        metrics.get(
            "ocha_store_operation_duration_seconds_count",
            &[("operation", "find")]
        ),
        1.0
    );

    // The scrape itself is counted by the next one, and a closed client
    // leaves the gauge.
    drop(client);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let metrics = loop {
        let metrics = scrape(addr).await;
        if metrics.get("ocha_connections_open", &websocket) == 0.0 {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", metrics.text);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        metrics.get(
            "ocha_http_requests_total",
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")]
        ) >= 1.0
    );
    assert_eq!(
        metrics.get("ocha_connections_accepted_total", &websocket),
        1.0
    );
    stop_binary(&mut child).await;
}
