//! A channel's connection slots: which connection a call takes, and opening
//! one (with exponential backoff after failures) when its slot has none.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::connection::Conn;
use super::Channel;
use crate::Error;

/// One connection position: the live connection, or when to try again.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) state: Mutex<SlotState>,
}

#[derive(Default)]
pub(super) struct SlotState {
    /// The open connection, if any.
    pub(super) conn: Option<Arc<Conn>>,
    /// Connect failures in a row, for the backoff.
    pub(super) failures: u32,
    /// No new attempt before this.
    pub(super) retry_at: Option<Instant>,
    /// The last connect error, repeated to callers inside the backoff window.
    pub(super) last_error: Option<(std::io::ErrorKind, String)>,
}

impl Channel {
    /// An open connection if one can be had without waiting.
    pub(super) fn try_open_conn(&self) -> Option<Arc<Conn>> {
        let n = self.inner.slots.len();
        let start = self.inner.next_slot.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|k| {
            let st = self.inner.slots[(start + k) % n].state.try_lock().ok()?;
            st.conn.as_ref().filter(|c| c.is_usable()).cloned()
        })
    }

    pub(super) fn pick(&self, deadline: Option<Instant>) -> Result<Arc<Conn>, Error> {
        let n = self.inner.slots.len();
        let i = if n == 1 { 0 } else { self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % n };
        self.conn(i, deadline)
    }

    /// The open connection of slot `i`, connecting (with backoff) if needed.
    pub(super) fn conn(&self, i: usize, deadline: Option<Instant>) -> Result<Arc<Conn>, Error> {
        let inner = &self.inner;
        let slot = &inner.slots[i];
        loop {
            let mut st = slot.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conn) = &st.conn {
                if conn.is_usable() {
                    return Ok(conn.clone());
                }
                st.conn = None;
            }
            let now = Instant::now();
            if let Some(retry_at) = st.retry_at.filter(|t| *t > now) {
                if deadline.is_some_and(|d| d < retry_at) {
                    let (kind, msg) =
                        st.last_error.clone().unwrap_or((std::io::ErrorKind::Other, String::new()));
                    return Err(Error::Connect {
                        addr: inner.addr,
                        source: std::io::Error::new(kind, format!("{msg} (next attempt in backoff)")),
                    });
                }
                drop(st);
                std::thread::sleep(retry_at - now);
                continue;
            }
            let budget = deadline.map_or(inner.config.connect_timeout, |d| {
                d.saturating_duration_since(now).min(inner.config.connect_timeout)
            });
            // Connecting holds the slot's lock: the other callers of this slot
            // would only queue up behind the same attempt.
            match Conn::open(inner.addr, budget.max(Duration::from_millis(1)), &inner.config) {
                Ok(conn) => {
                    st.failures = 0;
                    st.retry_at = None;
                    st.last_error = None;
                    st.conn = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => {
                    st.failures = st.failures.saturating_add(1);
                    let backoff = inner
                        .config
                        .backoff_initial
                        .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
                        .min(inner.config.backoff_max);
                    st.retry_at = Some(Instant::now() + backoff);
                    st.last_error = Some((e.kind(), e.to_string()));
                    return Err(Error::Connect { addr: inner.addr, source: e });
                }
            }
        }
    }
}
