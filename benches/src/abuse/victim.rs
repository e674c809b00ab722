//! The victim: a well-behaved client making unary `Echo` calls at a fixed
//! rate over one `client::Channel`, while an attacker abuses the server.
//!
//! The load is open: call `i` is due at `start + i / rate` and is started
//! then whether or not earlier calls came back (`call_raw_with`), so a slow
//! server cannot slow the victim down and hide its own slowness. Latency runs
//! from the time a call was *due* to its completion, so a call that could not
//! even be written on time is charged for the wait too.
//!
//! Every call due inside the window counts, failed ones included: a call
//! that fails counts at the time it failed, and one still unanswered when
//! the victim stops waiting counts as a failure at that time. The latency
//! percentiles are therefore those of every call the victim needed, not of
//! the lucky ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use rpc_core::client::{Channel, Config as ClientConfig};

use super::server::{ECHO, SERVICE};

/// Bytes of each `Echo` request.
const PAYLOAD: usize = 64;
/// Largest latency the histogram holds, in microseconds (one minute).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long after its deadline a call may still come back before it is
/// given up on: the client's timeout sweep runs about every 100 ms.
const SLACK: Duration = Duration::from_secs(2);

/// What the victim does.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Calls per second.
    pub rate: u32,
    /// Calls made before the window opens.
    pub warmup: Duration,
    /// The window whose calls are counted.
    pub measure: Duration,
    /// Each call's deadline, sent to the server too.
    pub timeout: Duration,
}

impl Load {
    /// The victim's part of `plan`.
    pub fn of(plan: &super::Plan) -> Load {
        Load { rate: plan.rate, warmup: plan.warmup, measure: plan.measure, timeout: plan.timeout }
    }
}

/// What the victim went through.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Calls due inside the window.
    pub expected: u64,
    /// Of those, the calls answered with the right reply.
    pub completed: u64,
    /// Of those, the calls that failed or were never answered, by reason.
    pub errors: BTreeMap<String, u64>,
    /// The first failure, in full.
    pub first_error: Option<String>,
    /// Latency of every call due in the window, in microseconds.
    pub latency: Histogram<u64>,
    /// The longest a call due in the window started late, because the
    /// victim's own thread was held up (starting a call that blocked, or not
    /// being scheduled). Part of the latency; shown to tell the two apart.
    pub max_start_lag: Duration,
}

impl Outcome {
    /// Failed calls of every reason.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at quantile `q` (0.5 for the median), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }

    /// The errors as "12 (DeadlineExceeded 10, Unavailable 2)", or "0".
    pub fn errors_summary(&self) -> String {
        if self.errors.is_empty() {
            return "0".to_owned();
        }
        let kinds: Vec<String> = self.errors.iter().map(|(why, n)| format!("{why} {n}")).collect();
        format!("{} ({})", self.error_count(), kinds.join(", "))
    }

    fn record(&mut self, due: Instant, done: Instant, result: Result<(), String>) {
        let us = done.saturating_duration_since(due).as_micros().min(u128::from(MAX_LATENCY_US)) as u64;
        // Clamped to the histogram's range above.
        let _ = self.latency.record(us.max(1));
        match result {
            Ok(()) => self.completed += 1,
            Err(why) => {
                let kind = why.split(':').next().unwrap_or_default().to_owned();
                *self.errors.entry(kind).or_default() += 1;
                self.first_error.get_or_insert(why);
            }
        }
    }
}

/// A finished call, sent back from the client's event-loop thread: its number, when it
/// finished, and how.
type Done = (u64, Instant, Result<(), String>);

/// Runs the victim against `addr`: warm-up, then the window, then waits for
/// the window's last calls up to their deadline.
///
/// # Errors
///
/// When the channel cannot connect; failed calls are counted instead.
pub fn run(addr: SocketAddr, load: &Load) -> anyhow::Result<Outcome> {
    let config = ClientConfig { default_timeout: Some(load.timeout), ..ClientConfig::default() };
    let channel =
        Channel::connect(addr, config).with_context(|| format!("victim cannot connect to {addr}"))?;
    let period = Duration::from_secs(1) / load.rate.max(1);
    let start = Instant::now();
    let window = start + load.warmup..start + load.warmup + load.measure;
    let due = |i: u64| start + period * i as u32;
    let mut outcome = Outcome {
        expected: 0,
        completed: 0,
        errors: BTreeMap::new(),
        first_error: None,
        latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
        max_start_lag: Duration::ZERO,
    };
    // Calls due in the window and not yet back.
    let mut pending = BTreeSet::new();
    let take = |outcome: &mut Outcome, pending: &mut BTreeSet<u64>, (i, done, result): Done| {
        if pending.remove(&i) {
            outcome.record(due(i), done, result);
        }
    };
    let (tx, rx) = crossbeam_channel::unbounded::<Done>();
    let body = [0xa5u8; PAYLOAD];
    let mut i = 0u64;
    while due(i) < window.end {
        // Take in what came back, then sleep until the next call is due. Not
        // `recv_deadline`: its spinning yields the core, and with the cores busy
        // (Burn) each yield costs a time slice, so the victim falls behind.
        while let Ok(done) = rx.try_recv() {
            take(&mut outcome, &mut pending, done);
        }
        std::thread::sleep(due(i).saturating_duration_since(Instant::now()));
        if window.contains(&due(i)) {
            outcome.expected += 1;
            pending.insert(i);
            outcome.max_start_lag =
                outcome.max_start_lag.max(Instant::now().saturating_duration_since(due(i)));
        }
        let tx = tx.clone();
        channel.call_raw_with(
            SERVICE,
            ECHO,
            &body,
            None,
            Box::new(move |reply| {
                let result = match reply {
                    Ok(b) if b.len() == PAYLOAD => Ok(()),
                    Ok(b) => Err(format!("WrongReply: {} bytes", b.len())),
                    Err(e) => Err(format!("{}: {e}", e.code().as_str())),
                };
                let _ = tx.send((i, Instant::now(), result));
            }),
        );
        i += 1;
    }
    drop(tx);
    let give_up = window.end + load.timeout + SLACK;
    while !pending.is_empty() {
        match rx.recv_deadline(give_up) {
            Ok(done) => take(&mut outcome, &mut pending, done),
            Err(_) => break,
        }
    }
    // Calls the client never completed count as failed when we gave up.
    let now = Instant::now();
    for i in std::mem::take(&mut pending) {
        outcome.record(due(i), now, Err("Unanswered: no reply and no error by the deadline".into()));
    }
    channel.close();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome() -> Outcome {
        Outcome {
            expected: 3,
            completed: 0,
            errors: BTreeMap::new(),
            first_error: None,
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).unwrap(),
            max_start_lag: Duration::ZERO,
        }
    }

    #[test]
    fn failures_count_by_reason_and_in_the_latency() {
        let mut o = outcome();
        let t = Instant::now();
        o.record(t, t + Duration::from_millis(2), Ok(()));
        o.record(t, t + Duration::from_secs(5), Err("DeadlineExceeded: call timed out".into()));
        o.record(t, t + Duration::from_secs(1), Err("DeadlineExceeded: again".into()));
        assert_eq!((o.completed, o.error_count()), (1, 2));
        assert_eq!(o.errors_summary(), "2 (DeadlineExceeded 2)");
        assert_eq!(o.first_error.as_deref(), Some("DeadlineExceeded: call timed out"));
        assert!((o.max_ms() - 5000.0).abs() < 5.0, "{}", o.max_ms());
        assert!(o.latency_ms(0.1) < 3.0);
    }
}
