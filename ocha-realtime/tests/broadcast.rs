//! Publishing events to connected clients, over real sockets.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use ocha_realtime::tungstenite::protocol::frame::coding::CloseCode;
use ocha_realtime::tungstenite::Message;
use ocha_realtime::{Config, OCHA_WELCOME};
use support::{assert_quiet, connect, next_text, product, product_name, serve};
use tokio::net::TcpSocket;

#[tokio::test]
async fn every_client_gets_each_event_once_in_order() {
    let (hub, addr) = serve(Config::default()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(addr, "/", OCHA_WELCOME).await);
    }
    let first = product("Matcha Latte", 10);
    let expected_text = serde_json::to_string(&first).unwrap();
    assert_eq!(hub.publish(&first), 3);
    for name in ["Hojicha", "Genmaicha"] {
        assert_eq!(hub.publish(&product(name, 10)), 3);
    }
    for client in &mut clients {
        assert_eq!(next_text(client).await, expected_text);
        assert_eq!(product_name(&next_text(client).await), "Hojicha");
        assert_eq!(product_name(&next_text(client).await), "Genmaicha");
        assert_quiet(client).await;
    }
    let stats = hub.stats();
    assert_eq!((stats.events_published, stats.deliveries), (3, 9));
}

#[tokio::test]
async fn a_client_that_joins_later_gets_only_later_events() {
    let (hub, addr) = serve(Config::default()).await;
    let mut early = connect(addr, "/", OCHA_WELCOME).await;
    assert_eq!(hub.publish(&product("Before", 10)), 1);
    let mut late = connect(addr, "/", OCHA_WELCOME).await;
    assert_eq!(hub.publish(&product("After", 10)), 2);
    assert_eq!(product_name(&next_text(&mut early).await), "Before");
    assert_eq!(product_name(&next_text(&mut early).await), "After");
    assert_eq!(product_name(&next_text(&mut late).await), "After");
    assert_quiet(&mut late).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_slow_and_others_get_everything() {
    const EVENTS: usize = 1_000;
    // Defaults: 256 queued messages and a 32 KiB kernel send buffer.
    let (hub, addr) = serve(Config::default()).await;

    // A small receive window, so the kernel soon stops absorbing frames.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
        .await
        .unwrap();
    assert_eq!(next_text(&mut slow).await, OCHA_WELCOME);

    // Each reader counts what it has read, so the publisher can stay a
    // window ahead of the slowest one, whatever the machine's speed.
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..10 {
        let mut client = connect(addr, "/", OCHA_WELCOME).await;
        let read = Arc::new(AtomicUsize::new(0));
        progress.push(read.clone());
        readers.push(tokio::spawn(async move {
            let mut names = Vec::with_capacity(EVENTS);
            while names.len() < EVENTS {
                names.push(product_name(&next_text(&mut client).await));
                read.fetch_add(1, Ordering::Release);
            }
            names
        }));
    }

    const WINDOW: usize = 64;
    let mut slow_closed_at = None;
    for i in 0..EVENTS {
        let readers_caught_up = async {
            while progress
                .iter()
                .any(|read| read.load(Ordering::Acquire) + WINDOW < i)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), readers_caught_up)
            .await
            .unwrap_or_else(|_| panic!("readers stalled before event {i}"));
        let reached = hub.publish(&product(&format!("Tea {i}"), 4096));
        if reached == 10 && slow_closed_at.is_none() {
            slow_closed_at = Some(i);
        }
    }
    // 256 queued plus what the capped kernel buffers hold (~64 KiB of
    // 4 KiB events); an uncapped send buffer would take them all.
    let closed_at = slow_closed_at.expect("the slow client was dropped from the fan-out");
    assert!(closed_at < 300, "closed only at event {closed_at}");
    assert_eq!(hub.stats().slow_consumer_closes, 1);

    let expected: Vec<String> = (0..EVENTS).map(|i| format!("Tea {i}")).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }

    // The slow client finds, after what the kernel buffered, the close frame.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => continue,
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(close.code, CloseCode::Library(4008));
    assert_eq!(close.reason, "slow consumer");
    // Reading on sends tungstenite's close reply, which ends the connection.
    assert!(slow.next().await.is_none());
    drop(slow);
    support::eventually("every client is gone", || hub.stats().connections == 0).await;
}
