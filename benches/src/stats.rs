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

/// What the receive matrix says about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryStats {
    /// Clients × successfully created events.
    pub expected: u64,
    /// Deliveries of successfully created events that arrived.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// Per-delivery latency: receive instant − instant the POST was sent.
    pub latency_ms: Option<Summary>,
    /// Per event, time from its POST until the last client had it; only over
    /// events every client received (an incomplete event has no such time).
    pub all_clients_ms: Option<Summary>,
    /// Events that every client received.
    pub events_complete: usize,
    /// `received` / (last receive instant − first POST instant).
    pub deliveries_per_s: Option<f64>,
}

/// Computes delivery statistics.
///
/// `recv` is row-major, one row of `sent.len()` slots per client, each the
/// receive instant or [`UNSET`]. `sent[e]` is the instant the POST creating
/// event `e` was sent, or [`None`] if that POST failed (its slots are ignored).
pub fn analyze(recv: &[u32], sent: &[Option<u32>]) -> DeliveryStats {
    let events = sent.len();
    let clients = recv.len().checked_div(events).unwrap_or(0);
    let created = sent.iter().flatten().count() as u64;
    let expected = clients as u64 * created;

    let mut latencies = Vec::with_capacity(expected as usize);
    // Per event: latest receive instant, and how many clients got it.
    let mut last = vec![0u32; events];
    let mut count = vec![0usize; events];
    if events > 0 {
        for row in recv.chunks_exact(events) {
            for (e, (&at, sent)) in row.iter().zip(sent).enumerate() {
                let Some(sent) = *sent else { continue };
                if at == UNSET {
                    continue;
                }
                latencies.push(at.saturating_sub(sent));
                last[e] = last[e].max(at);
                count[e] += 1;
            }
        }
    }
    let received = latencies.len() as u64;

    let mut all_clients: Vec<u32> = (0..events)
        .filter_map(|e| {
            let sent = sent[e]?;
            (clients > 0 && count[e] == clients).then(|| last[e].saturating_sub(sent))
        })
        .collect();
    let events_complete = all_clients.len();

    let first_sent = sent.iter().flatten().min().copied();
    let last_recv = last
        .iter()
        .zip(&count)
        .filter(|(_, &c)| c > 0)
        .map(|(&l, _)| l)
        .max();
    let deliveries_per_s = match (first_sent, last_recv) {
        (Some(first), Some(last)) if last > first => {
            Some(received as f64 / (f64::from(last - first) / 1e6))
        }
        _ => None,
    };

    DeliveryStats {
        expected,
        received,
        lost: expected - received,
        latency_ms: Summary::from_micros(&mut latencies),
        all_clients_ms: Summary::from_micros(&mut all_clients),
        events_complete,
        deliveries_per_s,
    }
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
        let s = analyze(&recv, &[Some(1000), Some(5000)]);
        assert_eq!((s.expected, s.received, s.lost), (6, 5, 1));
        assert_eq!(s.events_complete, 1);
        let all = s.all_clients_ms.unwrap();
        assert_eq!(all.max, 0.3); // event 0: last client at 1300
        let lat = s.latency_ms.unwrap();
        assert_eq!((lat.p50, lat.max), (0.2, 0.3)); // 100,100,200,200,300
                                                    // 5 deliveries between the first POST (1000) and the last receive (5200).
        let rate = s.deliveries_per_s.unwrap();
        assert!((rate - 5.0 / 0.0042).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn analyze_ignores_failed_posts() {
        let recv = [1100, 9999, 1200, UNSET];
        let s = analyze(&recv, &[Some(1000), None]);
        assert_eq!((s.expected, s.received, s.lost), (2, 2, 0));
        assert_eq!(s.events_complete, 1);
    }

    #[test]
    fn analyze_handles_an_empty_run() {
        let s = analyze(&[], &[]);
        assert_eq!((s.expected, s.received, s.lost), (0, 0, 0));
        assert_eq!(s.latency_ms, None);
        assert_eq!(s.deliveries_per_s, None);
    }
}
