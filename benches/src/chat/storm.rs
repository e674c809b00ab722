//! The reconnect side of `chatbench storm`: users whose connection is lost (their proxy
//! was killed) connect again and `Resume` their session with the token their login gave,
//! then `Sync`; this records when each was lost and when it was back.
//!
//! An event loop holds one [`Resumer`] per storm and asks it which users to reconnect
//! now; the loop makes the connections and calls, and tells it about losses and returns.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A user's first reconnect comes at a random moment this many milliseconds after the
/// loss, as chat.proto asks of clients.
const FIRST_PAUSE_MS: std::ops::Range<u64> = services::limits::RECONNECT_PAUSE_MS;
/// Longest pause between two reconnect attempts of one user.
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// Most reconnects a loop starts before it reads its sockets again: thousands in a row
/// would delay the pushes it measures.
const BATCH: usize = 64;

/// What a loop needs to bring its users back.
#[derive(Debug, Clone)]
pub struct ResumePlan {
    /// Where to connect again (nginx in front of the surviving proxies).
    pub addr: SocketAddr,
    /// Each local user's session token; empty for a user not to bring back.
    pub tokens: Vec<String>,
}

/// One loop's reconnect bookkeeping.
#[derive(Debug)]
pub struct Resumer {
    /// The plan.
    pub plan: ResumePlan,
    /// When each user's connection was first lost, until it is back.
    lost_at: Vec<Option<Instant>>,
    /// Attempts made for each user since it was lost, for the back-off.
    attempts: Vec<u32>,
    /// Reconnects due, earliest first (pushed in time order).
    due: VecDeque<(Instant, usize)>,
    /// Users back: when lost, and when resumed and synced.
    pub back: Vec<(Instant, Instant)>,
    /// When the first reconnect was started.
    pub first_reconnect: Option<Instant>,
}

impl Resumer {
    /// Nobody lost yet.
    pub fn new(plan: ResumePlan) -> Resumer {
        let n = plan.tokens.len();
        Resumer {
            plan,
            lost_at: vec![None; n],
            attempts: vec![0; n],
            due: VecDeque::new(),
            back: Vec::new(),
            first_reconnect: None,
        }
    }

    /// `user`'s connection (or an attempt to bring it back) failed at `now`: schedules the
    /// next attempt, half a second to a second and a half later the first time, then
    /// backing off. Users without a token are left alone.
    pub fn lost(&mut self, user: usize, now: Instant) {
        if self.plan.tokens.get(user).is_none_or(String::is_empty) {
            return;
        }
        self.lost_at[user].get_or_insert(now);
        let pause = if self.attempts[user] == 0 {
            Duration::from_millis(rand::Rng::gen_range(&mut rand::thread_rng(), FIRST_PAUSE_MS))
        } else {
            (Duration::from_millis(50) * self.attempts[user]).min(MAX_PAUSE)
        };
        self.attempts[user] += 1;
        self.due.push_back((now + pause, user));
    }

    /// Up to [`BATCH`] users whose reconnect is due at `now`.
    pub fn due(&mut self, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        // Pauses differ, so the queue is only roughly ordered: look at every entry.
        self.due.retain(|&(at, user)| {
            let ready = at <= now && out.len() < BATCH;
            if ready {
                out.push(user);
            }
            !ready
        });
        if !out.is_empty() {
            self.first_reconnect.get_or_insert(now);
        }
        out
    }

    /// `user` resumed its session and synced at `now`.
    pub fn back(&mut self, user: usize, now: Instant) {
        if let Some(lost) = self.lost_at[user].take() {
            self.back.push((lost, now));
            self.attempts[user] = 0;
        }
    }

    /// The session token of `user`.
    pub fn token(&self, user: usize) -> &str {
        &self.plan.tokens[user]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_users_with_a_token_come_due_and_back() {
        let plan =
            ResumePlan { addr: "127.0.0.1:1".parse().unwrap(), tokens: vec!["t".into(), String::new()] };
        let mut r = Resumer::new(plan);
        let t0 = Instant::now();
        r.lost(0, t0);
        r.lost(1, t0);
        let first = t0 + Duration::from_millis(FIRST_PAUSE_MS.end);
        assert!(r.due(t0 + Duration::from_millis(FIRST_PAUSE_MS.start - 1)).is_empty(), "not at once");
        assert_eq!(r.due(first), [0], "only the user with a token, within the pause");
        r.lost(0, first);
        assert!(r.due(first + Duration::from_millis(20)).is_empty(), "then backs off");
        assert_eq!(r.due(first + Duration::from_millis(100)), [0]);
        r.back(0, first + Duration::from_millis(200));
        assert_eq!(r.back, [(t0, first + Duration::from_millis(200))], "timed from the first loss");
    }
}
