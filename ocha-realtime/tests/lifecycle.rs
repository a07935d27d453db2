//! Connections coming and going: disconnects, heartbeats, limits, shutdown.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ocha_realtime::tungstenite::protocol::frame::coding::CloseCode;
use ocha_realtime::tungstenite::Message;
use ocha_realtime::{Config, OCHA_WELCOME};
use support::{connect, connect_mute, eventually, next, raw_request, serve, upgrade_request};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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

#[tokio::test]
async fn pings_are_answered_and_silent_peers_time_out() {
    let interval = Duration::from_millis(100);
    let (hub, addr) = serve(Config::default().heartbeat_interval(interval)).await;

    // tungstenite answers the hub's pings while it reads.
    let mut live = connect(addr, "/", OCHA_WELCOME).await;
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

    // A raw client that completes the handshake and then never answers.
    let mut silent = connect_mute(addr).await;
    let started = Instant::now();
    let mut sink = vec![0; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), silent.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the silent peer was never dropped"),
        }
    }
    let silent_for = started.elapsed();
    assert!(
        silent_for >= 2 * interval,
        "dropped too early: {silent_for:?}"
    );
    assert!(
        // Generous: a loaded CI machine may run the ticker late.
        silent_for < 20 * interval,
        "dropped too late: {silent_for:?}"
    );
    assert_eq!(hub.stats().heartbeat_timeouts, 1);

    let (pings, pong, _live) = reader.await.unwrap();
    assert!(pings >= 3, "the hub pinged every interval: {pings} in 10");
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]));
    assert_eq!(hub.stats().connections, 1, "the live client stays");
}

#[tokio::test]
async fn an_oversize_message_closes_with_1009() {
    let (hub, addr) = serve(Config::default().max_message_size(1024)).await;
    let mut client = connect(addr, "/", OCHA_WELCOME).await;
    client.send(Message::text("x".repeat(1024))).await.unwrap();
    client.send(Message::text("x".repeat(1025))).await.unwrap();
    match next(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // Reading on answers the close; the hub recognizes the answer behind
    // the refused message and hangs up at once.
    let started = Instant::now();
    assert!(client.next().await.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
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

#[tokio::test]
async fn a_client_that_never_answers_the_close_is_dropped_at_the_close_timeout() {
    let close_timeout = Duration::from_millis(300);
    let (hub, addr) = serve(Config::default().close_timeout(close_timeout)).await;
    let _mute = connect_mute(addr).await;
    eventually("it is connected", || hub.stats().connections == 1).await;
    let started = Instant::now();
    hub.shutdown(Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(
        waited >= close_timeout && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(hub.stats().connections, 0);
}

#[tokio::test]
async fn shutdown_returns_at_its_deadline() {
    let (hub, addr) = serve(Config::default()).await;
    let _mute = connect_mute(addr).await;
    eventually("it is connected", || hub.stats().connections == 1).await;
    let started = Instant::now();
    hub.shutdown(Duration::from_millis(300)).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_protocol_error_closes_with_1002() {
    let (hub, addr) = serve(Config::default()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = upgrade_request("").into_bytes();
    // An unmasked text frame: clients must mask.
    request.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &request)
        .await
        .unwrap();
    let mut received = Vec::new();
    let close_1002 = [0x88, 0x10, 0x03, 0xea];
    while !received.windows(4).any(|w| w == close_1002) {
        let mut chunk = [0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a close frame within 5 s")
            .unwrap();
        assert_ne!(n, 0, "closed without a close frame: {received:?}");
        received.extend_from_slice(&chunk[..n]);
    }
    drop(stream);
    eventually("the client is gone", || hub.stats().connections == 0).await;
}
