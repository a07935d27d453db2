//! Connections coming and going: disconnects, heartbeats, limits, shutdown.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ocha_realtime::{Config, Hub, OCHA_WELCOME};
use support::{
    client_frame, connect, duplex_client, duplex_raw, eventually, next, next_text, raw_request,
    read_to_end, read_until, serve, upgrade_request,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn closed_and_dropped_clients_are_deregistered() {
    let (hub, addr) = serve(Config::default()).await;
    let mut polite = connect(addr, "/", OCHA_WELCOME).await;
    let abrupt = connect(addr, "/", OCHA_WELCOME).await;
    assert_eq!(hub.stats().connections, 2);

    polite.close(None).await.unwrap();
    // The server completes the close handshake by answering in kind.
    assert!(matches!(next(&mut polite).await, Message::Close(_)));
    drop(abrupt);

    eventually("every client is deregistered", || {
        hub.stats().connections == 0
    })
    .await;
    assert_eq!(hub.publish(&support::product("Nobody", 1)), 0);
    assert_eq!(hub.stats().accepted, 2);
}

#[tokio::test(start_paused = true)]
async fn pings_are_answered_and_silent_peers_time_out() {
    let interval = Duration::from_secs(30);
    let hub = Hub::new(Config::default().heartbeat_interval(interval));

    // tungstenite answers the hub's pings while it reads.
    let mut live = duplex_client(&hub, 64 * 1024).await;
    assert_eq!(next_text(&mut live).await, OCHA_WELCOME);
    live.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        let mut pong = None;
        let deadline = tokio::time::sleep(10 * interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                message = live.next() => match message {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(Message::Pong(payload))) => pong = Some(payload),
                    other => panic!("unexpected {other:?}"),
                },
            }
        }
        (pings, pong, live)
    });

    // A raw client that never answers.
    let mut silent = duplex_raw(&hub, 64 * 1024);
    let started = Instant::now();
    read_to_end(&mut silent, 10 * interval).await;
    let silent_for = started.elapsed();
    // Silent for two intervals, dropped at the next ping.
    assert!(
        silent_for >= 2 * interval && silent_for <= 3 * interval,
        "dropped after {silent_for:?}"
    );
    assert_eq!(hub.stats().heartbeat_timeouts, 1);

    let (pings, pong, _live) = reader.await.unwrap();
    assert!(pings >= 9, "the hub pinged every interval: {pings} in 10");
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    assert_eq!(hub.stats().connections, 1, "the live client stays");
}

#[tokio::test(start_paused = true)]
async fn a_zero_heartbeat_interval_is_raised_and_still_drops_silent_peers() {
    let hub = Hub::new(Config::default().heartbeat_interval(Duration::ZERO));
    let mut silent = duplex_raw(&hub, 64 * 1024);
    read_to_end(&mut silent, Duration::from_secs(1)).await;
    assert_eq!(hub.stats().heartbeat_timeouts, 1);
}

#[tokio::test]
async fn a_closing_connection_gets_no_more_events_and_is_not_counted_slow() {
    let hub = Hub::new(Config::default().max_message_size(16).outbound_capacity(4));
    let mut client = duplex_raw(&hub, 64 * 1024);
    read_until(&mut client, OCHA_WELCOME.as_bytes()).await;
    client
        .write_all(&client_frame(0x81, &[b'x'; 17]))
        .await
        .unwrap();
    // The hub answers 1009 "message too big" and waits for a close reply
    // that never comes.
    read_until(&mut client, b"\x88\x11\x03\xf1message too big").await;
    for i in 0..10 {
        assert_eq!(hub.publish(&support::product("Late", 10)), 0, "event {i}");
    }
    let stats = hub.stats();
    assert_eq!((stats.deliveries, stats.slow_consumer_closes), (0, 0));
}

#[tokio::test]
async fn an_oversize_message_closes_with_1009() {
    // A close timeout far beyond the test's patience: the hub must notice
    // the client's answer, not time out.
    let config = Config::default()
        .max_message_size(1024)
        .close_timeout(Duration::from_secs(3600));
    let (hub, addr) = serve(config).await;
    let mut client = connect(addr, "/", OCHA_WELCOME).await;
    client.send(Message::text("x".repeat(1024))).await.unwrap();
    client.send(Message::text("x".repeat(1025))).await.unwrap();
    match next(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // Reading on answers the close; the hub recognizes the answer behind
    // the refused message and hangs up at once.
    let end = tokio::time::timeout(Duration::from_secs(5), client.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    eventually("the client is gone", || hub.stats().connections == 0).await;
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001_and_refuses_newcomers() {
    let (hub, addr) = serve(Config::default()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(addr, "/", OCHA_WELCOME).await);
    }
    hub.publish(&support::product("Last call", 10));
    let closers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                // What was queued before the shutdown still arrives first.
                let last = support::next_text(&mut client).await;
                let close = next(&mut client).await;
                // Finishing the close handshake lets the hub's shutdown return.
                let _ = client.close(None).await;
                (last, close)
            })
        })
        .collect();

    let started = Instant::now();
    hub.shutdown(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "returned once all were gone"
    );
    assert_eq!(hub.stats().connections, 0);
    for closer in closers {
        let (last, close) = closer.await.unwrap();
        assert_eq!(support::product_name(&last), "Last call");
        match close {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    let refused = raw_request(addr, &upgrade_request("")).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_the_close_is_dropped_at_the_close_timeout() {
    let close_timeout = Duration::from_millis(300);
    let hub = Hub::new(Config::default().close_timeout(close_timeout));
    let _mute = duplex_raw(&hub, 64 * 1024);
    eventually("it is connected", || hub.stats().connections == 1).await;
    let started = Instant::now();
    hub.shutdown(Duration::from_secs(5)).await;
    assert_eq!(started.elapsed(), close_timeout);
    assert_eq!(hub.stats().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_returns_at_its_deadline() {
    let hub = Hub::new(Config::default());
    let _mute = duplex_raw(&hub, 64 * 1024);
    eventually("it is connected", || hub.stats().connections == 1).await;
    let started = Instant::now();
    hub.shutdown(Duration::from_millis(300)).await;
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test]
async fn a_protocol_error_closes_with_1002() {
    let (hub, addr) = serve(Config::default()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = upgrade_request("").into_bytes();
    // An unmasked text frame: clients must mask.
    request.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    stream.write_all(&request).await.unwrap();
    read_until(&mut stream, b"\x88\x10\x03\xeaprotocol error").await;
    drop(stream);
    eventually("the client is gone", || hub.stats().connections == 0).await;
}
