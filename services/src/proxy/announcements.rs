//! The proxy's record of the presence announcements it sends the chat service.
//!
//! Per user it keeps the newest announcement until the chat service has taken it. One
//! that failed for a reason that may pass (no instance, a lost connection, a timeout) is
//! handed out again by [`Announcements::due`]. An older announcement never outlives a
//! newer one for the same user: whatever becomes of it, it cannot be sent again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::ids::UserId;

/// How long after it was first sent an announcement is still sent again.
pub const RETRY_FOR: Duration = Duration::from_secs(300);

/// One announcement: who, which way, and its place in the order they were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// Whose presence changed.
    pub user: UserId,
    /// Whether they came online.
    pub online: bool,
    /// Increases with every announcement made.
    number: u64,
}

/// The newest announcement for one user, not yet taken by the chat service.
#[derive(Debug)]
struct Newest {
    number: u64,
    online: bool,
    /// When it was first sent.
    since: Instant,
    /// It failed and waits to be handed out by [`Announcements::due`].
    failed: bool,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    newest: HashMap<UserId, Newest>,
}

/// The announcements not yet taken by the chat service; cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Announcements {
    state: Arc<Mutex<State>>,
}

impl Announcements {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new announcement for `user`, which supersedes any older one.
    pub fn make(&self, user: UserId, online: bool) -> Announcement {
        let mut state = self.lock();
        state.next += 1;
        let number = state.next;
        state.newest.insert(user, Newest { number, online, since: Instant::now(), failed: false });
        Announcement { user, online, number }
    }

    /// Records how a sending of `announcement` ended: it is done, unless it failed for a
    /// reason that may pass (`retry`) and is still its user's newest.
    pub fn settle(&self, announcement: Announcement, retry: bool) {
        let mut state = self.lock();
        let Some(newest) = state.newest.get_mut(&announcement.user) else { return };
        if newest.number != announcement.number {
            return;
        }
        if retry {
            newest.failed = true;
        } else {
            state.newest.remove(&announcement.user);
        }
    }

    /// Up to `limit` failed announcements to send again, as of `now`; each must be
    /// settled again. Those first sent more than [`RETRY_FOR`] ago are given up.
    pub fn due(&self, limit: usize, now: Instant) -> Vec<Announcement> {
        let mut state = self.lock();
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (&user, newest) in state.newest.iter_mut().filter(|(_, n)| n.failed) {
            if now.duration_since(newest.since) > RETRY_FOR {
                expired.push(user);
            } else if due.len() < limit {
                newest.failed = false;
                due.push(Announcement { user, online: newest.online, number: newest.number });
            }
        }
        for user in expired {
            let online = state.newest.remove(&user).is_some_and(|n| n.online);
            tracing::warn!(%user, online, "presence announcement given up after {RETRY_FOR:?}");
        }
        due
    }

    /// How many failed announcements wait to be sent again.
    pub fn failed(&self) -> usize {
        self.lock().newest.values().filter(|n| n.failed).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    #[test]
    fn a_taken_announcement_is_done_and_a_failed_one_is_due_once() {
        let announcements = Announcements::default();
        let taken = announcements.make(ALICE, true);
        announcements.settle(taken, false);
        let failed = announcements.make(BOB, false);
        announcements.settle(failed, true);
        assert_eq!(announcements.failed(), 1);

        let due = announcements.due(10, Instant::now());
        assert_eq!(due, [failed]);
        assert!(announcements.due(10, Instant::now()).is_empty(), "handed out once until settled");
        announcements.settle(due[0], false);
        assert_eq!(announcements.failed(), 0);
    }

    #[test]
    fn an_older_announcement_never_outlives_a_newer_one() {
        let announcements = Announcements::default();
        let online = announcements.make(ALICE, true);
        let offline = announcements.make(ALICE, false);
        // The older one fails after the newer one was taken: nothing is left to send.
        announcements.settle(offline, false);
        announcements.settle(online, true);
        assert_eq!(announcements.failed(), 0);

        // Both fail, the older one last: only the newer one is sent again.
        let online = announcements.make(ALICE, true);
        let offline = announcements.make(ALICE, false);
        announcements.settle(offline, true);
        announcements.settle(online, true);
        assert_eq!(announcements.due(10, Instant::now()), [offline]);
    }

    #[test]
    fn failures_are_handed_out_in_batches_and_given_up_in_the_end() {
        let announcements = Announcements::default();
        for user in 0..5 {
            let a = announcements.make(UserId(user), false);
            announcements.settle(a, true);
        }
        assert_eq!(announcements.due(2, Instant::now()).len(), 2);
        assert_eq!(announcements.failed(), 3);
        let later = Instant::now() + RETRY_FOR + Duration::from_secs(1);
        assert!(announcements.due(10, later).is_empty());
        assert_eq!(announcements.failed(), 0, "given up");
    }
}
