//! What a hub holds once a burst of events has drained, and once thousands
//! of connections have come and gone, counted by the allocator. These tests
//! have their binary to themselves and run one at a time, so nothing else
//! allocates while they measure.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use ocha_realtime::{Admission, Config, Hub, OCHA_WELCOME};
use support::{connect_mute, eventually, product, read_until, serve, serve_events, Io};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The system allocator, counting the bytes in use.
struct Counting;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held by each test while it measures.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn after_a_burst_drains_each_connection_is_back_to_its_idle_size() {
    let _alone = MEASURING.lock().await;
    const CLIENTS: usize = 50;
    const EVENTS: usize = 300;
    // Room for the whole burst, so nobody is closed as slow.
    let (hub, addr) = serve(Config::default().outbound_capacity(EVENTS)).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = connect_mute(addr).await;
        read_until(&mut client, OCHA_WELCOME.as_bytes()).await;
        clients.push(client);
    }
    eventually("all are connected", || hub.stats().connections == CLIENTS).await;
    // Warm up: one event through every connection, so both measurements
    // include whatever the first event allocates for good.
    // A frame of 4 KiB has a 4-byte header.
    let frame_len = |name: &str| support::product_json(name, 4096).len() + 4;
    assert_eq!(hub.publish(&product("Warm-up", 4096)), CLIENTS);
    for client in &mut clients {
        read_exactly(client, frame_len("Warm-up")).await;
    }
    let idle = IN_USE.load(Ordering::Relaxed);

    // The clients do not read while the burst is published, so it piles
    // up in the connections' queues beyond what the kernel buffers hold.
    let names: Vec<_> = (0..EVENTS).map(|i| format!("Tea {i:03}")).collect();
    for name in &names {
        assert_eq!(hub.publish(&product(name, 4096)), CLIENTS);
    }
    let burst_len: usize = names.iter().map(|name| frame_len(name)).sum();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                read_exactly(&mut client, burst_len).await;
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for reader in readers {
        clients.push(reader.await.unwrap());
    }
    let drained = IN_USE.load(Ordering::Relaxed);

    let per_connection = (drained - idle) / CLIENTS as isize;
    assert!(
        per_connection < 512,
        "each connection still holds {per_connection} more bytes after the burst"
    );
    assert_eq!(hub.stats().slow_consumer_closes, 0);
    drop(clients);
}

/// Reads exactly `len` bytes, failing after ten seconds.
async fn read_exactly(client: &mut tokio::net::TcpStream, mut len: usize) {
    let mut sink = [0; 8192];
    let read = async {
        while len > 0 {
            let n = client.read(&mut sink[..len.min(8192)]).await.unwrap();
            assert_ne!(n, 0, "the server hung up");
            len -= n;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the events arrive within 10 s");
}

#[tokio::test]
async fn ten_thousand_connects_and_disconnects_leave_nothing_behind() {
    let _alone = MEASURING.lock().await;
    let hub = Hub::new(Config::default().without_welcome());
    // Warm-up: the same users and channels, so every map has grown to its
    // working size before the baseline.
    come_and_go(&hub, 1_000).await;
    let baseline = IN_USE.load(Ordering::Relaxed);
    come_and_go(&hub, 10_000).await;
    let stats = hub.stats();
    assert_eq!((stats.connections, stats.channels, stats.users), (0, 0, 0));
    assert_eq!(hub.channel_connections("everyone"), 0);
    assert_eq!(hub.user_connections("user 7"), 0);
    let grown = IN_USE.load(Ordering::Relaxed) - baseline;
    assert!(
        grown < 16 * 1024,
        "{grown} bytes more after 10,000 connections"
    );
}

/// Opens `count` connections, a hundred at a time, of 100 users in 50
/// channels and one channel they all share, and closes them.
async fn come_and_go(hub: &Hub, count: usize) {
    for batch in (0..count).collect::<Vec<_>>().chunks(100) {
        let mut clients = Vec::new();
        let mut connections = Vec::new();
        for &i in batch {
            let (client, server) = tokio::io::duplex(1024);
            let admission = Admission::user(format!("user {}", i % 100))
                .channel(format!("room {}", i % 50))
                .channel("everyone");
            let hub = hub.clone();
            connections.push(tokio::spawn(
                async move { hub.serve(server, admission).await },
            ));
            clients.push(client);
        }
        eventually("the batch is in", || {
            hub.channel_connections("everyone") == batch.len()
        })
        .await;
        drop(clients);
        for connection in connections {
            connection.await.unwrap();
        }
    }
}

#[tokio::test]
async fn an_idle_event_stream_holds_no_more_than_an_idle_websocket() {
    let _alone = MEASURING.lock().await;
    let hub = Hub::default();
    // Event streams take their socket from hyper, as ocha-server's do.
    let addr = serve_events(hub.clone(), Io::Handoff).await;
    let upgrade = support::upgrade_request("");
    let stream = "GET /events HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n";
    // Warm-up: what the first connections of each kind grow for good.
    for (request, greeting) in [(upgrade.as_str(), OCHA_WELCOME), (stream, "id: 0\n\n\r\n")] {
        drop(held_per_client(&hub, addr, request, greeting).await);
        eventually("the warm-up clients are gone", || {
            hub.stats().connections == 0
        })
        .await;
    }
    let (websocket, _websockets) = held_per_client(&hub, addr, &upgrade, OCHA_WELCOME).await;
    let (event_stream, _streams) = held_per_client(&hub, addr, stream, "id: 0\n\n\r\n").await;
    eprintln!("idle: {websocket} bytes a WebSocket, {event_stream} bytes an event stream");
    assert!(
        event_stream <= websocket,
        "an idle event stream holds {event_stream} bytes, a WebSocket {websocket}"
    );
}

/// Bytes in use per client once 200 more clients, each sending `request`
/// and greeted with `greeting`, are connected and idle; and the clients.
async fn held_per_client(
    hub: &Hub,
    addr: std::net::SocketAddr,
    request: &str,
    greeting: &str,
) -> (isize, Vec<tokio::net::TcpStream>) {
    const CLIENTS: usize = 200;
    let open = hub.stats().connections;
    let before = IN_USE.load(Ordering::Relaxed);
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        read_until(&mut client, greeting.as_bytes()).await;
        clients.push(client);
    }
    eventually("all are connected", || {
        hub.stats().connections == open + CLIENTS
    })
    .await;
    // The tasks hyper served them on are over by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held = (IN_USE.load(Ordering::Relaxed) - before) / CLIENTS as isize;
    (held, clients)
}
