//! Prometheus metrics, served by `GET /metrics` in the text format (0.0.4)
//! that Prometheus scrapes and `promtool check metrics` accepts.
//!
//! | metric                                  | type      | labels                      |
//! |-----------------------------------------|-----------|-----------------------------|
//! | `ocha_connections_open`                 | gauge     | `transport`                 |
//! | `ocha_connections_accepted_total`       | counter   | `transport`                 |
//! | `ocha_connections_refused_total`        | counter   | `transport`, `reason`       |
//! | `ocha_events_published_total`           | counter   | `type`                      |
//! | `ocha_deliveries_total`                 | counter   |                             |
//! | `ocha_slow_consumer_closes_total`       | counter   |                             |
//! | `ocha_heartbeat_timeouts_total`         | counter   |                             |
//! | `ocha_relay_events_from_log_total`      | counter   |                             |
//! | `ocha_redis_connected`                  | gauge     | (with `REDIS_URL` only)     |
//! | `ocha_redis_outages_total`              | counter   | (with `REDIS_URL` only)     |
//! | `ocha_http_requests_total`              | counter   | `route`, `method`, `status` |
//! | `ocha_http_request_duration_seconds`    | histogram | `route`, `method`           |
//! | `ocha_store_operation_duration_seconds` | histogram | `operation`                 |
//!
//! The hub's and the relay's own counters ([`ocha_realtime::Stats`],
//! [`ocha_realtime::RelayStats`]) are read when Prometheus scrapes, not
//! counted a second time. Events are counted by their `type` as the relay
//! hands them to the hub: this node's, and other nodes' whether they came
//! over Redis or from the log, each once.
//!
//! Every label has a bounded set of values, whatever clients send: `route`
//! is the route's template (`/api/v1/products/:id`), or `unmatched` for
//! every unknown path; `method` is a standard method or `other`; a refused
//! upgrade's `reason` is one per [`HandshakeError`]; `type` is an event
//! type this server knows, or `other`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use ocha_realtime::{HandshakeError, Hub, Relay};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    HistogramOpts, HistogramTimer, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::event::Event;
use crate::response::Body;
use crate::store::Store;

/// How a realtime client is connected: the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket on `/`.
    WebSocket,
    /// Server-Sent Events on `/api/v1/events`.
    EventStream,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::EventStream => "sse",
        }
    }
}

/// Histogram buckets for request and database times, in seconds: from a
/// SQLite read (about 100 µs) to a request waiting out the database's
/// connection timeout.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A server's metrics. Cloning is cheap and shares them.
#[derive(Clone)]
pub(crate) struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    refused: IntCounterVec,
}

