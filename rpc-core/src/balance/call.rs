//! Picking an instance for a call, and running calls: the blocking path
//! ([`Shared::call`]) and the callback path ([`AsyncCall`]) do the same
//! things in the same order. Each attempt counts as running on its endpoint
//! from before it is sent until its outcome is recorded, so the stall check
//! that a timeout triggers still sees the call that timed out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::endpoint::{Endpoint, Refused};
use super::outlier::{self, Ejection};
use super::{Shared, Strategy, Table};
use crate::client::{Callback, Channel};
use crate::Error;

/// Why no endpoint could be picked, for the error the caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unpicked {
    /// Endpoints in the table.
    pub(super) known: usize,
    /// Of those, how many are out of rotation.
    pub(super) down: usize,
    /// Of those in rotation, how many run as many calls as they may.
    pub(super) full: usize,
}

/// Whether an error says the instance cannot be reached.
fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Connect { .. } | Error::ConnectionLost { .. })
}

/// What is left of the deadline for the next attempt: `Err(())` when it has
/// passed and an earlier attempt's error is there to report instead.
fn time_left(deadline: Option<Instant>, have_error: bool) -> Result<Option<Duration>, ()> {
    match deadline {
        Some(d) if Instant::now() >= d && have_error => Err(()),
        Some(d) => Ok(Some(d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))),
        None => Ok(None),
    }
}

