//! Publishing events to connected clients, over real sockets.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;

use futures_util::task::noop_waker;
use futures_util::{SinkExt, StreamExt};
use ocha_realtime::{Admission, Config, Hub, OCHA_WELCOME};
use support::{
    assert_quiet, connect, duplex_client, next, next_text, product, product_name, serve,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn every_client_gets_each_event_once_in_order() {
    let (hub, addr) = serve(Config::default()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(addr, "/", OCHA_WELCOME).await);
    }
    let first = product("Matcha Latte", 10);
    let expected_text = support::product_json("Matcha Latte", 10);
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

/// Connects a client with a small receive window that never reads, then
/// publishes 4 KiB events, each after the hub had time to write the last,
/// until the client is dropped from the fan-out; returns that event's index.
async fn events_until_a_non_reader_is_dropped(hub: &Hub, addr: SocketAddr) -> usize {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), stream)
        .await
        .unwrap();
    assert_eq!(next_text(&mut client).await, OCHA_WELCOME);
    for i in 0..5_000 {
        if hub.publish(&product(&format!("Tea {i}"), 4096)) == 0 {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("a client that never reads was never dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_axum_serve_tuned_sockets_keep_a_non_reader_bounded() {
    use axum::serve::ListenerExt;

    let hub = Hub::default();
    let app = axum::Router::new()
        .route("/", axum::routing::get(support::axum_upgrade))
        .with_state(hub.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tuner = hub.clone();
    let listener = listener.tap_io(move |socket| tuner.tune(socket));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 256 queued plus what the capped kernel buffers hold, as over plain
    // hyper; untuned, Linux would absorb about a thousand of these events.
    let dropped_at = events_until_a_non_reader_is_dropped(&hub, addr).await;
    assert!(dropped_at < 300, "dropped only at event {dropped_at}");
    assert_eq!(hub.stats().slow_consumer_closes, 1);
}

#[tokio::test]
async fn a_ping_while_a_full_batch_is_in_flight_is_answered_after_it() {
    let hub = Hub::new(Config::default().outbound_capacity(4));
    // A pipe far smaller than the batch, so the batch stays in flight.
    let mut client = duplex_client(&hub, 256).await;
    assert_eq!(next_text(&mut client).await, OCHA_WELCOME);
    for i in 0..4 {
        assert_eq!(hub.publish(&product(&format!("Tea {i}"), 1000)), 1);
    }
    // The connection takes the whole batch and blocks writing it.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    client
        .send(Message::Ping(b"still here".to_vec().into()))
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    for i in 0..4 {
        assert_eq!(
            product_name(&next_text(&mut client).await),
            format!("Tea {i}")
        );
    }
    match next(&mut client).await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"still here"),
        other => panic!("expected the pong, got {other:?}"),
    }
    assert_eq!(hub.stats().slow_consumer_closes, 0);
}

/// A waker that, when a publish wakes its connection, stalls the publisher
/// right there, in the middle of the fan-out, until released.
struct StallingWaker {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Wake for StallingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self
            .release
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
    }
}

