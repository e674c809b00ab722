//! The proxy's one thread of its own: it renews the leases of every session every third
//! of the lease TTL, and every [`Config::sweep_every`](super::Config::sweep_every) sends
//! failed presence announcements again and sweeps lapsed leases.
//!
//! A renewal that failed is tried again after a sweep period rather than a third of the
//! TTL, and a connection to the presence table that broke (as when Redis restarts) brings
//! the next renewal forward to the next tick: a backend that came back empty has lost
//! every lease, and the sooner they are taken back, the fewer pushes miss their users.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Inner, Proxy};

impl Proxy {
    /// Starts the thread that renews leases every third of the lease TTL and sweeps
    /// lapsed leases every [`Config::sweep_every`](super::Config::sweep_every), until the returned [`Renewal`] is
    /// dropped.
    ///
    /// # Errors
    ///
    /// When the thread cannot be spawned.
    pub fn start_renewal(&self) -> std::io::Result<Renewal> {
        let (stop, stopped) = mpsc::channel::<()>();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let renew_every = self.inner.config.lease_ttl / 3;
        let sweep_every = self.inner.config.sweep_every.max(Duration::from_millis(1));
        let mut seen_breaks = self.presence_breaks();
        let thread = std::thread::Builder::new().name("lease-renewal".into()).spawn(move || {
            let mut next_renewal = Instant::now() + renew_every;
            let mut next_sweep = Instant::now() + sweep_every;
            loop {
                let wait = next_renewal.min(next_sweep).saturating_duration_since(Instant::now());
                match stopped.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let proxy = Proxy { inner };
                // Renewal first: a sweep that took long must not let this proxy's own
                // leases lapse.
                let breaks = proxy.presence_breaks();
                if Instant::now() >= next_renewal || breaks != seen_breaks {
                    seen_breaks = breaks;
                    let reached = proxy.renew_leases();
                    next_renewal =
                        Instant::now() + if reached { renew_every } else { sweep_every.min(renew_every) };
                }
                if Instant::now() >= next_sweep {
                    proxy.retry_announcements();
                    proxy.sweep_lapsed_leases();
                    next_sweep = Instant::now() + sweep_every;
                }
            }
        })?;
        Ok(Renewal { stop: Some(stop), thread: Some(thread) })
    }
}

/// Renews the proxy's leases and sweeps lapsed ones on a thread; dropping it stops and
/// joins the thread.
#[derive(Debug)]
pub struct Renewal {
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Drop for Renewal {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
