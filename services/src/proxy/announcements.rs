//! The proxy's record of the presence announcements it sends the chat service.
//!
//! Per user it keeps the newest announcement until the chat service has taken it. One
//! that failed for a reason that may pass (no instance, a lost connection, a timeout) is
//! handed out again by [`Announcements::due`]. An older announcement never outlives a
//! newer one for the same user: whatever becomes of it, it cannot be sent again.
//!
//! The record has no lock of its own: it lives in the state of
//! [`Sessions`](super::Sessions), under the lock that guards the sessions, so that an
//! "offline" is made while the release it reports still holds its user's lane, and is
//! numbered before whatever that user's next login here announces.
//!
//! [`Sessions`](super::Sessions) hands each announcement to an [`Announcer`] (in the proxy,
//! a call to the chat service) with a [`Settle`] handle that records how the sending ended.

use std::collections::HashMap;
use std::sync::mpsc;
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

/// The announcements not yet taken by the chat service.
#[derive(Debug, Default)]
pub struct Announcements {
    /// The number of the last announcement made.
    next: u64,
    /// Each user's newest announcement not yet taken.
    newest: HashMap<UserId, Newest>,
}

impl Announcements {
    /// Records a new announcement for `user`, which supersedes any older one.
    pub fn make(&mut self, user: UserId, online: bool) -> Announcement {
        self.next += 1;
        let number = self.next;
        self.newest.insert(user, Newest { number, online, since: Instant::now(), failed: false });
        Announcement { user, online, number }
    }

    /// Records how a sending of `announcement` ended: it is done, unless it failed for a
    /// reason that may pass (`retry`) and is still its user's newest.
    pub fn settle(&mut self, announcement: Announcement, retry: bool) {
        let Some(newest) = self.newest.get_mut(&announcement.user) else { return };
        if newest.number != announcement.number {
            return;
        }
        if retry {
            newest.failed = true;
        } else {
            self.newest.remove(&announcement.user);
        }
    }

    /// Up to `limit` failed announcements to send again, as of `now`; each must be
    /// settled again. Those first sent more than [`RETRY_FOR`] ago are given up.
    pub fn due(&mut self, limit: usize, now: Instant) -> Vec<Announcement> {
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (&user, newest) in self.newest.iter_mut().filter(|(_, n)| n.failed) {
            if now.duration_since(newest.since) > RETRY_FOR {
                expired.push(user);
            } else if due.len() < limit {
                newest.failed = false;
                due.push(Announcement { user, online: newest.online, number: newest.number });
            }
        }
        for user in expired {
            let online = self.newest.remove(&user).is_some_and(|n| n.online);
            tracing::warn!(%user, online, "presence announcement given up after {RETRY_FOR:?}");
        }
        due
    }

    /// How many failed announcements wait to be sent again.
    pub fn failed(&self) -> usize {
        self.newest.values().filter(|n| n.failed).count()
    }
}

/// Where [`Sessions`](super::Sessions) sends the presence announcements it makes: the chat service, which
/// tells the user's friends.
pub trait Announcer: Send + Sync {
    /// Sends `announcement` without waiting, and settles it when the sending ended.
    /// [`Sessions`](super::Sessions) calls it without holding its lock, so it may settle at once.
    fn announce(&self, announcement: Announcement, settle: Settle);
}

/// How the sending of one announcement ended, handed back through [`Settle::done`]. One
/// dropped unsettled counts as a failure that may pass: the announcement is sent again.
pub struct Settle {
    /// Records the outcome; taken by `done` or by drop.
    record: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl Settle {
    /// A handle that hands the outcome to `record`.
    pub(super) fn new(record: impl FnOnce(bool) + Send + 'static) -> Settle {
        Settle { record: Some(Box::new(record)) }
    }

    /// The sending ended: taken by the chat service or refused for good (`retry` false),
    /// or failed for a reason that may pass (`retry` true), when [`Sessions::retry`](super::Sessions::retry) sends
    /// it again while it is still its user's newest.
    pub fn done(mut self, retry: bool) {
        if let Some(record) = self.record.take() {
            record(retry);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record(true);
        }
    }
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settle").field("settled", &self.record.is_none()).finish()
    }
}

/// Runs when an announcement is settled.
pub(super) type Then = Box<dyn FnOnce() + Send>;

/// Counts the announcements sent with [`Settled::then`] and waits for them to be settled.
pub(super) struct Settled {
    /// Given to each announcement, signalled when it is settled.
    sender: mpsc::Sender<()>,
    /// Where the signals arrive.
    receiver: mpsc::Receiver<()>,
    /// How many were sent.
    pub(super) sent: usize,
}

impl Settled {
    pub(super) fn new() -> Self {
        let (sender, receiver) = mpsc::channel();
        Settled { sender, receiver, sent: 0 }
    }

    /// What one more announcement runs once settled.
    pub(super) fn then(&mut self) -> Then {
        self.sent += 1;
        let sender = self.sender.clone();
        Box::new(move || {
            let _ = sender.send(());
        })
    }

    /// Waits until every announcement sent is settled, or `deadline`; returns how many
    /// were not settled by then.
    pub(super) fn wait(&self, deadline: Instant) -> usize {
        for settled in 0..self.sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.receiver.recv_timeout(left).is_err() {
                return self.sent - settled;
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);

    #[test]
    fn a_taken_announcement_is_done_and_a_failed_one_is_due_once() {
        let mut announcements = Announcements::default();
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
        let mut announcements = Announcements::default();
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
        let mut announcements = Announcements::default();
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