#[test]
fn connects_and_disconnects_do_not_wait_for_a_fan_out() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Registering a connection starts the hub's heartbeat task.
    let _runtime = runtime.enter();
    let hub = Hub::default();

    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let stalling = Waker::from(Arc::new(StallingWaker {
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    }));
    let (_stalled_client, io) = tokio::io::duplex(1024);
    let mut stalled = Box::pin(hub.serve(io, Admission::anonymous()));
    assert!(stalled
        .as_mut()
        .poll(&mut Context::from_waker(&stalling))
        .is_pending());
    let (_leaving_client, io) = tokio::io::duplex(1024);
    let leaving_hub = hub.clone();
    let mut leaving = Box::pin(async move { leaving_hub.serve(io, Admission::anonymous()).await });
    assert!(leaving
        .as_mut()
        .poll(&mut Context::from_waker(&noop_waker()))
        .is_pending());

    let publisher = std::thread::spawn({
        let hub = hub.clone();
        move || hub.publish(&product("Hojicha", 10))
    });
    entered
        .recv_timeout(Duration::from_secs(5))
        .expect("the publish wakes the stalled connection");

    // Mid-fan-out, a client joins and another leaves.
    let (done_tx, done) = mpsc::channel();
    let runtime_handle = runtime.handle().clone();
    let joining_hub = hub.clone();
    std::thread::spawn(move || {
        let _runtime = runtime_handle.enter();
        let (_client, io) = tokio::io::duplex(1024);
        let mut joining = Box::pin(joining_hub.serve(io, Admission::anonymous()));
        let _ = joining
            .as_mut()
            .poll(&mut Context::from_waker(&noop_waker()));
        drop(leaving);
        let _ = done_tx.send(());
    });
    let waited = done.recv_timeout(Duration::from_secs(2));
    release.send(()).unwrap();
    // Later wakes (the pipes closing) find nothing to wait for.
    drop(release);
    publisher.join().unwrap();
    assert!(
        waited.is_ok(),
        "a connect and a disconnect waited for the fan-out"
    );
}

/// The fan-out writes events straight to an idle connection's socket; once
/// the socket is full one of them goes in part, and the connection must
/// finish that frame before anything else, pongs included. One thread: the
/// connection's task runs only after each ping and event are in.
#[tokio::test]
async fn a_frame_the_socket_took_in_part_is_finished_before_the_next() {
    const EVENTS: usize = 300;
    let (hub, addr) = serve(Config::default().outbound_capacity(EVENTS)).await;
    // A small receive window and no reading: the server's socket fills up.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    client
        .write_all(support::upgrade_request("").as_bytes())
        .await
        .unwrap();
    support::read_until(&mut client, OCHA_WELCOME.as_bytes()).await;

    for i in 0..EVENTS {
        // The connection is idle, so the fan-out writes to its socket, and
        // the ping waiting there is answered once the task runs, after.
        client
            .write_all(&support::client_frame(0x89, format!("ping {i}").as_bytes()))
            .await
            .unwrap();
        assert_eq!(hub.publish(&product(&format!("Tea {i:03}"), 1000)), 1);
        tokio::time::sleep(Duration::from_micros(200)).await;
    }

    let mut client = tokio_tungstenite::WebSocketStream::from_raw_socket(
        client,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let (mut events, mut pongs) = (0, 0);
    while events < EVENTS {
        match next(&mut client).await {
            Message::Text(text) => {
                assert_eq!(product_name(&text), format!("Tea {events:03}"));
                events += 1;
            }
            Message::Pong(payload) => {
                assert!(payload.starts_with(b"ping "), "{payload:?}");
                pongs += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pongs > 0, "no pong came back");
    assert_eq!(hub.stats().slow_consumer_closes, 0);
}

/// A fan-out to more connections than one thread takes is shared out over
/// threads; every client still gets every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_shared_over_threads_reaches_everyone_in_order() {
    const CLIENTS: usize = 2_500;
    const EVENTS: usize = 5;
    let (hub, addr) = serve(Config::default()).await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut client = support::connect_mute(addr).await;
        support::read_until(&mut client, OCHA_WELCOME.as_bytes()).await;
        clients.push(client);
    }
    for i in 0..EVENTS {
        assert_eq!(hub.publish(&product(&format!("Tea {i}"), 10)), CLIENTS);
        // Apart, so that each fan-out writes directly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: Vec<u8> = (0..EVENTS)
        .flat_map(|i| {
            let json = support::product_json(&format!("Tea {i}"), 10);
            let mut frame = vec![0x81, json.len() as u8];
            frame.extend_from_slice(json.as_bytes());
            frame
        })
        .collect();
    for mut client in clients {
        let mut received = vec![0; expected.len()];
        let read = tokio::io::AsyncReadExt::read_exact(&mut client, &mut received);
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("every event in time")
            .unwrap();
        assert_eq!(received, expected);
    }
}
