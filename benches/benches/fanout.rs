//! Fan-out cost: one `NewProduct` published to N connections, timed until
//! every client has read the whole frame (throughput per delivery), and
//! published to a 100-member channel among 10,000 connections next to all
//! of them (group `channel`, time per publish).
//!
//! The hub treats two kinds of connection differently, and the groups say
//! which they measure:
//!
//! - `fanout_tcp`: loopback TCP sockets upgraded through hyper, as in a
//!   server. The fan-out writes each frame to every idle socket itself, so
//!   this is the path of events that come apart; it includes the kernel's
//!   cost of both ends of each socket. Up to 5,000 clients: both ends share
//!   this process's open-file limit.
//! - `fanout` and `channel`: connections over `tokio::io::duplex`, which the
//!   fan-out cannot write to: it queues each frame and wakes the
//!   connection's task, which writes it. That is the path sockets take when
//!   events come faster than a fan-out takes; the figures are the hub's own
//!   cost (queueing, waking, writing), without the kernel's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ocha_realtime::{Admission, Config, Frame, Hub, OCHA_WELCOME};
use ocha_server::event::{Event, ExtraChf, Product, Size};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

fn event() -> Event {
    Event::NewProduct {
        product: Product {
            id: "65f1c0de0123456789abcdef".into(),
            slug: "matcha-latte".into(),
            name: "Matcha Latte".into(),
            category: "tea".into(),
            description: "Ceremonial-grade matcha whisked into steamed oat milk.".into(),
            base_price_chf: 6.5,
            is_active: true,
            image: "/uploads/matcha-latte.png".into(),
            size: vec![Size::S, Size::M, Size::L],
            extra_chf: ExtraChf::default(),
            created_at: "2026-11-27T17:48:28.123Z".into(),
            updated_at: "2026-11-27T17:48:28.123Z".into(),
        },
    }
}

/// Length of a server text frame carrying `payload` bytes.
fn frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

/// Counts clients that have read the current frame; wakes the bench when
/// the last one expected has.
struct Arrivals {
    count: AtomicUsize,
    all_in: Notify,
    expected: AtomicUsize,
}

/// Reads the welcome and then each event, counting arrivals.
async fn client(mut io: impl AsyncRead + Unpin, event_len: usize, arrivals: Arc<Arrivals>) {
    let mut welcome = vec![0; frame_len(OCHA_WELCOME.len())];
    io.read_exact(&mut welcome).await.unwrap();
    arrivals.arrive();
    let mut frame = vec![0; event_len];
    while io.read_exact(&mut frame).await.is_ok() {
        arrivals.arrive();
    }
}

impl Arrivals {
    fn new(expected: usize) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            count: AtomicUsize::new(0),
            all_in: Notify::new(),
            expected: AtomicUsize::new(expected),
        })
    }

    /// How many clients the next frame goes to.
    fn expect(&self, clients: usize) {
        self.expected.store(clients, Ordering::Release);
    }

    fn arrive(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.expected.load(Ordering::Acquire) {
            self.all_in.notify_one();
        }
    }

    async fn wait_all(&self) {
        self.all_in.notified().await;
        self.count.store(0, Ordering::Release);
    }
}

fn fanout(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let event = event();
    let event_len = frame_len(serde_json::to_vec(&event).unwrap().len());
    let mut group = c.benchmark_group("fanout");
    group.measurement_time(Duration::from_secs(5));
    for clients in [1, 100, 1_000, 10_000] {
        let hub = Hub::new(Config::default());
        let arrivals = Arrivals::new(clients);
        runtime.block_on(async {
            for _ in 0..clients {
                let (server, client_io) = tokio::io::duplex(16 * 1024);
                let hub = hub.clone();
                tokio::spawn(async move { hub.serve(server, Admission::anonymous()).await });
                tokio::spawn(client(client_io, event_len, arrivals.clone()));
            }
            arrivals.wait_all().await;
        });
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, _| {
            b.to_async(&runtime).iter_custom(|iterations| {
                timed_publishes(&hub, &arrivals, &event, Hub::publish, clients, iterations)
            });
        });
        runtime.block_on(hub.shutdown(Duration::from_secs(5)));
    }
    group.finish();
}

