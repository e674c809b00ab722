//! Logging an event that a peer can repeat at will (a refused connection) at most
//! once per interval, with how many were not logged since, so that a flood of them
//! cannot flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When one kind of event was last logged, and how many have not been since.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// Events not logged since the last line.
    unlogged: AtomicU64,
    /// When the last line was logged, in milliseconds since `epoch` (0: never).
    logged_at_ms: AtomicU64,
}

/// The clock every limiter reads.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimit {
    /// Takes one event: `Some(n)` when a line is due for it (none was logged in the
    /// last `interval`), `n` being the events not logged since the last line; `None`
    /// when it is to be counted into the next line instead.
    pub(crate) fn due(&self, interval: Duration) -> Option<u64> {
        let now_ms = epoch().elapsed().as_millis() as u64 + 1;
        let last = self.logged_at_ms.load(Ordering::Relaxed);
        let due = last == 0 || now_ms.saturating_sub(last) >= interval.as_millis() as u64;
        if !due
            || self.logged_at_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_events_not_logged() {
        let limit = LogLimit::default();
        assert_eq!(limit.due(Duration::from_secs(3600)), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.due(Duration::from_secs(3600)), None);
        }
        // A zero interval: the next event is due and carries the five.
        assert_eq!(limit.due(Duration::ZERO), Some(5));
    }
}
