//! What keeps sessions standing on leases after their login: renewal of every lease
//! (taking back a lease found lost, or ending the session whose lease another proxy
//! holds), kicks from the proxy that claimed a lease since, sweeps of lapsed leases and
//! retries of failed announcements. The renewal thread (`proxy/renewal.rs`) calls
//! [`Sessions::renew`], [`Sessions::sweep`] and [`Sessions::retry`]; another proxy's
//! `Delivery.Kick` call (`proxy/delivery.rs`), [`Sessions::kick_stale`].

use std::collections::HashMap;
use std::time::Instant;

use super::{Link, Sessions, State, LEASE_LOST};
use crate::ids::UserId;
use crate::presence;
use crate::proxy::announcements::Settled;

impl<C: Link> Sessions<C> {
    /// Renews the lease of every session once. A session whose lease another proxy holds
    /// now ends (kicked, without releasing); one whose lease nobody holds takes it back
    /// and goes on (see the head of [`sessions`](super)). Returns how many sessions it
    /// ended.
    ///
    /// # Errors
    ///
    /// When the presence table cannot be reached; nothing changed then, and the caller
    /// should try again soon.
    pub fn renew(&self) -> Result<usize, presence::Error> {
        let (snapshot, renewed_at): (HashMap<UserId, u64>, Instant) = {
            let state = self.shared.lock();
            (state.by_user.iter().map(|(&user, session)| (user, session.epoch)).collect(), state.renewed_at)
        };
        let started = Instant::now();
        if snapshot.is_empty() {
            self.shared.lock().renewed_at = started;
            return Ok(0);
        }
        let users: Vec<UserId> = snapshot.keys().copied().collect();
        let lost = self.presence.renew_all(&users, &self.config.owner, self.config.lease_ttl)?;
        self.shared.lock().renewed_at = started;
        // A lease renewed (or claimed) less than a TTL ago cannot have lapsed, so one missing
        // now was lost by the table and nobody announced its user offline. After a longer
        // gap it may have lapsed and been swept, and its user's friends told.
        let may_have_lapsed = started.saturating_duration_since(renewed_at) >= self.config.lease_ttl;
        let mut ended = 0;
        for user in lost {
            // Only the session the renewal saw: one bound since stands on a newer claim.
            if let Some(&epoch) = snapshot.get(&user) {
                ended += usize::from(self.take_back(user, epoch, may_have_lapsed));
            }
        }
        Ok(ended)
    }

    /// Looks again, in `user`'s lane, at the lease that renewal found this proxy no longer
    /// holds, if the user's session still has `epoch`: takes it back when nobody holds it
    /// (and tells the user's friends the user is online when `may_have_lapsed`, since a
    /// sweep may have told them otherwise), or ends the session when another proxy holds
    /// it. Returns whether it ended the session.
    fn take_back(&self, user: UserId, epoch: u64, may_have_lapsed: bool) -> bool {
        let current = |state: &State<C>| state.by_user.get(&user).map(|s| s.epoch) == Some(epoch);
        let lane = self.lane(user);
        if !current(&self.shared.lock()) {
            return false;
        }
        match self.presence.reclaim(user, &self.config.owner, self.config.lease_ttl) {
            Ok(None) => {
                tracing::info!(%user, "presence lease found missing; claimed again");
                let online = may_have_lapsed.then(|| self.shared.lock().announcements.make(user, true));
                drop(lane);
                if let Some(online) = online {
                    self.send(online, None);
                }
                false
            }
            Ok(Some(holder)) => {
                let session = {
                    let mut state = self.shared.lock();
                    if current(&state) {
                        state.unbind_user(user)
                    } else {
                        None
                    }
                };
                drop(lane);
                let Some(session) = session else { return false };
                tracing::info!(%user, proxy = %holder, "presence lease held elsewhere; closing the session");
                session.connection.kick(LEASE_LOST);
                true
            }
            Err(error) => {
                tracing::warn!(%user, %error, "cannot take a lost lease back; trying at the next renewal");
                false
            }
        }
    }

    /// Kicks `user`'s session here, which a login on proxy `new_owner` replaced, and tells
    /// the client `reason`; the lease is not released (it is the new proxy's). A kick that
    /// arrives after the user logged in here again, so that this proxy holds the lease
    /// once more, is about an older session and spares the newest. Returns whether it
    /// ended a session.
    ///
    /// # Errors
    ///
    /// When the lease cannot be looked up; nothing was ended.
    pub fn kick_stale(&self, user: UserId, new_owner: &str, reason: &str) -> Result<bool, presence::Error> {
        if new_owner == self.config.owner {
            return Ok(false);
        }
        let lane = self.lane(user);
        let holder = self.presence.lookup(&[user])?.pop().flatten();
        if holder.as_deref() == Some(self.config.owner.as_str()) {
            return Ok(false);
        }
        let session = self.shared.lock().unbind_user(user);
        drop(lane);
        let Some(session) = session else { return Ok(false) };
        tracing::info!(%user, by = new_owner, "session replaced elsewhere");
        session.connection.kick(reason);
        Ok(true)
    }

    /// Takes the leases that lapsed in the presence table, whichever proxy held them, and
    /// tells each user's friends they went offline. The table hands a lapsed lease to one
    /// sweeper only, so with every proxy sweeping each user is announced once. Returns how
    /// many users it announced.
    ///
    /// It takes `batch` leases at a time and waits for the chat service to settle a
    /// batch's announcements before taking more, so that the thousands of users of a
    /// crashed proxy do not flood one connection to the chat service. It stops at `until`;
    /// what is left lapsed waits for the next sweep, here or on another proxy.
    pub fn sweep(&self, batch: usize, until: Instant) -> usize {
        let mut announced = 0;
        loop {
            let lapsed = match self.presence.sweep_lapsed(batch) {
                Ok(lapsed) => lapsed,
                Err(error) => {
                    tracing::warn!(%error, "cannot sweep lapsed leases");
                    return announced;
                }
            };
            let full = batch > 0 && lapsed.len() == batch;
            let mut settled = Settled::new();
            for lease in lapsed {
                tracing::info!(user = %lease.user, proxy = %lease.owner, "presence lease lapsed; announcing offline");
                let offline = self.shared.lock().announcements.make(lease.user, false);
                self.send(offline, Some(settled.then()));
            }
            announced += settled.sent;
            let unsettled = settled.wait(until);
            if unsettled > 0 {
                tracing::debug!(
                    left = unsettled,
                    "offline announcements still in flight; sweeping more later"
                );
                return announced;
            }
            if !full || Instant::now() >= until {
                return announced;
            }
        }
    }

    /// Sends again up to `limit` announcements that failed for a reason that may pass, only
    /// the newest per user. The chat service drops one that no longer agrees with the
    /// presence table when it arrives. Returns how many it sent.
    pub fn retry(&self, limit: usize) -> usize {
        let due = self.shared.lock().announcements.due(limit, Instant::now());
        for &announcement in &due {
            self.send(announcement, None);
        }
        due.len()
    }
}
