//! What a connection holds once a burst of events has drained, counted by
//! the allocator. Alone in its test binary, so no other test allocates
//! while it measures.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use ocha_realtime::{Config, OCHA_WELCOME};
use support::{connect_mute, eventually, product, read_until, serve};
use tokio::io::AsyncReadExt;

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

#[tokio::test]
async fn after_a_burst_drains_each_connection_is_back_to_its_idle_size() {
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
