//! Several nodes sharing Postgres and Redis, through the real binary and
//! real servers: every client of every node gets each product change once,
//! with the same id, whichever node took the request; Redis outages (and
//! how the metrics count them), a node killed right after a commit, and
//! concurrent creates.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::metrics::scrape;
use common::postgres::PostgresServer;
use common::redis::{self, RedisServer};
use common::*;
use serde_json::Value;
use tokio::process::Child;

/// How often nodes read the log for events nobody announced, in these
/// tests: short, so that a test of it is quick.
const POLL_MS: &str = "200";

/// A node of the cluster: the real binary on Postgres, with Redis if given.
struct Node {
    process: Child,
    addr: SocketAddr,
    // Kept for the node's lifetime: its working directory.
    _dir: TempDir,
}

impl Node {
    async fn start(postgres: &PostgresServer, redis: Option<&RedisServer>) -> Node {
        let dir = TempDir::new("node");
        let mut command = server_command(&dir);
        command
            .env("DATABASE_URL", postgres.url())
            .env("EVENT_POLL_MS", POLL_MS);
        if let Some(redis) = redis {
            command.env("REDIS_URL", redis.url());
        }
        let (process, addr, _) = start(&mut command).await;
        Node {
            process,
            addr,
            _dir: dir,
        }
    }

    async fn create(&self, n: u32) -> Reply {
        post_product(self.addr, Some(&admin_token()), &product_body(n)).await
    }

    async fn ready(&self) -> Value {
        get(self.addr, "/api/v1/ready").await.json()
    }
}

/// Reads `count` events from `ws`, then checks nothing more comes.
async fn events(ws: &mut Ws, count: usize) -> Vec<String> {
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        events.push(next_text(ws).await);
    }
    assert_quiet(ws).await;
    events
}

