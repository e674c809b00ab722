//! One instance and the channel to it, with what the balancer knows of its
//! health: calls running, their latency, when it last made progress, timeouts
//! in a row, and whether it is in rotation.
//!
//! Everything a call touches is an atomic, so picking an instance and
//! recording a call's outcome take no lock. The decision to eject after
//! timeouts is here ([`Endpoint::timed_out`]); the stall decision, which
//! compares an endpoint with its peers, is in `outlier.rs`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;
use super::outlier::Ejection;
use crate::client::Channel;
use crate::registry::Instance;

/// Weight of a new sample in the latency average, as a divisor: each call
/// moves it an eighth of the way, so it follows a trend within a few dozen
/// calls and one outlier barely moves it.
const EWMA_DIVISOR: u64 = 8;

/// One instance and the channel to it.
pub(super) struct Endpoint {
    /// The instance as registered.
    pub(super) instance: Instance,
    /// The channel; the prober swaps in the freshly connected one its ping
    /// went over when the instance comes back, so no stale connect backoff
    /// delays the first calls.
    channel: Mutex<Channel>,
    /// Calls from this balancer running on it.
    pub(super) in_flight: AtomicUsize,
    /// Gone from the instance set: no call starts on it any more, and its
    /// channel is closed once `in_flight` is 0.
    retired: AtomicBool,
    /// Out of rotation: no call is sent to it until a probe's Pong.
    down: AtomicBool,
    /// Calls to it that timed out since the last one answered.
    timeouts: AtomicU32,
    /// Times it left rotation since a call last succeeded on it while in
    /// rotation: the first probe waits longer for each, so an instance that
    /// answers pings but not calls does not flap in and out at full speed.
    ejections: AtomicU32,
    /// Moving average of its calls' latency in microseconds; 0 before the
    /// first sample.
    latency_us: AtomicU64,
    /// The origin of `progress_ns`.
    epoch: Instant,
    /// When it last made progress, in nanoseconds since `epoch`: a call
    /// answered, or a call started while none was running.
    progress_ns: AtomicU64,
    /// The probe schedule, touched only when it leaves rotation, by the
    /// prober, and when it comes back.
    probe: Mutex<Probe>,
}

/// When to probe an endpoint out of rotation, and channels it no longer uses.
#[derive(Default)]
struct Probe {
    /// Probes failed in a row.
    failures: u32,
    /// No probe before this.
    next: Option<Instant>,
    /// Channels replaced while calls still ran on them, closed once the
    /// endpoint is idle; dropping them at once would fail callback calls that
    /// might still be answered.
    superseded: Vec<Channel>,
}

/// Why an endpoint may not take a call now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// It left the instance set: pick from the new set.
    Retired,
    /// It already runs as many calls as it may.
    Full,
}

impl Endpoint {
    pub(super) fn new(instance: Instance, channel: Channel) -> Endpoint {
        Endpoint {
            instance,
            channel: Mutex::new(channel),
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            down: AtomicBool::new(false),
            timeouts: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            latency_us: AtomicU64::new(0),
            epoch: Instant::now(),
            progress_ns: AtomicU64::new(0),
            probe: Mutex::new(Probe::default()),
        }
    }

    pub(super) fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Whether it is in rotation and still in the instance set.
    pub(super) fn takes_calls(&self) -> bool {
        !self.is_down() && !self.retired.load(Ordering::SeqCst)
    }

    pub(super) fn channel(&self) -> Channel {
        lock(&self.channel).clone()
    }

    /// Counts a call as running, unless the endpoint was retired or already
    /// runs `cap` calls (then nothing is counted). With [`Endpoint::retire`]
    /// this is a handshake in sequentially consistent order: either the call
    /// sees the endpoint retired and goes elsewhere, or the retirer sees the
    /// call and leaves the channel open until it ends.
    pub(super) fn enter(&self, cap: usize) -> Result<(), Refused> {
        let running = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.retired.load(Ordering::SeqCst) {
            self.leave();
            return Err(Refused::Retired);
        }
        if running >= cap {
            self.leave();
            return Err(Refused::Full);
        }
        if running == 0 {
            // An idle instance owes nothing: its stall clock starts with this call.
            self.progressed(Instant::now());
        }
        Ok(())
    }