impl Shared {
    /// Picks an endpoint in rotation, not in `tried` and below its cap. A
    /// candidate found stalled on the way leaves rotation and is passed over.
    pub(super) fn pick(
        self: &Arc<Shared>,
        table: &Table,
        key: Option<u64>,
        tried: &[usize],
    ) -> Result<usize, Unpicked> {
        let n = table.endpoints.len();
        let cap = self.config.max_in_flight_per_instance;
        let start = match key {
            Some(_) => 0,
            None if n == 0 => 0,
            None => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        // Read the clock once, and only if some candidate has calls running.
        let mut now = None;
        let mut eligible = |i: usize| {
            let e = &table.endpoints[i];
            let running = e.in_flight.load(Ordering::Relaxed);
            !tried.contains(&i)
                && !e.is_down()
                && running < cap
                && (running == 0 || !self.stalls(table, i, *now.get_or_insert_with(Instant::now)))
        };
        let found = match (key, self.config.strategy) {
            (Some(hash), _) => table.ring.walk(hash).find(|&i| eligible(i)),
            (None, Strategy::RoundRobin) => (0..n).map(|k| (start + k) % n).find(|&i| eligible(i)),
            (None, Strategy::LeastInFlight) => (0..n)
                .map(|k| (start + k) % n)
                .filter(|&i| eligible(i))
                .min_by_key(|&i| table.endpoints[i].in_flight.load(Ordering::Relaxed)),
        };
        found.ok_or_else(|| {
            let down = table.endpoints.iter().filter(|e| e.is_down()).count();
            let full = table
                .endpoints
                .iter()
                .filter(|e| !e.is_down() && e.in_flight.load(Ordering::Relaxed) >= cap)
                .count();
            Unpicked { known: n, down, full }
        })
    }

    /// Whether `table.endpoints[i]` is stalled; if so it leaves rotation.
    /// Most calls pay two atomic loads here (see [`outlier::stalled`]).
    pub(super) fn stalls(self: &Arc<Shared>, table: &Table, i: usize, now: Instant) -> bool {
        let floor = self.config.stall_floor;
        match outlier::stalled(&table.endpoints, i, floor, now) {
            Some(why) => self.eject(table, &table.endpoints[i], why),
            None => false,
        }
    }

    /// The error for a call that found nothing to pick and has no earlier
    /// attempt's error to report; either way the call was not sent anywhere.
    pub(super) fn unpicked_error(&self, why: Unpicked) -> Error {
        let service = self.discovery.service();
        if why.full > 0 {
            return Error::Backpressure(format!(
                "every instance of service '{service}' in rotation already runs {} calls from this \
                 balancer; the call was not sent",
                self.config.max_in_flight_per_instance
            ));
        }
        if why.known > 0 {
            tracing::debug!(
                service,
                known = why.known,
                out_of_rotation = why.down,
                "no instance in rotation"
            );
        }
        Error::NoInstances { service: service.to_owned() }
    }

    /// Records the outcome of an attempt on `table.endpoints[i]` that took
    /// `took`, while the attempt still counts as running, and takes the
    /// endpoint out of rotation if the outcome calls for it.
    fn record(self: &Arc<Shared>, table: &Table, i: usize, result: &Result<Bytes, Error>, took: Duration) {
        let endpoint = &table.endpoints[i];
        match result {
            // A status is an answer too: the instance is alive and reading.
            Ok(_) | Err(Error::Status(_)) => endpoint.answered(took),
            Err(Error::Timeout { .. }) => {
                match endpoint.timed_out(took, self.config.eject_after_timeouts) {
                    Some(why) => {
                        self.eject(table, endpoint, why);
                    }
                    // A lone caller never picks while its call hangs: its
                    // timeout is the moment to notice the stall.
                    None => {
                        self.stalls(table, i, Instant::now());
                    }
                }
            }
            Err(e) if unreachable(e) => {
                self.eject(table, endpoint, Ejection::Unreachable(e.to_string()));
            }
            Err(_) => {}
        }
    }

    /// Takes an endpoint out of rotation for `why` and has the prober watch
    /// it; returns whether it is out of rotation now. An ejection for latency
    /// is undone if it would leave no instance in rotation: two callers that
    /// each eject one of the last two instances see each other's ejection
    /// (both flags are sequentially consistent), so at least one undoes its own.
    pub(super) fn eject(self: &Arc<Shared>, table: &Table, endpoint: &Endpoint, why: Ejection) -> bool {
        if !endpoint.mark_down() {
            return true;
        }
        let others_in_rotation =
            table.endpoints.iter().filter(|e| !std::ptr::eq(&***e, endpoint) && e.takes_calls()).count();
        if why.is_for_latency() && others_in_rotation == 0 {
            endpoint.unmark_down();
            return false;
        }
        endpoint.schedule_first_probe(self.config.probe_initial, self.config.probe_max);
        tracing::warn!(
            service = %self.discovery.service(),
            addr = %endpoint.instance.addr,
            id = %endpoint.instance.id,
            reason = %why,
            "instance leaves rotation"
        );
        if others_in_rotation == 0 {
            tracing::warn!(
                service = %self.discovery.service(),
                known = table.endpoints.len(),
                "every instance is out of rotation; calls fail at once with NoInstances until one answers a probe"
            );
        }
        self.wake_prober();
        true
    }

    /// Runs `attempt` on picked endpoints until one answers, the error says
    /// the call may have run, or no endpoint is left to try.
    pub(super) fn call(
        self: &Arc<Shared>,
        key: Option<u64>,
        timeout: Option<Duration>,
        mut attempt: impl FnMut(&Channel, Option<Duration>) -> Result<Bytes, Error>,
    ) -> Result<Bytes, Error> {
        let mut table = self.table();
        let deadline = timeout.or(self.config.channel.default_timeout).map(|t| Instant::now() + t);
        let mut tried = Vec::new();
        let mut last_error = None;
        loop {
            let i = match self.pick(&table, key, &tried) {
                Ok(i) => i,
                Err(why) => return Err(last_error.unwrap_or_else(|| self.unpicked_error(why))),
            };
            let Ok(left) = time_left(deadline, last_error.is_some()) else { break };
            let endpoint = table.endpoints[i].clone();
            let running = match endpoint.start(self.config.max_in_flight_per_instance) {
                Ok(running) => running,
                Err(Refused::Retired) => {
                    // The instance set changed since `table` was read: pick from the new one.
                    table = self.table();
                    tried.clear();
                    continue;
                }
                // Filled up since it was picked; the next pick passes it over.
                Err(Refused::Full) => continue,
            };
            tried.push(i);
            self.watch();
            let started = Instant::now();
            let result = attempt(&endpoint.channel(), left);
            self.record(&table, i, &result, started.elapsed());
            drop(running);
            match result {
                Ok(reply) => return Ok(reply),
                Err(e) if e.is_retryable_elsewhere() => {
                    tracing::debug!(addr = %endpoint.instance.addr, error = %e, "trying another instance");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("only an earlier error ends the loop"))
    }
}

/// A call started with a callback, retried from the callback of the failed
/// attempt.
pub(super) struct AsyncCall {
    /// The balancer.
    shared: Arc<Shared>,
    /// The table the call started with.
    table: Arc<Table>,
    /// The key's hash, for keyed calls.
    key: Option<u64>,
    /// The service called.
    service: Arc<str>,
    /// The method called.
    method: Arc<str>,
    /// The encoded request, kept for retries.
    body: Bytes,
    /// When the caller stops waiting.
    deadline: Option<Instant>,
    /// Endpoints tried, by index in `table`.
    tried: Vec<usize>,
    /// The last retryable failure.
    last_error: Option<Error>,
    /// Gets the outcome.
    callback: Callback,
}

impl AsyncCall {
    pub(super) fn start(
        shared: &Arc<Shared>,
        key: Option<u64>,
        service: &str,
        method: &str,
        body: Bytes,
        timeout: Option<Duration>,
        callback: Callback,
    ) {
        // Taken here, on the caller's thread: retries run on a client loop, where no
        // handler's deadline is known.
        let deadline =
            crate::client::call_deadline(Instant::now(), timeout.or(shared.config.channel.default_timeout));
        AsyncCall {
            table: shared.table(),
            shared: shared.clone(),
            key,
            service: service.into(),
            method: method.into(),
            body,
            deadline,
            tried: Vec::new(),
            last_error: None,
            callback,
        }
        .next();
    }

    /// Sends the call to the next endpoint, or reports the outcome.
    fn next(mut self) {
        let i = match self.shared.pick(&self.table, self.key, &self.tried) {
            Ok(i) => i,
            Err(why) => {
                let error = self.last_error.take().unwrap_or_else(|| self.shared.unpicked_error(why));
                return (self.callback)(Err(error));
            }
        };
        let Ok(left) = time_left(self.deadline, self.last_error.is_some()) else {
            let error = self.last_error.take().expect("checked");
            return (self.callback)(Err(error));
        };
        let endpoint = self.table.endpoints[i].clone();
        match endpoint.enter(self.shared.config.max_in_flight_per_instance) {
            Ok(()) => {}
            Err(Refused::Retired) => {
                // The instance set changed since `table` was read: pick from the new one.
                self.table = self.shared.table();
                self.tried.clear();
                return self.next();
            }
            // Filled up since it was picked; the next pick passes it over.
            Err(Refused::Full) => return self.next(),
        }
        self.tried.push(i);
        self.shared.watch();
        let channel = endpoint.channel();
        let (service, method, body) = (self.service.clone(), self.method.clone(), self.body.clone());
        let started = Instant::now();
        channel.call_raw_with(
            &service,
            &method,
            &body,
            left,
            Box::new(move |result| {
                self.shared.record(&self.table, i, &result, started.elapsed());
                endpoint.leave();
                match result {
                    Ok(reply) => (self.callback)(Ok(reply)),
                    Err(e) if e.is_retryable_elsewhere() => {
                        self.last_error = Some(e);
                        self.next()
                    }
                    Err(e) => (self.callback)(Err(e)),
                }
            }),
        );
    }
}
