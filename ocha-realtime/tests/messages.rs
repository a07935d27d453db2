//! Messages from clients, handed to the application's handler, over real
//! sockets.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use ocha_realtime::{Config, ConnectionId, Frame, Hub, Message};
use support::{client_frame, connect_mute, next, read_until, serve, serve_hub, upgrade_request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn echo_hub(config: Config) -> Hub {
    Hub::builder(config.without_welcome())
        .on_message(|hub, from, message| async move {
            hub.send(from, &Frame::from(&message));
        })
        .build()
}

#[tokio::test]
async fn each_message_goes_back_to_its_sender_only() {
    let addr = serve_hub(echo_hub(Config::default())).await;
    let url = format!("ws://{addr}/");
    let (mut alice, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut bob, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    alice.send(WsMessage::text("Connecté")).await.unwrap();
    alice
        .send(WsMessage::binary(vec![0u8, 1, 255]))
        .await
        .unwrap();
    bob.send(WsMessage::text("")).await.unwrap();

    assert_eq!(next(&mut alice).await, WsMessage::text("Connecté"));
    assert_eq!(next(&mut alice).await, WsMessage::binary(vec![0u8, 1, 255]));
    assert_eq!(next(&mut bob).await, WsMessage::text(""));
    support::assert_quiet(&mut bob).await;
}

#[tokio::test]
async fn fragments_are_reassembled_up_to_the_limit_and_the_sender_is_named() {
    let (seen, mut messages) = mpsc::unbounded_channel();
    let config = Config::default().without_welcome().max_message_size(9);
    let hub = Hub::builder(config)
        .on_message(move |_hub, from, message| {
            let seen = seen.clone();
            async move {
                let _ = seen.send((from, message));
            }
        })
        .build();
    let addr = serve_hub(hub.clone()).await;
    let mut first = connect_mute(addr).await;
    let mut second = connect_mute(addr).await;

    // "Connecté" is 9 bytes, the limit; "é" is split across frames.
    let mut fragmented = client_frame(0x01, b"Conn");
    fragmented.extend(client_frame(0x89, b"ping between fragments"));
    fragmented.extend(client_frame(0x00, b"ect\xc3"));
    fragmented.extend(client_frame(0x80, b"\xa9"));
    second.write_all(&fragmented).await.unwrap();
    let (second_id, message) = messages.recv().await.unwrap();
    assert_eq!(message, Message::Text("Connect\u{e9}".into()));

    first
        .write_all(&client_frame(0x82, b"12345678"))
        .await
        .unwrap();
    let (first_id, message) = messages.recv().await.unwrap();
    assert_eq!(
        message,
        Message::Binary(bytes::Bytes::from_static(b"12345678"))
    );
    assert_ne!(first_id, second_id);

    first
        .write_all(&client_frame(0x01, b"12345"))
        .await
        .unwrap();
    first
        .write_all(&client_frame(0x80, b"67890"))
        .await
        .unwrap();
    read_until(&mut first, b"\x88\x11\x03\xf1message too big").await;
    assert!(messages.try_recv().is_err(), "nothing over the limit");
    assert!(!hub.send(first_id, &Frame::text("too late")));
    assert!(hub.send(second_id, &Frame::text("still open")));
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_before_the_message_ends() {
    let addr = serve_hub(echo_hub(Config::default())).await;
    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    // The first fragment already holds a byte that cannot start a character.
    let fragment = WsFrame::message(b"ok \xff".to_vec(), OpCode::Data(Data::Text), false);
    client.send(WsMessage::Frame(fragment)).await.unwrap();
    match next(&mut client).await {
        WsMessage::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Invalid),
        other => panic!("expected close 1007, got {other:?}"),
    }
}

#[tokio::test]
async fn a_busy_handler_pauses_its_connection_without_buffering() {
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(Mutex::new(Vec::<ConnectionId>::new()));
    let config = Config::default()
        .without_welcome()
        .max_message_size(1 << 20);
    let hub = Hub::builder(config)
        .on_message({
            let (gate, handled) = (gate.clone(), handled.clone());
            move |_hub, from, _message| {
                let (gate, handled) = (gate.clone(), handled.clone());
                async move {
                    gate.acquire().await.unwrap().forget();
                    handled.lock().unwrap().push(from);
                }
            }
        })
        .build();
    let addr = serve_hub(hub).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(upgrade_request("").as_bytes())
        .await
        .unwrap();
    read_until(&mut client, b"\r\n\r\n").await;

    // 32 messages of 1 MiB: far more than socket buffers hold. The first
    // is handed over and stalls; the hub must stop reading behind it, so
    // the client's writes stall too.
    let message = client_frame(0x82, &vec![7; 1 << 20]);
    let (mut reader, mut writer) = client.into_split();
    let writing = tokio::spawn(async move {
        for _ in 0..32 {
            writer.write_all(&message).await.unwrap();
        }
        writer
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!writing.is_finished(), "the hub read everything while busy");
    assert!(handled.lock().unwrap().is_empty());

    // Once the handler catches up, every message arrives, in order.
    gate.add_permits(32);
    let _writer = tokio::time::timeout(Duration::from_secs(10), writing)
        .await
        .expect("the writes complete once the handler is free")
        .unwrap();
    support::eventually("every message is handled", || {
        handled.lock().unwrap().len() == 32
    })
    .await;
    let mut nothing = [0; 1];
    let read = tokio::time::timeout(
        Duration::from_millis(100),
        tokio::io::AsyncReadExt::read(&mut reader, &mut nothing),
    )
    .await;
    assert!(read.is_err(), "the connection stays open: {read:?}");
}

#[tokio::test]
async fn a_hub_without_a_handler_discards_messages() {
    let (hub, addr) = serve(Config::default().max_message_size(1 << 20)).await;
    let mut client = connect_mute(addr).await;
    read_until(&mut client, ocha_realtime::OCHA_WELCOME.as_bytes()).await;
    client
        .write_all(&client_frame(0x81, &vec![b'x'; 1 << 20]))
        .await
        .unwrap();
    client
        .write_all(&client_frame(0x89, b"after"))
        .await
        .unwrap();
    read_until(&mut client, b"\x8a\x05after").await;
    assert_eq!(hub.stats().connections, 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_waiting_on_the_handler_is_not_dropped_as_silent() {
    let interval = Duration::from_secs(30);
    let config = Config::default()
        .without_welcome()
        .heartbeat_interval(interval);
    // A handler that never finishes.
    let hub = Hub::builder(config)
        .on_message(|_hub, _from, _message| std::future::pending())
        .build();
    let mut client = support::duplex_raw(&hub, 64 * 1024);
    client
        .write_all(&client_frame(0x81, b"slow"))
        .await
        .unwrap();
    tokio::time::sleep(10 * interval).await;
    let stats = hub.stats();
    assert_eq!((stats.connections, stats.heartbeat_timeouts), (1, 0));
}