    pub(super) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts a call as running until the guard drops; see [`Endpoint::enter`].
    pub(super) fn start(&self, cap: usize) -> Result<InFlight<'_>, Refused> {
        self.enter(cap).map(|()| InFlight(self))
    }

    /// Takes the endpoint out of use; returns whether no call runs on it, so
    /// that its channel may be closed now.
    pub(super) fn retire(&self) -> bool {
        self.retired.store(true, Ordering::SeqCst);
        self.is_idle()
    }

    /// Puts a retired endpoint back in use: it returned to the set before its
    /// retirement completed.
    pub(super) fn unretire(&self) {
        self.retired.store(false, Ordering::SeqCst);
    }

    pub(super) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    fn progressed(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos().min(u128::from(u64::MAX)) as u64;
        self.progress_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// How long calls have run on it with none completing; `None` while none runs.
    pub(super) fn quiet_for(&self, now: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let since = self.epoch + Duration::from_nanos(self.progress_ns.load(Ordering::Relaxed));
        Some(now.saturating_duration_since(since))
    }

    /// The moving average of its calls' latency; `None` before the first.
    pub(super) fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn add_latency(&self, sample: Duration) {
        let sample = sample.as_micros().clamp(1, u128::from(u64::MAX / EWMA_DIVISOR)) as u64;
        let _ = self.latency_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { sample } else { (old * (EWMA_DIVISOR - 1) + sample) / EWMA_DIVISOR })
        });
    }

    /// A call got an answer (a reply or a status) after `latency`. Writes
    /// only what changes, so that busy instances do not bounce cache lines.
    pub(super) fn answered(&self, latency: Duration) {
        self.add_latency(latency);
        self.progressed(Instant::now());
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_down() {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A call timed out after `waited`; returns the ejection due if this makes
    /// `limit` in a row (0 never ejects).
    pub(super) fn timed_out(&self, waited: Duration, limit: u32) -> Option<Ejection> {
        // The call took at least this long: the average must know.
        self.add_latency(waited);
        let in_a_row = self.timeouts.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        (limit > 0 && in_a_row >= limit).then_some(Ejection::Timeouts(in_a_row))
    }

    /// Takes it out of rotation; false if it already was.
    pub(super) fn mark_down(&self) -> bool {
        !self.down.swap(true, Ordering::SeqCst)
    }

    /// Undoes a [`Endpoint::mark_down`] that turned out not to be allowed.
    pub(super) fn unmark_down(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    /// Schedules the first probe after it left rotation: `initial`, doubled
    /// for each earlier ejection in a row, at most `max`. Returns when.
    pub(super) fn schedule_first_probe(&self, initial: Duration, max: Duration) -> Instant {
        let earlier = self.ejections.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now() + backoff(initial, max, earlier);
        let mut probe = lock(&self.probe);
        probe.failures = 0;
        probe.next = Some(at);
        at
    }

    /// When the next probe is due; `None` if at once.
    pub(super) fn next_probe(&self) -> Option<Instant> {
        lock(&self.probe).next
    }

    /// A probe failed: schedules the next one, the wait doubling from
    /// `initial` per failure up to `max`. Returns when.
    pub(super) fn probe_failed(&self, initial: Duration, max: Duration) -> Instant {
        let mut probe = lock(&self.probe);
        probe.failures = probe.failures.saturating_add(1);
        let at = Instant::now() + backoff(initial, max, probe.failures);
        probe.next = Some(at);
        at
    }

    /// A probe got its Pong over `fresh`: the channel calls use from now on.
    /// The old one stays open while calls run on it.
    pub(super) fn back_in_rotation(&self, fresh: Channel) {
        let old = std::mem::replace(&mut *lock(&self.channel), fresh);
        {
            let mut probe = lock(&self.probe);
            probe.failures = 0;
            probe.next = None;
            probe.superseded.push(old);
        }
        self.close_superseded_if_idle();
        self.timeouts.store(0, Ordering::Relaxed);
        // Calls stuck since before it left still count as running: they get
        // a stall window of their own from now, not from when they started.
        self.progressed(Instant::now());
        self.down.store(false, Ordering::SeqCst);
    }

    /// Closes the channels replaced by a probe once no call runs; returns
    /// whether some are still waiting.
    pub(super) fn close_superseded_if_idle(&self) -> bool {
        let closing = {
            let mut probe = lock(&self.probe);
            if probe.superseded.is_empty() {
                return false;
            }
            if !self.is_idle() {
                return true;
            }
            std::mem::take(&mut probe.superseded)
        };
        // Closing may wait for a connect in progress: not under the lock.
        for channel in closing {
            channel.close();
        }
        false
    }

    #[cfg(test)]
    pub(super) fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes it look as if `running` calls were running and none had been
    /// answered since `since`.
    #[cfg(test)]
    pub(super) fn set_stuck(&self, running: usize, since: Instant) {
        self.in_flight.store(running, Ordering::SeqCst);
        let ns = since.saturating_duration_since(self.epoch).as_nanos() as u64;
        self.progress_ns.store(ns, Ordering::Relaxed);
    }
}

/// `n` endpoints on lazy channels that never connect unless called.
#[cfg(test)]
pub(super) fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|k| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + k as u16));
            let channel = Channel::lazy(addr, crate::client::Config::default());
            Arc::new(Endpoint::new(Instance::new(format!("e{k}"), addr), channel))
        })
        .collect()
}

