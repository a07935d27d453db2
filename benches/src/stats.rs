//! Statistics over the receive matrix the load generator fills in.
//!
//! Times are microseconds since one run-wide epoch, stored as `u32` (good for
//! 71 minutes) so that 19,000 clients × 30 events fit in a couple of MiB.

use serde::Serialize;

/// Marks a (client, event) slot whose event never arrived.
pub const UNSET: u32 = u32::MAX;

/// Nearest-rank percentile of an ascending slice: the smallest value such that
/// at least `p` percent of the values are less than or equal to it.
///
/// Returns [`None`] for an empty slice. `p` is clamped to `0..=100`; `p = 0`
/// gives the minimum and `p = 100` the maximum.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Median, 99th percentile and maximum of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// 50th percentile.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises durations given in microseconds; sorts them in place.
    pub fn from_micros(values: &mut [u32]) -> Option<Summary> {
        values.sort_unstable();
        let ms = |v: Option<u32>| v.map(|us| f64::from(us) / 1000.0);
        Some(Summary {
            p50: ms(percentile(values, 50.0))?,
            p99: ms(percentile(values, 99.0))?,
            max: ms(values.last().copied())?,
        })
    }
}

/// When the event of a column of the receive matrix was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Its POST was sent at this instant.
    At(u32),
    /// Its POST failed: no client should have it, and its column is ignored.
    Failed,
    /// Expected, but when it was sent is unknown: a listen-only run learns
    /// that from the event itself, and none of its clients had this one.
    /// Its deliveries count; their latency cannot.
    Unknown,
}

/// What the receive matrix says about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryStats {
    /// Clients × expected events (those not [`Sent::Failed`]).
    pub expected: u64,
    /// Deliveries of expected events that arrived.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Per-delivery latency: receive instant − instant the POST was sent.
    pub latency_ms: Option<Summary>,
    /// Per event, time from its POST until the last client had it; only over
    /// events every client received (an incomplete event has no such time).
    pub all_clients_ms: Option<Summary>,
    /// The same per event, in event order: `null` where incomplete (or sent
    /// at an unknown time). The runs of several loadgen processes on one
    /// cluster merge by taking, per event, the largest.
    pub all_clients_per_event_ms: Vec<Option<f64>>,
    /// Events that every client received.
    pub events_complete: usize,
    /// The latencies of `latency_ms`, rounded down to three significant
    /// digits (in µs), as ascending `[latency, count]` pairs: enough to
    /// merge runs of several processes into exact percentiles, so rounded,
    /// and a few thousand pairs at most.
    pub latency_histogram_us: Vec<(u32, u64)>,
    /// `received` / (last receive instant − first POST instant).
    pub deliveries_per_s: Option<f64>,
}

/// Computes delivery statistics.
///
/// `recv` is row-major, one row of `sent.len()` slots per client, each the
/// receive instant or [`UNSET`]; `sent[e]` says when event `e` was sent.
pub fn analyze(recv: &[u32], sent: &[Sent]) -> DeliveryStats {
    let events = sent.len();
    let clients = recv.len().checked_div(events).unwrap_or(0);
    let created = sent.iter().filter(|s| **s != Sent::Failed).count() as u64;
    let expected = clients as u64 * created;

    let mut latencies = Vec::with_capacity(expected as usize);
    let mut received = 0;
    let mut last_recv = None;
    if events > 0 {
        for row in recv.chunks_exact(events) {
            for (&at, sent) in row.iter().zip(sent) {
                if at == UNSET {
                    continue;
                }
                match *sent {
                    Sent::Failed => continue,
                    Sent::Unknown => {}
                    Sent::At(sent) => {
                        latencies.push(at.saturating_sub(sent));
                        last_recv = last_recv.max(Some(at));
                    }
                }
                received += 1;
            }
        }
    }

    let all_clients = all_have(recv, sent, 0..clients);
    let mut complete: Vec<u32> = all_clients.iter().flatten().copied().collect();

    let first_sent = sent
        .iter()
        .filter_map(|s| match s {
            Sent::At(at) => Some(*at),
            _ => None,
        })
        .min();
    let deliveries_per_s = match (first_sent, last_recv) {
        (Some(first), Some(last)) if last > first => {
            Some(received as f64 / (f64::from(last - first) / 1e6))
        }
        _ => None,
    };

    let latency_ms = Summary::from_micros(&mut latencies);
    DeliveryStats {
        expected,
        received,
        lost: expected - received,
        latency_ms,
        all_clients_ms: Summary::from_micros(&mut complete),
        all_clients_per_event_ms: all_clients
            .iter()
            .map(|t| t.map(|us| f64::from(us) / 1000.0))
            .collect(),
        events_complete: complete.len(),
        latency_histogram_us: histogram(&latencies),
        deliveries_per_s,
    }
}

