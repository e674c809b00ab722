//! The prober thread: looks for stalls while calls run, pings instances out
//! of rotation until they answer, and closes channels no call uses any more.
//! It starts with the balancer's first call and exits once the balancer is
//! dropped. While calls run it wakes every half `stall_floor`; with nothing
//! to do it sleeps until a call starts ([`Shared::watch`]) or it is woken.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::endpoint::Endpoint;
use super::{lock, Shared};
use crate::client::Channel;

/// How often idle retired and superseded channels are looked at.
const CLOSE_CHECK: Duration = Duration::from_millis(100);

/// The shortest wait between stall checks, whatever `stall_floor` says.
const MIN_STALL_CHECK: Duration = Duration::from_millis(10);

impl Shared {
    /// Has the prober watch a call just started, waking it if it sleeps with
    /// nothing to do. One atomic load per call while it is awake. With the
    /// prober's own store-then-check (see [`probe_loop`]) this is a handshake
    /// in sequentially consistent order: either the call sees the prober
    /// asleep and wakes it, or the prober sees the call running.
    pub(super) fn watch(self: &Arc<Shared>) {
        if self.prober_asleep.load(Ordering::SeqCst) && self.prober_asleep.swap(false, Ordering::SeqCst) {
            self.wake_prober();
        }
    }

    /// Whether stall ejection is on.
    fn watches_stalls(&self) -> bool {
        self.config.stall_floor != Duration::MAX
    }

    /// Whether calls run on an instance in rotation.
    fn calls_running(self: &Arc<Shared>) -> bool {
        self.table().endpoints.iter().any(|e| !e.is_down() && !e.is_idle())
    }

    /// Wakes the prober thread, starting it the first time.
    pub(super) fn wake_prober(self: &Arc<Shared>) {
        let wake = self.prober.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let shared = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name(format!("balance-{}", self.discovery.service()))
                .spawn(move || probe_loop(shared, rx));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start the prober; instances out of rotation stay out");
            }
            tx
        });
        let _ = wake.send(());
    }

    /// Closes idle retired and superseded channels, checks instances in
    /// rotation for stalls and probes those out of it that are due; returns
    /// when to come back, `None` if nothing is pending.
    fn probe_due(self: &Arc<Shared>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        let mut idle = Vec::new();
        {
            let mut retired = lock(&self.retired);
            retired.retain(|e| {
                let busy = !e.is_idle();
                if !busy {
                    idle.push(e.channel());
                }
                busy
            });
            if !retired.is_empty() {
                soonest(Instant::now() + CLOSE_CHECK);
            }
        }
        // Closing waits for a connect in progress: never while `retired` is locked, which
        // a refresh takes with the table locked.
        for channel in idle {
            channel.close();
        }
        let table = self.table();
        for (i, endpoint) in table.endpoints.iter().enumerate() {
            if endpoint.close_superseded_if_idle() {
                soonest(Instant::now() + CLOSE_CHECK);
            }
            if !endpoint.is_down() {
                // Picks notice a stall only while calls come; this notices it
                // between them, so the instance is probed, and back, sooner.
                let now = Instant::now();
                if !self.stalls(&table, i, now) {
                    if endpoint.quiet_for(now).is_some() && self.watches_stalls() {
                        soonest(now + (self.config.stall_floor / 2).max(MIN_STALL_CHECK));
                    }
                    continue;
                }
            }
            match endpoint.next_probe() {
                Some(t) if t > Instant::now() => soonest(t),
                _ => {
                    if let Some(t) = self.probe(endpoint) {
                        soonest(t);
                    }
                }
            }
        }
        next
    }

    /// Pings an endpoint out of rotation over a fresh channel; puts it back
    /// if the Pong comes in time, else returns when to try again.
    fn probe(&self, endpoint: &Endpoint) -> Option<Instant> {
        let addr = endpoint.instance.addr;
        let fresh = Channel::lazy(addr, self.config.channel.clone());
        match fresh.ping(self.config.probe_timeout) {
            Ok(rtt) => {
                endpoint.back_in_rotation(fresh);
                tracing::info!(
                    service = %self.discovery.service(),
                    %addr,
                    id = %endpoint.instance.id,
                    rtt_us = rtt.as_micros() as u64,
                    "instance answered a ping; back in rotation"
                );
                None
            }
            Err(error) => {
                fresh.close();
                let at = endpoint.probe_failed(self.config.probe_initial, self.config.probe_max);
                let retry_in_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64;
                tracing::debug!(%addr, %error, retry_in_ms, "probe failed");
                Some(at)
            }
        }
    }
}

/// The prober thread: sleeps until something is due or it is woken, and
/// exits when the balancer is dropped.
fn probe_loop(shared: Weak<Shared>, wake: Receiver<()>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => match shared.probe_due() {
                Some(at) => Some(at),
                None if shared.watches_stalls() => {
                    // Say so before the last look, so that a call starting
                    // after it wakes us (see `Shared::watch`).
                    shared.prober_asleep.store(true, Ordering::SeqCst);
                    if shared.calls_running() {
                        shared.prober_asleep.store(false, Ordering::SeqCst);
                        continue;
                    }
                    None
                }
                None => None,
            },
            None => return,
        };
        let woke = match next {
            Some(at) => wake.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if let Err(RecvTimeoutError::Disconnected) = woke {
            return;
        }
    }
}
