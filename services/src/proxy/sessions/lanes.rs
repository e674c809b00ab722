//! Lanes: one user's lease operations, one at a time (see "The lock, and lanes" in the
//! module head of [`sessions`](super)).

use std::sync::PoisonError;

use super::{Link, Sessions, Shared};
use crate::ids::UserId;

/// A held lane: one user's lease operations wait for it. Left when dropped, which takes
/// the lock, so it must be dropped while the lock is not held.
pub(super) struct Lane<'a, C> {
    /// Where the lane is marked.
    shared: &'a Shared<C>,
    /// Whose lane.
    pub(super) user: UserId,
}

impl<C> Drop for Lane<'_, C> {
    fn drop(&mut self) {
        self.shared.lock().lanes.remove(&self.user);
        self.shared.lane_left.notify_all();
    }
}

impl<C: Link> Sessions<C> {
    /// Waits for `user`'s lane and takes it.
    pub(super) fn lane(&self, user: UserId) -> Lane<'_, C> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.lanes.contains(&user) {
            state.waiting += 1;
            while state.lanes.contains(&user) {
                state = shared.lane_left.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.waiting -= 1;
        }
        state.lanes.insert(user);
        Lane { shared, user }
    }

    /// How many operations wait for a lane.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }
}