/// Serves WebSocket upgrades to `hub` on a loopback port, as a server built
/// on hyper does.
async fn serve_upgrades(hub: Hub) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let hub = hub.clone();
            let service = service_fn(move |request| {
                let upgrade = hub.upgrade(request).unwrap_or_else(|e| e.into_response());
                async move { Ok::<_, std::convert::Infallible>(upgrade) }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

/// Opens a WebSocket to `addr` and reads up to the end of the response
/// head, leaving the welcome to [`client`].
async fn connect_tcp(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    // Byte by byte, so that nothing after the head is taken from `client`.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

fn fanout_tcp(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let event = event();
    let event_len = frame_len(serde_json::to_vec(&event).unwrap().len());
    let mut group = c.benchmark_group("fanout_tcp");
    group.measurement_time(Duration::from_secs(5));
    for clients in [1, 100, 1_000, 5_000] {
        let hub = Hub::new(Config::default());
        let arrivals = Arrivals::new(clients);
        runtime.block_on(async {
            let addr = serve_upgrades(hub.clone()).await;
            for _ in 0..clients {
                let stream = connect_tcp(addr).await;
                tokio::spawn(client(stream, event_len, arrivals.clone()));
            }
            arrivals.wait_all().await;
        });
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_with_input(BenchmarkId::from_parameter(clients), &clients, |b, _| {
            b.to_async(&runtime).iter_custom(|iterations| {
                timed_publishes(&hub, &arrivals, &event, Hub::publish, clients, iterations)
            });
        });
        runtime.block_on(hub.shutdown(Duration::from_secs(5)));
    }
    group.finish();
}

/// Connections on the hub of the `channel` group.
const CONNECTIONS: usize = 10_000;
/// Of those, members of channel "c".
const MEMBERS: usize = 100;

/// What a publish to a channel costs on a large hub: `Hub::publish_to` a
/// 100-member channel among 10,000 connections, next to `Hub::publish` to
/// all 10,000 on the same hub. Each iteration is one publish, serialization
/// included, timed until every recipient has read the frame; criterion
/// reports the time per publish. Not measured: HTTP, the kernel's sockets
/// (see `benches/channels.sh` for both), concurrent publishes, and joining
/// or leaving channels.
fn channel(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let event = event();
    let event_len = frame_len(serde_json::to_vec(&event).unwrap().len());
    let hub = Hub::new(Config::default());
    let arrivals = Arrivals::new(CONNECTIONS);
    runtime.block_on(async {
        for i in 0..CONNECTIONS {
            // Members spread evenly over the hub, as they would join over time.
            let admission = if i % (CONNECTIONS / MEMBERS) == 0 {
                Admission::anonymous().channel("c")
            } else {
                Admission::anonymous()
            };
            let (server, client_io) = tokio::io::duplex(16 * 1024);
            let hub = hub.clone();
            tokio::spawn(async move { hub.serve(server, admission).await });
            tokio::spawn(client(client_io, event_len, arrivals.clone()));
        }
        arrivals.wait_all().await;
    });
    assert_eq!(hub.channel_connections("c"), MEMBERS);

    let mut group = c.benchmark_group("channel");
    group.measurement_time(Duration::from_secs(5));
    let targets: [(&str, usize, Publish); 2] = [
        ("publish_to 100 of 10000", MEMBERS, |hub, frame| {
            hub.publish_to("c", frame)
        }),
        ("publish to all 10000", CONNECTIONS, Hub::publish),
    ];
    for (name, recipients, publish) in targets {
        arrivals.expect(recipients);
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                timed_publishes(&hub, &arrivals, &event, publish, recipients, iterations)
            });
        });
    }
    group.finish();
    runtime.block_on(hub.shutdown(Duration::from_secs(5)));
}

/// A way to publish a frame; returns how many connections it reached.
type Publish = fn(&Hub, &Frame) -> usize;

/// Publishes `event` `iterations` times, each time waiting until all of its
/// `recipients` have read it, and returns the time taken.
async fn timed_publishes(
    hub: &Hub,
    arrivals: &Arrivals,
    event: &Event,
    publish: Publish,
    recipients: usize,
    iterations: u64,
) -> Duration {
    let started = Instant::now();
    for _ in 0..iterations {
        // Serializing is part of the cost of a publish.
        let frame = Frame::json(event).unwrap();
        assert_eq!(publish(hub, &frame), recipients);
        arrivals.wait_all().await;
    }
    started.elapsed()
}

criterion_group!(benches, fanout_tcp, fanout, channel);
criterion_main!(benches);