/// Waits until `condition` holds for the node's readiness report.
async fn until_ready(node: &Node, what: &str, condition: impl Fn(&Value) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let ready = node.ready().await;
        if condition(&ready) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: still {ready} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_each_product_once_everywhere_with_the_same_id() {
    let postgres = PostgresServer::new();
    let redis = RedisServer::new();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Node::start(&postgres, Some(&redis)).await);
    }
    for node in &nodes {
        until_ready(node, "Redis up", |ready| ready["redis"] == "up").await;
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(ws_connect(node.addr).await);
        clients.push(ws_resume(node.addr, "").await.0);
    }

    // Each node takes a POST in turn.
    for n in 0..6 {
        let reply = nodes[n as usize % 3].create(n).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
    let mut seen = Vec::new();
    for ws in &mut clients {
        seen.push(events(ws, 6).await);
    }
    let ids: Vec<u64> = seen[0].iter().map(|event| event_id(event)).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>());
    let names: Vec<String> = seen[0]
        .iter()
        .map(|event| event_product_name(event))
        .collect();
    assert_eq!(
        names,
        (0..6)
            .map(|n| format!("Matcha Latte {n}"))
            .collect::<Vec<_>>()
    );
    for (client, events) in seen.iter().enumerate() {
        assert_eq!(events, &seen[0], "client {client} got other bytes");
    }

    // Any node lists what any node created.
    for node in &nodes {
        let listing = get(node.addr, "/api/v1/products?limit=100").await.json();
        assert_eq!(listing["totalProducts"], 6, "{listing}");
    }

    // A client resumes on another node with an id it got from the first.
    let (mut resumed, welcome) = ws_resume(nodes[2].addr, "2").await;
    assert_eq!(welcome, welcome_at(6));
    assert_eq!(events(&mut resumed, 4).await, seen[0][2..]);

    // The same slug, on two nodes at once: one wins.
    let (first, second) = tokio::join!(nodes[0].create(100), nodes[1].create(100));
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{} / {}", first.text(), second.text());
    for ws in &mut clients {
        let event = events(ws, 1).await.remove(0);
        assert_eq!(
            (event_id(&event), event_product_name(&event)),
            (7, "Matcha Latte 100".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletes_on_either_node_reach_every_client_once() {
    let postgres = PostgresServer::new();
    let redis = RedisServer::new();
    let nodes = [
        Node::start(&postgres, Some(&redis)).await,
        Node::start(&postgres, Some(&redis)).await,
    ];
    for node in &nodes {
        until_ready(node, "Redis up", |ready| ready["redis"] == "up").await;
    }
    let mut clients = [
        ws_connect(nodes[0].addr).await,
        ws_connect(nodes[1].addr).await,
    ];
    let admin = admin_token();

    let created = nodes[0].create(1).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = product_id(&created);
    let updated = patch_product(nodes[1].addr, Some(&admin), &id, r#"{"name":"Hojicha"}"#).await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    // The other node serves the update at once: the product lives in Postgres.
    let found = get(nodes[0].addr, &format!("/api/v1/products/{id}")).await;
    assert_eq!(raw_product(&found), raw_product(&updated));
    let deleted = delete_product(nodes[0].addr, Some(&admin), &id).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text());

    let expected = [
        format!(
            r#"{{"type":"new_product","product":{},"id":"1"}}"#,
            raw_product(&created)
        ),
        format!(
            r#"{{"type":"product_updated","product":{},"id":"2"}}"#,
            raw_product(&updated)
        ),
        format!(
            r#"{{"type":"product_deleted","product":{},"id":"3"}}"#,
            raw_product(&updated)
        ),
    ];
    for ws in &mut clients {
        assert_eq!(events(ws, 3).await, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_survives_a_redis_outage_and_resumes_when_it_returns() {
    let postgres = PostgresServer::new();
    let mut redis = RedisServer::new();
    let nodes = [
        Node::start(&postgres, Some(&redis)).await,
        Node::start(&postgres, Some(&redis)).await,
    ];
    for node in &nodes {
        until_ready(node, "Redis up", |ready| ready["redis"] == "up").await;
    }
    let mut here = ws_connect(nodes[0].addr).await;
    let mut there = ws_connect(nodes[1].addr).await;
    assert_eq!(nodes[0].create(1).await.status, 201);
    assert_eq!(event_id(&next_text(&mut here).await), 1);
    assert_eq!(event_id(&next_text(&mut there).await), 1);

    redis.stop();
    for node in &nodes {
        until_ready(node, "Redis down", |ready| ready["redis"] == "down").await;
        let ready = node.ready().await;
        assert_eq!(
            (ready["status"].as_str(), ready["database"].as_str()),
            (Some("ready"), Some("up"))
        );
    }
    // Local clients at once, the other node's through the log.
    assert_eq!(nodes[0].create(2).await.status, 201);
    assert_eq!(event_id(&next_text(&mut here).await), 2);
    assert_eq!(event_id(&next_text(&mut there).await), 2);

    redis.start();
    let mut resumed_within = Duration::ZERO;
    for node in &nodes {
        resumed_within = resumed_within
            .max(until_ready(node, "Redis back", |ready| ready["redis"] == "up").await);
    }
    assert!(
        resumed_within < Duration::from_secs(5),
        "took {resumed_within:?}"
    );
    assert_eq!(nodes[1].create(3).await.status, 201);
    assert_eq!(events(&mut here, 1).await, events(&mut there, 1).await);
    assert_quiet(&mut here).await;

    // Each node counts every event once, its own and the other's; the one
    // that came through the log while Redis was down, and the outage.
    for node in &nodes {
        let metrics = scrape(node.addr).await;
        let new_product = [("type", "new_product")];
        assert_eq!(
            metrics.get("ocha_events_published_total", &new_product),
            3.0
        );
        assert_eq!(metrics.get("ocha_redis_connected", &[]), 1.0);
        assert!(metrics.get("ocha_redis_outages_total", &[]) >= 1.0);
    }
    let second = scrape(nodes[1].addr).await;
    assert!(second.get("ocha_relay_events_from_log_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_by_a_node_killed_at_once_still_reaches_everyone_once() {
    let postgres = PostgresServer::new();
    let redis = RedisServer::new();
    let mut doomed = Node::start(&postgres, Some(&redis)).await;
    let survivor = Node::start(&postgres, Some(&redis)).await;
    for node in [&doomed, &survivor] {
        until_ready(node, "Redis up", |ready| ready["redis"] == "up").await;
    }
    let (mut on_doomed, welcome) = ws_resume(doomed.addr, "").await;
    assert_eq!(welcome, welcome_at(0));
    let mut on_survivor = ws_connect(survivor.addr).await;

    // Redis holds the doomed node's publish, so only the log can tell the
    // survivor; then the node dies right after its commit.
    redis::command(redis.port(), "CLIENT PAUSE 3000 WRITE");
    let reply = doomed.create(1).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    doomed.process.start_kill().expect("SIGKILL the node");
    doomed.process.wait().await.expect("the node exits");
    redis::command(redis.port(), "CLIENT UNPAUSE");

    let event = events(&mut on_survivor, 1).await.remove(0);
    assert_eq!(event_id(&event), 1);
    // The doomed node's client got it or not before its socket died; it
    // resumes on the survivor from what it last saw.
    let mut got = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(QUIET, futures_util::StreamExt::next(&mut on_doomed)).await
    {
        if let Ok(tokio_tungstenite::tungstenite::Message::Text(text)) = message {
            got.push(text.to_string());
        }
    }
    let since = got.last().map_or(0, |event| event_id(event));
    let (mut resumed, welcome) = ws_resume(survivor.addr, &since.to_string()).await;
    assert_eq!(welcome, welcome_at(1));
    got.extend(events(&mut resumed, 1 - got.len()).await);
    assert_eq!(got, [event]);

    // A restarted node carries on with the next id.
    let restarted = Node::start(&postgres, Some(&redis)).await;
    until_ready(&restarted, "Redis up", |ready| ready["redis"] == "up").await;
    assert_eq!(restarted.create(2).await.status, 201);
    for ws in [&mut on_survivor, &mut resumed] {
        assert_eq!(event_id(&events(ws, 1).await.remove(0)), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_each_dependency_and_a_lost_database_answers_503() {
    let mut postgres = PostgresServer::new();
    let redis = RedisServer::new();
    let node = Node::start(&postgres, Some(&redis)).await;
    until_ready(&node, "Redis up", |ready| ready["redis"] == "up").await;
    let ready = get(node.addr, "/api/v1/ready").await;
    ready.assert_json(
        200,
        r#"{"status":"ready","database":"up","redis":"up","lastEventId":"0"}"#,
    );
    let dir = TempDir::new("alone");
    let (_alone, alone) = start_binary(&dir).await;
    get(alone, "/api/v1/ready").await.assert_json(
        200,
        r#"{"status":"ready","database":"up","redis":"off","lastEventId":"0"}"#,
    );

    postgres.stop();
    get(node.addr, "/api/v1/ready").await.assert_json(
        503,
        r#"{"status":"unavailable","database":"down","redis":"up","lastEventId":"0"}"#,
    );
    let refused = node.create(1).await;
    refused.assert_json(503, r#"{"message":"Service unavailable"}"#);
    get(node.addr, "/api/v1/products")
        .await
        .assert_json(503, r#"{"message":"Service unavailable"}"#);
    assert_healthy(node.addr).await;

    postgres.start();
    until_ready(&node, "database back", |ready| ready["database"] == "up").await;
    assert_eq!(node.create(1).await.status, 201);
}