impl Metrics {
    /// Registers every metric: the store's times, the events counted as
    /// they are published, and the hub's and relay's counters.
    pub(crate) fn new(
        store: &Store,
        hub: &Hub,
        relay: &Relay<Store>,
        published: &PublishedEvents,
    ) -> Metrics {
        let http_requests = IntCounterVec::new(
            Opts::new(
                "ocha_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("a valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "ocha_http_request_duration_seconds",
                "Time from a request's headers to its response, by route template and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("a valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "ocha_connections_refused_total",
                "Realtime connections refused, by transport and reason.",
            ),
            &["transport", "reason"],
        )
        .expect("a valid metric");
        let registry = Registry::new();
        let collectors: [Box<dyn Collector>; 6] = [
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(refused.clone()),
            Box::new(published.0.clone()),
            Box::new(store.latency().0.clone()),
            Box::new(Realtime::new(hub.clone(), relay.clone())),
        ];
        for collector in collectors {
            // Each name is registered once, in a registry of this server's own.
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics(Arc::new(Inner {
            registry,
            http_requests,
            http_duration,
            refused,
        }))
    }

    /// Counts a request answered with `status` after `elapsed`. `route` is
    /// the route's template, never the path, so that ids make no series.
    pub(crate) fn request(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.0
            .http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.0
            .http_duration
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a WebSocket upgrade the hub refused.
    pub(crate) fn refused(&self, error: &HandshakeError, transport: Transport) {
        self.0
            .refused
            .with_label_values(&[transport.label(), refusal_reason(error)])
            .inc();
    }

    /// The `GET /metrics` response: every metric in the text format.
    pub(crate) fn response(&self) -> Response<Body> {
        let text = TextEncoder::new()
            .encode_to_string(&self.0.registry.gather())
            // Encoding fails only for a family without a name or without
            // metrics, and `gather` leaves neither.
            .expect("gathered metrics encode");
        let mut response = crate::response::whole(Response::new(Full::new(Bytes::from(text))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }
}

/// `ocha_events_published_total`, which the relay's delivery callback
/// feeds. Cloning is cheap and shares the counter.
#[derive(Clone)]
pub(crate) struct PublishedEvents(IntCounterVec);

impl PublishedEvents {
    /// The counter, at zero for every type.
    pub(crate) fn new() -> PublishedEvents {
        PublishedEvents(
            IntCounterVec::new(
                Opts::new(
                    "ocha_events_published_total",
                    "Events handed to this node's clients, from any node, by type.",
                ),
                &["type"],
            )
            .expect("a valid metric"),
        )
    }

    /// Counts one event, given as the JSON clients receive.
    pub(crate) fn count(&self, event: &str) {
        // Events are few (an admin's writes) and small: parsing one whole
        // costs microseconds, and `Event::name` names only known types.
        let name = serde_json::from_str::<Event>(event).map_or("other", |event| event.name());
        self.0.with_label_values(&[name]).inc();
    }
}

/// `ocha_store_operation_duration_seconds`, which every [`Store`] operation
/// feeds. Cloning is cheap and shares the histogram.
#[derive(Debug, Clone)]
pub(crate) struct StoreLatency(HistogramVec);

impl StoreLatency {
    /// The histogram, with no operation timed yet.
    pub(crate) fn new() -> StoreLatency {
        StoreLatency(
            HistogramVec::new(
                HistogramOpts::new(
                    "ocha_store_operation_duration_seconds",
                    "Time of each database operation, waiting for a connection included.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["operation"],
            )
            .expect("a valid metric"),
        )
    }

    /// Times `operation` until the returned timer is dropped, so that an
    /// operation whose caller gave up is counted too.
    pub(crate) fn start(&self, operation: &str) -> HistogramTimer {
        self.0.with_label_values(&[operation]).start_timer()
    }
}

/// The hub's and the relay's counters, read at each scrape.
///
/// The `prometheus` crate's counters can only be increased, so each scrape
/// raises them by what the source counted since the last one. The lock
/// keeps two concurrent scrapes from adding the same difference twice.
struct Realtime {
    hub: Hub,
    relay: Relay<Store>,
    scrape: Mutex<()>,
    open: IntGaugeVec,
    accepted: IntCounterVec,
    deliveries: IntCounter,
    slow_consumer_closes: IntCounter,
    heartbeat_timeouts: IntCounter,
    from_log: IntCounter,
    redis_connected: IntGauge,
    redis_outages: IntCounter,
}

impl Realtime {
    fn new(hub: Hub, relay: Relay<Store>) -> Realtime {
        let counter = |name: &str, help: &str| {
            IntCounter::with_opts(Opts::new(name, help)).expect("a valid metric")
        };
        Realtime {
            hub,
            relay,
            scrape: Mutex::new(()),
            open: IntGaugeVec::new(
                Opts::new(
                    "ocha_connections_open",
                    "Realtime clients connected now, by transport.",
                ),
                &["transport"],
            )
            .expect("a valid metric"),
            accepted: IntCounterVec::new(
                Opts::new(
                    "ocha_connections_accepted_total",
                    "Realtime clients accepted, by transport.",
                ),
                &["transport"],
            )
            .expect("a valid metric"),
            deliveries: counter(
                "ocha_deliveries_total",
                "Events handed to clients, summed over events.",
            ),
            slow_consumer_closes: counter(
                "ocha_slow_consumer_closes_total",
                "Clients closed for falling too far behind (4008).",
            ),
            heartbeat_timeouts: counter(
                "ocha_heartbeat_timeouts_total",
                "Clients dropped for staying silent through two heartbeats.",
            ),
            from_log: counter(
                "ocha_relay_events_from_log_total",
                "Events read from the event log rather than announced by their node.",
            ),
            redis_connected: IntGauge::new(
                "ocha_redis_connected",
                "1 while this node is subscribed to Redis, 0 while Redis is unreachable.",
            )
            .expect("a valid metric"),
            redis_outages: counter(
                "ocha_redis_outages_total",
                "Times Redis became unreachable.",
            ),
        }
    }
}

impl Collector for Realtime {
    fn desc(&self) -> Vec<&Desc> {
        [
            self.open.desc(),
            self.accepted.desc(),
            self.deliveries.desc(),
            self.slow_consumer_closes.desc(),
            self.heartbeat_timeouts.desc(),
            self.from_log.desc(),
            self.redis_connected.desc(),
            self.redis_outages.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let hub = self.hub.stats();
        let relay = self.relay.stats();
        let streams = hub.event_streams;
        for (transport, open, accepted) in [
            (
                Transport::WebSocket,
                hub.connections.saturating_sub(streams),
                hub.accepted.saturating_sub(hub.event_streams_accepted),
            ),
            (Transport::EventStream, streams, hub.event_streams_accepted),
        ] {
            let label = [transport.label()];
            self.open
                .with_label_values(&label)
                .set(saturating_i64(open));
            advance(&self.accepted.with_label_values(&label), accepted);
        }
        advance(&self.deliveries, hub.deliveries);
        advance(&self.slow_consumer_closes, hub.slow_consumer_closes);
        advance(&self.heartbeat_timeouts, hub.heartbeat_timeouts);
        advance(&self.from_log, relay.from_log);
        let mut families = [
            self.open.collect(),
            self.accepted.collect(),
            self.deliveries.collect(),
            self.slow_consumer_closes.collect(),
            self.heartbeat_timeouts.collect(),
            self.from_log.collect(),
        ]
        .concat();
        // Without Redis, a 0 would read as "Redis is down".
        if let Some(connected) = relay.redis_connected {
            self.redis_connected.set(i64::from(connected));
            advance(&self.redis_outages, relay.redis_outages);
            families.extend(self.redis_connected.collect());
            families.extend(self.redis_outages.collect());
        }
        families
    }
}

/// Raises `counter` to `total`, which never goes down.
fn advance(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

fn saturating_i64(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The `method` label: hyper accepts any token as a method, and each would
/// make series of its own.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The `reason` label of a refused WebSocket upgrade.
fn refusal_reason(error: &HandshakeError) -> &'static str {
    match error {
        HandshakeError::Method => "method",
        HandshakeError::HttpVersion => "http_version",
        HandshakeError::Connection => "connection_header",
        HandshakeError::Upgrade => "upgrade_header",
        HandshakeError::WebSocketVersion => "websocket_version",
        HandshakeError::Key => "key",
        HandshakeError::Origin => "origin",
        HandshakeError::TooManyConnections => "too_many_connections",
        HandshakeError::ShuttingDown => "shutting_down",
        HandshakeError::Protocol => "protocol",
        HandshakeError::NotUpgradable => "not_upgradable",
        // A reason added to the library later.
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_ones_share_a_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }

    #[test]
    fn events_are_counted_by_known_type() {
        let events = PublishedEvents::new();
        let product = r#"{"_id":"65f1c0de0123456789abcdef","slug":"s","name":"n","category":"c","description":"d","basePriceCHF":1,"isActive":true,"image":"i","size":["S"],"extra_chf":{"S":0,"M":2,"L":3},"createdAt":"2026-11-27T17:48:28.123Z","updatedAt":"2026-11-27T17:48:28.123Z"}"#;
        events.count(&format!(
            r#"{{"type":"new_product","product":{product},"id":"1"}}"#
        ));
        events.count(r#"{"type":"launch_rockets","id":"2"}"#);
        events.count("not JSON");
        let count = |name: &str| events.0.with_label_values(&[name]).get();
        assert_eq!((count("new_product"), count("other")), (1, 2));
    }
}
