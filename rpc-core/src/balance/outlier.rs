//! Outlier detection: why an instance leaves rotation, and the stall
//! decision, which judges an instance against its peers. Plain functions of
//! the endpoints' atomics, so the tests below drive them without sockets.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;

/// How many times its peers' median latency an instance may go without
/// completing any of its running calls before it counts as stalled (never
/// less than `stall_floor`). Eight leaves room for an ordinary tail: one slow
/// call does not stall an instance while its other calls complete, and a
/// p99 several times the median is common, but no completion at all for eight
/// typical call times is rare in a healthy process.
pub(super) const STALL_FACTOR: u32 = 8;

/// Why an endpoint leaves rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ejection {
    /// A call could not connect to it or lost its connection.
    Unreachable(String),
    /// Calls to it timed out this many times in a row.
    Timeouts(u32),
    /// Calls ran on it and none completed for `quiet`, longer than `threshold`.
    Stalled {
        /// Time since its last progress.
        quiet: Duration,
        /// What its peers' latency allows.
        threshold: Duration,
    },
}

impl Ejection {
    /// Whether this is a judgement of latency against the peers, which never
    /// takes the last instance out of rotation.
    pub(super) fn is_for_latency(&self) -> bool {
        matches!(self, Ejection::Stalled { .. })
    }
}

impl fmt::Display for Ejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ejection::Unreachable(error) => write!(f, "unreachable: {error}"),
            Ejection::Timeouts(n) => write!(f, "{n} calls in a row timed out"),
            Ejection::Stalled { quiet, threshold } => write!(
                f,
                "stalled: calls running and none completed for {} ms (threshold {} ms)",
                quiet.as_millis(),
                threshold.as_millis()
            ),
        }
    }
}

/// The longest an instance may run calls without completing one: `floor`,
/// or [`STALL_FACTOR`] times the median of `peers`' latency if longer.
pub(super) fn stall_threshold(floor: Duration, peers: impl Iterator<Item = Duration>) -> Duration {
    let mut peers: Vec<Duration> = peers.collect();
    if peers.is_empty() {
        return floor;
    }
    peers.sort_unstable();
    let mid = peers.len() / 2;
    let median = if peers.len() % 2 == 1 { peers[mid] } else { (peers[mid - 1] + peers[mid]) / 2 };
    floor.max(median.saturating_mul(STALL_FACTOR))
}

/// Whether `endpoints[i]` is stalled and may leave rotation for it at `now`:
/// calls run on it, none completed for longer than its threshold (see
/// [`stall_threshold`], over the latency of its peers in rotation), and
/// another instance in rotation is not stalled by the same measure, so that a
/// slowdown of every instance never empties the rotation.
///
/// The first test reads two atomics and is all most picks pay; the median is
/// computed only for an instance already quiet for longer than `floor`.
pub(super) fn stalled(
    endpoints: &[Arc<Endpoint>],
    i: usize,
    floor: Duration,
    now: Instant,
) -> Option<Ejection> {
    let endpoint = &endpoints[i];
    let quiet = endpoint.quiet_for(now)?;
    if quiet <= floor {
        return None;
    }
    let peers =
        || endpoints.iter().enumerate().filter(move |(j, p)| *j != i && p.takes_calls()).map(|(_, p)| p);
    let threshold = stall_threshold(floor, peers().filter_map(|p| p.latency()));
    if quiet <= threshold {
        return None;
    }
    let a_peer_answers = peers().any(|p| p.quiet_for(now).is_none_or(|q| q <= threshold));
    a_peer_answers.then_some(Ejection::Stalled { quiet, threshold })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::endpoints;

    const FLOOR: Duration = Duration::from_millis(250);

    /// Makes `e` look as if `running` calls were started `ago` and none answered since.
    fn stuck(e: &Endpoint, running: usize, ago: Duration, now: Instant) {
        e.set_stuck(running, now - ago);
    }

    #[test]
    fn the_threshold_is_the_floor_or_a_multiple_of_the_peers_median() {
        let ms = Duration::from_millis;
        assert_eq!(stall_threshold(FLOOR, std::iter::empty()), FLOOR);
        assert_eq!(stall_threshold(FLOOR, [ms(1), ms(2), ms(900)].into_iter()), FLOOR, "median 2 ms");
        assert_eq!(stall_threshold(FLOOR, [ms(100), ms(40), ms(900)].into_iter()), ms(800));
        assert_eq!(
            stall_threshold(FLOOR, [ms(100), ms(40)].into_iter()),
            ms(560),
            "even: the mean of the two"
        );
        assert_eq!(stall_threshold(Duration::MAX, [ms(100)].into_iter()), Duration::MAX, "MAX turns it off");
    }

    #[test]
    fn an_instance_is_stalled_only_with_calls_running_and_no_progress_past_the_threshold() {
        let es = endpoints(2);
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(stalled(&es, 0, FLOOR, now), None, "nothing runs: nothing to wait for");
        stuck(&es[0], 3, Duration::from_millis(200), now);
        assert_eq!(stalled(&es, 0, FLOOR, now), None, "quiet, but not for longer than the floor");
        stuck(&es[0], 3, Duration::from_millis(300), now);
        assert!(matches!(stalled(&es, 0, FLOOR, now), Some(Ejection::Stalled { .. })));

        // Peers whose calls take 50 ms allow eight times that.
        es[1].answered(Duration::from_millis(50));
        assert_eq!(stalled(&es, 0, FLOOR, now), None, "300 ms is within 400 ms");
        stuck(&es[0], 1, Duration::from_millis(450), now);
        let ejection = stalled(&es, 0, FLOOR, now).unwrap();
        assert_eq!(
            ejection,
            Ejection::Stalled { quiet: Duration::from_millis(450), threshold: Duration::from_millis(400) }
        );
        assert!(ejection.is_for_latency());
    }

    #[test]
    fn no_stall_ejection_without_a_peer_that_answers() {
        let es = endpoints(3);
        let now = Instant::now() + Duration::from_secs(10);
        stuck(&es[0], 2, Duration::from_secs(1), now);
        // Alone in rotation: its peers are out.
        es[1].set_down(true);
        es[2].set_down(true);
        assert_eq!(stalled(&es, 0, FLOOR, now), None, "the last instance in rotation stays");
        // A peer in rotation that is just as stuck: the whole service is slow.
        es[1].set_down(false);
        stuck(&es[1], 1, Duration::from_secs(2), now);
        assert_eq!(stalled(&es, 0, FLOOR, now), None, "its peer is as slow");
        // A peer that answers (idle, or quiet for less than the threshold).
        es[2].set_down(false);
        assert!(stalled(&es, 0, FLOOR, now).is_some(), "an idle peer can take its calls");
        stuck(&es[2], 5, Duration::from_millis(10), now);
        assert!(stalled(&es, 0, FLOOR, now).is_some(), "a busy peer that completes calls can too");
    }
}
