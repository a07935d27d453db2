//! Fan-out cost: one `NewProduct` published to N in-process connections,
//! timed until every client has read the whole frame (group `fanout`,
//! throughput per delivery), and published to a 100-member channel among
//! 10,000 connections next to all of them (group `channel`, time per publish).
//!
//! Connections run over `tokio::io::duplex`, so the figures are the hub's
//! own cost (queueing, waking, framing, writing), without the kernel's
//! socket costs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ocha_realtime::{Admission, Config, Frame, Hub, OCHA_WELCOME};
use ocha_server::event::{Event, ExtraChf, Product, Size};
use tokio::io::{AsyncReadExt, DuplexStream};
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

async fn client(mut io: DuplexStream, event_len: usize, arrivals: Arc<Arrivals>) {
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

criterion_group!(benches, fanout, channel);
criterion_main!(benches);
