//! The run's clock: instants as microseconds since an epoch taken when the
//! run starts, read from the monotonic clock, and their conversion to and
//! from microseconds since the UNIX epoch (the realtime clock), the one
//! clock that the loadgen processes of one run share on one machine.

use crate::stats::UNSET;
use std::time::{Duration, Instant, SystemTime};

/// An epoch read from both clocks at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
    /// `epoch` as microseconds since the UNIX epoch.
    epoch_unix_us: u64,
}

impl Clock {
    /// A clock whose epoch is now.
    pub(crate) fn start() -> Clock {
        let epoch = Instant::now();
        // A realtime clock before 1970 is a broken machine; 0 keeps the
        // conversions consistent within this process at least.
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            epoch,
            epoch_unix_us: micros(unix),
        }
    }

    /// Microseconds since the epoch.
    pub(crate) fn now_us(&self) -> u32 {
        saturate(micros(self.epoch.elapsed()))
    }

    /// Time since the epoch.
    pub(crate) fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Instant `at` (µs since the epoch) as µs since the UNIX epoch.
    pub(crate) fn unix_us(&self, at: u32) -> u64 {
        self.epoch_unix_us + u64::from(at)
    }

    /// µs since the UNIX epoch as µs since this clock's epoch; an instant
    /// before the epoch counts as the epoch itself.
    pub(crate) fn instant_of(&self, unix_us: u64) -> u32 {
        saturate(unix_us.saturating_sub(self.epoch_unix_us))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Instants are kept as `u32` (see [`crate::stats`]): a run longer than
/// 71 minutes just stops advancing, short of [`UNSET`].
fn saturate(us: u64) -> u32 {
    u32::try_from(us).unwrap_or(UNSET - 1).min(UNSET - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_microseconds_round_trip_and_saturate() {
        let clock = Clock {
            epoch: Instant::now(),
            epoch_unix_us: 1_700_000_000_000_000,
        };
        assert_eq!(clock.unix_us(1500), 1_700_000_000_001_500);
        assert_eq!(clock.instant_of(1_700_000_000_001_500), 1500);
        assert_eq!(clock.instant_of(1_699_999_999_999_000), 0, "before");
        assert_eq!(clock.instant_of(u64::MAX), UNSET - 1, "far after");
    }

    #[test]
    fn two_clocks_agree_on_a_shared_instant() {
        // Two processes of one run: the POSTing one stamps an instant, the
        // listening one, started earlier, reads it back on its own clock.
        let listener = Clock::start();
        std::thread::sleep(Duration::from_millis(5));
        let poster = Clock::start();
        let stamp = poster.unix_us(poster.now_us());
        let on_listener = i64::from(listener.instant_of(stamp));
        let now = i64::from(listener.now_us());
        assert!((now - on_listener).abs() < 2_000, "{on_listener} vs {now}");
    }
}