/// `initial` doubled `doublings` times, at most `max`.
fn backoff(initial: Duration, max: Duration, doublings: u32) -> Duration {
    initial.saturating_mul(1 << doublings.min(16)).min(max)
}

/// Decrements an endpoint's in-flight count when dropped.
pub(super) struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_a_row_eject_and_an_answer_resets_the_count() {
        let e = &endpoints(1)[0];
        let ms = Duration::from_millis;
        assert_eq!(e.timed_out(ms(500), 2), None);
        e.answered(ms(1));
        assert_eq!(e.timed_out(ms(500), 2), None, "an answer in between starts the count again");
        assert_eq!(e.timed_out(ms(500), 2), Some(Ejection::Timeouts(2)));
        assert_eq!(e.timed_out(ms(500), 0), None, "0 turns it off");
        assert!(e.latency().unwrap() > ms(100), "timeouts count in the latency average");
    }

    #[test]
    fn the_latency_average_follows_samples_an_eighth_at_a_time() {
        let e = &endpoints(1)[0];
        assert_eq!(e.latency(), None);
        e.answered(Duration::from_micros(800));
        assert_eq!(e.latency(), Some(Duration::from_micros(800)), "the first sample is the average");
        e.answered(Duration::from_micros(1600));
        assert_eq!(e.latency(), Some(Duration::from_micros(900)));
    }

    #[test]
    fn the_cap_refuses_calls_past_it_and_a_retired_endpoint_refuses_all() {
        let e = &endpoints(1)[0];
        let first = e.start(2).unwrap();
        let second = e.start(2).unwrap();
        assert_eq!(e.start(2).err(), Some(Refused::Full));
        assert_eq!(e.in_flight.load(Ordering::SeqCst), 2, "a refused call counts nothing");
        drop(first);
        let third = e.start(2).unwrap();
        drop((second, third));
        assert!(e.retire());
        assert_eq!(e.start(2).err(), Some(Refused::Retired));
        assert!(e.is_idle());
    }

    #[test]
    fn a_call_starting_on_an_idle_instance_restarts_its_stall_clock() {
        let e = &endpoints(1)[0];
        e.enter(10).unwrap();
        // As if that call had started long ago.
        e.progress_ns.store(0, Ordering::Relaxed);
        e.enter(10).unwrap();
        assert_eq!(e.progress_ns.load(Ordering::Relaxed), 0, "a second call is no progress");
        e.leave();
        e.leave();
        assert_eq!(e.quiet_for(Instant::now()), None, "idle: nothing to wait for");
        e.enter(10).unwrap();
        assert!(e.progress_ns.load(Ordering::Relaxed) > 0, "the first call on an idle instance is");
    }

    #[test]
    fn each_ejection_in_a_row_doubles_the_first_wait_up_to_the_max() {
        let e = &endpoints(1)[0];
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(350));
        // The probe is due at (a clock read between `before` and `after`) + the wait.
        let waits_first_probe = |expected: u64| {
            let before = Instant::now();
            let at = e.schedule_first_probe(initial, max);
            let after = Instant::now();
            let expected = Duration::from_millis(expected);
            assert!(at - after <= expected && expected <= at - before, "{:?}", at - before);
        };
        for expected in [100, 200, 350, 350] {
            waits_first_probe(expected);
        }
        // A call that succeeds in rotation forgives them.
        e.answered(Duration::from_millis(1));
        waits_first_probe(100);
    }
}
