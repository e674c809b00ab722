//! The limits the loop enforces on its own clock, apart from reading and writing:
//! idle connections closed, and once a second the connections held back or over
//! their budgets looked at again, and evicted when they stall or take more than
//! their share (`docs/PROTOCOL.md`, "Limits and errors").

use super::*;

impl EventLoop {
    pub(super) fn close_idle(&mut self, now: Instant) {
        let limit = self.config.idle_timeout;
        if limit.is_zero() {
            return;
        }
        let idle: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.in_flight == 0 && c.evicted.is_none() && now.duration_since(c.last_active) > limit
            })
            .map(|(t, _)| *t)
            .collect();
        for token in idle {
            if self.conns.get(&token).is_some_and(|c| c.closing) {
                // Told to go away a whole idle period ago and still not reading
                // its last bytes: drop it rather than hold its output forever.
                self.close(token, "closing peer stopped reading");
                continue;
            }
            if let Some(conn) = self.conns.get_mut(&token) {
                let reason = format!("idle for more than {} s", limit.as_secs());
                frame::put_goaway(&mut conn.out, &reason);
                conn.closing = true;
            }
            self.flush(token);
        }
    }

    /// Once a second: evicts connections that trickle a frame, that stopped reading
    /// with more than their budget waiting or past their hard limit, or that hold more
    /// than their share of an exhausted server budget (and more than their own budget);
    /// closes evicted ones that never read their go-away; and looks again at paused and
    /// held-back connections, whose state may have changed without an event of theirs.
    pub(super) fn enforce_limits(&mut self, now: Instant) {
        let config = &self.config;
        let share = self.memory.fair_share(config.server_budget);
        let mut evict = Vec::new();
        let mut close = Vec::new();
        let mut recheck = Vec::new();
        for (token, c) in &self.conns {
            if let Some(by) = c.evicted {
                if now >= by {
                    close.push(*token);
                }
                continue;
            }
            let quiet = now.duration_since(c.last_drain);
            let why = if c.out.len() > config.connection_hard_limit && quiet > HARD_LIMIT_GRACE {
                hard_limit_reason(config.connection_hard_limit)
            } else if (c.out.len() > config.connection_budget
                || c.handle.shared().held_back.load(Ordering::SeqCst))
                && !c.out.is_empty()
                && !config.stalled_reader_timeout.is_zero()
                && quiet > config.stalled_reader_timeout
            {
                format!(
                    "the peer read nothing for {} s with {} bytes of answers waiting (budget {})",
                    config.stalled_reader_timeout.as_secs(),
                    c.out.len(),
                    config.connection_budget
                )
            } else if let Some(share) =
                share.filter(|&share| c.held() > share && c.held() > config.connection_budget)
            {
                over_share(config, c.held(), share)
            } else if let Some(why) = c.gate.as_ref().and_then(|g| g.overdue(now)) {
                why
            } else if !c.paused
                && !config.frame_timeout.is_zero()
                && c.partial_since.is_some_and(|t| now.duration_since(t) > config.frame_timeout)
            {
                format!("a frame took more than {} s to arrive", config.frame_timeout.as_secs())
            } else {
                if c.paused || c.handle.shared().held_back.load(Ordering::SeqCst) {
                    recheck.push(*token);
                }
                continue;
            };
            evict.push((*token, why));
        }
        for (token, why) in evict {
            self.evict(token, &why);
            self.flush(token);
        }
        for token in close {
            self.close(token, "evicted peer did not read its go-away");
        }
        for token in recheck {
            self.flush(token);
        }
    }
}

/// The go-away reason for a connection whose answers passed the hard limit.
fn hard_limit_reason(limit: usize) -> String {
    format!("output buffer over its hard limit of {limit} bytes: the peer is not reading its answers")
}

/// The go-away reason for a connection over its share of an exhausted server budget.
fn over_share(config: &Config, held: usize, share: usize) -> String {
    format!(
        "server memory budget of {} bytes exhausted and this connection holds {held} bytes, over its share of {share}",
        config.server_budget
    )
}