/// Per event, the time (µs) from its sending until the last of clients
/// `rows` had it: [`None`] where one of them never did, where its send
/// time is unknown or its POST failed, and for no rows at all.
///
/// `recv` and `sent` are as for [`analyze`].
pub fn all_have(
    recv: &[u32],
    sent: &[Sent],
    rows: impl Iterator<Item = usize>,
) -> Vec<Option<u32>> {
    let events = sent.len();
    // Per event, the latest receive instant so far, or None once a client lacks it.
    let mut last = vec![Some(0u32); events];
    let mut any = false;
    for row in rows {
        any = true;
        for (l, &at) in last.iter_mut().zip(&recv[row * events..][..events]) {
            *l = l.filter(|_| at != UNSET).map(|l| l.max(at));
        }
    }
    last.into_iter()
        .zip(sent)
        .map(|(last, sent)| match sent {
            Sent::At(sent) if any => last.map(|l| l.saturating_sub(*sent)),
            _ => None,
        })
        .collect()
}

/// Rounds `us` down to three significant digits: 1234 to 1230, 98765 to
/// 98700. Monotonic, so a percentile of rounded values is the rounded
/// percentile.
pub fn round3(us: u32) -> u32 {
    let mut unit = 1;
    while us / unit >= 1000 {
        unit *= 10;
    }
    us / unit * unit
}

/// Counts ascending `sorted` values by [`round3`], as ascending
/// `(value, count)` pairs.
pub fn histogram(sorted: &[u32]) -> Vec<(u32, u64)> {
    let mut pairs: Vec<(u32, u64)> = Vec::new();
    for &v in sorted {
        let v = round3(v);
        match pairs.last_mut() {
            Some((last, count)) if *last == v => *count += 1,
            _ => pairs.push((v, 1)),
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 99.5), Some(100));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7, 9], 50.0), Some(7));
        assert_eq!(percentile(&[7, 9], 51.0), Some(9));
        assert_eq!(percentile(&[42], 99.0), Some(42));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_and_converts_to_ms() {
        let mut v = vec![3000, 1000, 2000];
        let s = Summary::from_micros(&mut v).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (2.0, 3.0, 3.0));
        assert_eq!(Summary::from_micros(&mut []), None);
    }

    #[test]
    fn analyze_counts_losses_and_times_complete_events_only() {
        // 3 clients × 2 events; event 0 sent at 1000 µs, event 1 at 5000 µs.
        // Client 2 never got event 1.
        let recv = [
            1100, 5200, //
            1300, 5100, //
            1200, UNSET,
        ];
        let sent = [Sent::At(1000), Sent::At(5000)];
        let s = analyze(&recv, &sent);
        assert_eq!((s.expected, s.received, s.lost), (6, 5, 1));
        assert_eq!(s.events_complete, 1);
        let all = s.all_clients_ms.unwrap();
        assert_eq!(all.max, 0.3); // event 0: last client at 1300
        assert_eq!(s.all_clients_per_event_ms, [Some(0.3), None]);
        assert_eq!(s.latency_histogram_us, [(100, 2), (200, 2), (300, 1)]);
        // Clients 0 and 1, as the clients of one node, have both events.
        assert_eq!(all_have(&recv, &sent, 0..2), [Some(300), Some(200)]);
        assert_eq!(all_have(&recv, &sent, [2].into_iter()), [Some(200), None]);
        assert_eq!(all_have(&recv, &sent, 0..0), [None, None]);
        let lat = s.latency_ms.unwrap();
        assert_eq!((lat.p50, lat.max), (0.2, 0.3)); // 100,100,200,200,300
                                                    // 5 deliveries between the first POST (1000) and the last receive (5200).
        let rate = s.deliveries_per_s.unwrap();
        assert!((rate - 5.0 / 0.0042).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn analyze_ignores_failed_posts() {
        let recv = [1100, 9999, 1200, UNSET];
        let s = analyze(&recv, &[Sent::At(1000), Sent::Failed]);
        assert_eq!((s.expected, s.received, s.lost), (2, 2, 0));
        assert_eq!(s.events_complete, 1);
        assert_eq!(s.all_clients_per_event_ms, [Some(0.2), None]);
    }

    #[test]
    fn analyze_counts_events_sent_at_unknown_times() {
        // A listen-only run: event 1 reached client 0 without a send time,
        // and event 2 reached nobody, so nobody could tell when it was sent.
        let recv = [1100, 1500, UNSET, 1200, UNSET, UNSET];
        let s = analyze(&recv, &[Sent::At(1000), Sent::Unknown, Sent::Unknown]);
        assert_eq!((s.expected, s.received, s.lost), (6, 3, 3));
        assert_eq!(s.latency_ms.unwrap().max, 0.2, "event 0 only");
        assert_eq!(s.all_clients_per_event_ms, [Some(0.2), None, None]);
    }

    #[test]
    fn histogram_rounds_to_three_significant_digits() {
        assert_eq!(
            [0, 999, 1000, 1234, 98_765, 1_234_567].map(round3),
            [0, 999, 1000, 1230, 98_700, 1_230_000]
        );
        assert_eq!(round3(u32::MAX), 4_290_000_000);
        let mut v = vec![1234, 5, 1239, 1240, 5];
        v.sort_unstable();
        assert_eq!(histogram(&v), [(5, 2), (1230, 2), (1240, 1)]);
        assert_eq!(histogram(&[]), []);
    }

    #[test]
    fn analyze_handles_an_empty_run() {
        let s = analyze(&[], &[]);
        assert!(s.all_clients_per_event_ms.is_empty());
        assert_eq!((s.expected, s.received, s.lost), (0, 0, 0));
        assert_eq!(s.latency_ms, None);
        assert_eq!(s.deliveries_per_s, None);
    }
}
