//! The proxy's session state, with one owner: [`Sessions`] keeps which connection belongs
//! to which user, the presence leases those sessions stand on, and the presence
//! announcements the chat service has not taken yet.
//!
//! A *session* is a user bound to one connection, with an *epoch*: a number no other
//! session of this proxy had. A login claims the user's lease for this proxy and binds a
//! session; ending a session unbinds it and releases the lease; renewal extends the lease
//! of every session, takes back a lease nobody holds, and ends the sessions whose lease
//! another proxy holds; a kick from the proxy that claimed a lease since ends the session
//! here. One session per user: a login replaces the user's session on another connection
//! here (kicked) or on another proxy (the caller asks that proxy to kick it).
//! Announcements tell the user's friends; each operation makes them and hands them to an
//! [`Announcer`].
//!
//! This file holds the table and the operations that start and end sessions (login,
//! resume, end); `lanes.rs` the per-user lanes below; `upkeep.rs` what keeps sessions
//! standing on their leases afterwards (renewal, kicks from other proxies, sweeps).
//!
//! # The lock, and lanes
//!
//! All of it sits behind one mutex, and the mutex is held for memory only: never across a
//! presence (Redis) round trip, so no login waits for another user's login or logout, nor
//! for the renewal of every lease at once.
//!
//! What must be ordered across a round trip is ordered per user. Every operation that
//! changes or reads one user's lease on the way to changing a session (the claim of a
//! login, the release of an ended session, the lookup of a kick) runs in that user's
//! *lane*: a mark in the state that one operation on the user holds at a time, the others
//! waiting for it on a condition variable. A lane is held across the round trip, but only
//! an operation on the same user's lease waits for it, and that one would have to be
//! ordered after it anyway. An operation holds at most one lane at a time, so lanes cannot
//! wait for each other in a circle. Sweeping holds no lane; renewal holds only the lane
//! of a user whose lease it found lost (to take it back), one at a time.
//!
//! Two rules carry the reasoning below:
//!
//! 1. A session is bound only in its user's lane, after the claim of its lease returned,
//!    in the critical section that checks that its connection is still open. So whenever
//!    an operation holds a user's lane, the user's session here (if any) belongs to this
//!    proxy's latest claim of the lease.
//! 2. An ended session is unbound first, under the lock; its lease is released after, in
//!    its user's lane, and only if the user has no session here by then. A session bound
//!    in between holds the lease (rule 1: its claim came later), so it is left alone.
//!
//! # Interleavings, and why each is safe
//!
//! *Login against a disconnect* (a reset while the password is checked or the lease is
//! claimed): the server marks a connection closed before it reports the disconnect, whose
//! [`Sessions::end`] unbinds under the lock. The login checks the connection under the
//! lock in the critical section that binds. If the disconnect took the lock first, the
//! login sees the connection closed, binds nothing and releases the lease it claimed
//! (announcing the user offline if the user was online before); otherwise the login bound
//! first and the disconnect ends that session. Either way nothing is left on a closed
//! connection and no lease is left without a session.
//!
//! *Two logins on one connection*: each binds in its own user's lane. The one that binds
//! second finds the first's session on the connection and ends it as a logout would: it
//! unbinds it in the critical section where it binds, and releases its lease by rule 2
//! after leaving its own lane. Two logins of the same user on one connection: the second
//! takes the session over with a new epoch.
//!
//! *A logout against a login of the same user on another connection here*: by rule 2 the
//! release and the login's claim run in the same lane, one after the other. If the
//! release runs first, the login claims a free lease and the user's friends hear
//! "offline", then "online". If the claim and bind run first, the release finds the new
//! session and leaves its lease alone. The old order (release landing after the new claim)
//! would have left a session without a lease; the lane rules it out.
//!
//! *A kick against a newer login here*: a proxy that claimed the lease asks this one to
//! kick its session ([`Sessions::kick_stale`]). The kick looks the lease up in the user's
//! lane, so a login here either bound before the lookup (which then sees whichever claim
//! came last: this proxy's spares the newer session, the other's ends it, being older) or
//! claims after the kick is done (and then asks the other proxy to kick its session).
//!
//! *Renewal against logout and login*: [`Sessions::renew`] takes (user, epoch) pairs under
//! the lock, renews outside it, and reconciles under it. Renewal only extends a lease this
//! proxy holds, and reconciliation never binds. So a session that ended meanwhile is not
//! brought back: a release after the renewal removes the renewed lease, and a release
//! before it makes the renewal report the lease lost, for a session that no longer exists.
//! A lease found lost is looked at again in its user's lane (the only lane renewal takes,
//! one at a time), and only while the session still has the epoch taken before the
//! renewal: a session bound since comes from a newer claim than the one the renewal saw
//! lost, and is spared. If another proxy holds the lease now, the session ends. If nobody
//! does (the presence table lost it, or it lapsed while this proxy could not renew), the
//! proxy takes it back ([`Presence::reclaim`], which never takes a live lease from another
//! proxy) and the session goes on. A session that ends while its lease is taken back is
//! unbound under the lock, and its release waits for the lane, then finds no session and
//! releases the lease taken back: rule 2 again.
//!
//! *Sweeping*: [`Sessions::sweep`] hands over leases that lapsed, whichever proxy held
//! them, and the presence table gives each to exactly one sweeper. A session whose own
//! lease lapsed here (the proxy stalled past the TTL) is ended by the next renewal, which
//! finds the lease lost.
//!
//! *Announcements*: an "offline" is made under the lock while the lane of the release it
//! reports is held, so a user's announcements are numbered in the order of the lease
//! changes, and the newest (the one sent again after a failure) is the latest truth.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rpc_core::server::{Connection, ConnectionId};

use super::announcements::{Announcement, Announcements, Announcer, Settle, Settled, Then};
use crate::ids::UserId;
use crate::presence::{self, Presence};

mod lanes;
mod upkeep;

use self::lanes::Lane;

/// What a kicked session is told when its user logged in elsewhere.
pub const REPLACED: &str = "logged in from another connection";
/// What a session is told when renewal found that this proxy no longer holds its lease.
const LEASE_LOST: &str = "the session's presence lease was lost";

/// What [`Sessions`] needs of a client connection: [`Connection`] in the proxy, a stand-in
/// in tests.
pub trait Link: Clone + Send + Sync + 'static {
    /// The connection's id, unique for the life of its server.
    fn id(&self) -> ConnectionId;
    /// Whether the connection is still open. The server marks a connection closed before
    /// it reports the disconnect; [`Sessions`] relies on that order.
    fn is_open(&self) -> bool;
    /// Tells the client why its session ends, then closes the connection.
    fn kick(&self, reason: &str);
}

impl Link for Connection {
    fn id(&self) -> ConnectionId {
        Connection::id(self)
    }

    fn is_open(&self) -> bool {
        Connection::is_open(self)
    }

    fn kick(&self, reason: &str) {
        super::delivery::kick(self, reason);
    }
}

/// Settings of [`Sessions`].
#[derive(Debug, Clone)]
pub struct Config {
    /// This proxy's instance id: whose leases these are in the presence table.
    pub owner: String,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
}

/// What a login did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Login {
    /// The user logged in.
    pub user: UserId,
    /// The session's epoch, so that undoing this login ends this session and no newer one
    /// ([`Sessions::end_login`]).
    pub epoch: u64,
    /// Whether this session replaced one the user had: on another connection here (kicked
    /// already) or on another proxy.
    pub replaced: bool,
    /// The other proxy whose lease this login took over; the caller asks it to kick its
    /// session, which it does with [`Sessions::kick_stale`].
    pub elsewhere: Option<String>,
}

/// Why a login bound no session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The lease could not be claimed; no session was bound.
    #[error(transparent)]
    Presence(#[from] presence::Error),
    /// The connection closed while the login ran: no session was bound, and the lease the
    /// login claimed was released.
    #[error("the connection closed during the login")]
    Closed,
}

/// The sessions of one proxy, their leases and the announcements not yet taken; shared by
/// the proxy's worker threads and its renewal thread.
pub struct Sessions<C = Connection> {
    /// Whose leases, and for how long.
    config: Config,
    /// The lease table.
    presence: Arc<dyn Presence>,
    /// Where announcements go.
    announcer: Box<dyn Announcer>,
    /// The state and its lock; shared with the settling of announcements in flight,
    /// which must not hold the announcer (it may run on the announcer's own threads).
    shared: Arc<Shared<C>>,
}

/// The state behind its lock, with the signal that a lane was left.
struct Shared<C> {
    /// Everything [`Sessions`] keeps.
    state: Mutex<State<C>>,
    /// Notified whenever a lane is left.
    lane_left: Condvar,
}

/// What the lock guards.
struct State<C> {
    /// The user of each connection's session.
    by_connection: HashMap<ConnectionId, UserId>,
    /// Each user's session; agrees with `by_connection` both ways.
    by_user: HashMap<UserId, Session<C>>,
    /// Users with a lease operation running: their lanes.
    lanes: HashSet<UserId>,
    /// How many operations wait for a lane.
    waiting: usize,
    /// The epoch of the last session bound.
    epoch: u64,
    /// Announcements not yet taken by the chat service.
    announcements: Announcements,
    /// When the last renewal that reached the presence table started (or the sessions
    /// were made): until a lease TTL after it, no lease of this proxy can have lapsed.
    renewed_at: Instant,
}

/// One user's session.
struct Session<C> {
    /// Where the user is connected.
    connection: C,
    /// Tells this session from an earlier or later one of the same user.
    epoch: u64,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, State<C>> {
        // Every change below leaves the maps agreeing before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Link> State<C> {
    /// Binds `user` to `connection` with a new epoch, which it returns; neither may be bound.
    fn bind(&mut self, user: UserId, connection: C) -> u64 {
        self.epoch += 1;
        self.by_connection.insert(connection.id(), user);
        self.by_user.insert(user, Session { connection, epoch: self.epoch });
        self.epoch
    }

    /// Ends the session on `connection`, returning its user and session.
    fn unbind_connection(&mut self, connection: ConnectionId) -> Option<(UserId, Session<C>)> {
        let user = self.by_connection.remove(&connection)?;
        let session = self.by_user.remove(&user)?;
        Some((user, session))
    }

    /// Ends `user`'s session, returning it.
    fn unbind_user(&mut self, user: UserId) -> Option<Session<C>> {
        let session = self.by_user.remove(&user)?;
        self.by_connection.remove(&session.connection.id());
        Some(session)
    }
}

impl<C: Link> Sessions<C> {
    /// No sessions yet; leases in `presence`, announcements to `announcer`.
    pub fn new(config: Config, presence: Arc<dyn Presence>, announcer: Box<dyn Announcer>) -> Self {
        let state = State {
            by_connection: HashMap::new(),
            by_user: HashMap::new(),
            lanes: HashSet::new(),
            waiting: 0,
            epoch: 0,
            announcements: Announcements::default(),
            renewed_at: Instant::now(),
        };
        let shared = Arc::new(Shared { state: Mutex::new(state), lane_left: Condvar::new() });
        Sessions { config, presence, announcer, shared }
    }

    /// The user logged in on `connection`, if any.
    pub fn user_of(&self, connection: ConnectionId) -> Option<UserId> {
        self.shared.lock().by_connection.get(&connection).copied()
    }

    /// The connection `user` is logged in on, if any.
    pub fn connection_of(&self, user: UserId) -> Option<C> {
        self.shared.lock().by_user.get(&user).map(|s| s.connection.clone())
    }

    /// How many users are logged in.
    pub fn len(&self) -> usize {
        self.shared.lock().by_user.len()
    }

    /// Whether nobody is logged in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many announcements failed and wait to be sent again.
    pub fn unannounced(&self) -> usize {
        self.shared.lock().announcements.failed()
    }

    /// Logs `user`, whose password was checked, in on `connection`: claims the user's lease
    /// for this proxy and binds the session. A session the user had on another connection
    /// here is kicked; one on another proxy is named in [`Login::elsewhere`]. A session
    /// another login bound on `connection` meanwhile ends as a logout would. Nothing is
    /// announced yet: the caller calls [`Sessions::announce_online`] once the login
    /// succeeded.
    ///
    /// # Errors
    ///
    /// [`LoginError::Presence`] when the claim fails; [`LoginError::Closed`] when the
    /// connection closed meanwhile (the claimed lease is released then, and the user
    /// announced offline if they were online before).
    pub fn login(&self, user: UserId, connection: &C) -> Result<Login, LoginError> {
        self.start(user, connection)
    }

    /// Resumes `user`'s session on `connection`, a new connection of a client whose old one
    /// broke; the caller authenticated the user with a session token instead of the
    /// password. Otherwise a resume is a login: the same claim, replacement and errors.
    ///
    /// # Errors
    ///
    /// As [`Sessions::login`].
    pub fn resume(&self, user: UserId, connection: &C) -> Result<Login, LoginError> {
        self.start(user, connection)
    }

    /// Tells the user's friends that `login`'s user came online, unless the login replaced
    /// a session (the user was online already).
    pub fn announce_online(&self, login: &Login) {
        if !login.replaced {
            let announcement = self.shared.lock().announcements.make(login.user, true);
            self.send(announcement, None);
        }
    }

    /// Ends the session on `connection`, as a logout or a closed connection does: releases
    /// the lease if this proxy still holds it and tells the user's friends. Returns the
    /// session's user, if there was one.
    pub fn end(&self, connection: ConnectionId) -> Option<UserId> {
        let (user, _) = self.shared.lock().unbind_connection(connection)?;
        if let Some(offline) = self.release(user) {
            self.send(offline, None);
        }
        tracing::info!(%user, %connection, "session ended");
        Some(user)
    }

    /// Ends the session `login` bound on `connection`, as [`Sessions::end`] does, if it is
    /// still there: a login that fails after binding (its reply could not be built) undoes
    /// itself without ending a newer login on the same connection or of the same user.
    /// Returns whether it ended it.
    pub fn end_login(&self, login: &Login, connection: ConnectionId) -> bool {
        {
            let mut state = self.shared.lock();
            let current = state.by_user.get(&login.user).map(|s| (s.connection.id(), s.epoch));
            if current != Some((connection, login.epoch)) {
                return false;
            }
            state.unbind_connection(connection);
        }
        if let Some(offline) = self.release(login.user) {
            self.send(offline, None);
        }
        tracing::info!(user = %login.user, %connection, "session ended: its login failed");
        true
    }

    /// Ends every session as [`Sessions::end`] does, leaving the connections open, then
    /// waits until the chat service has settled every announcement, for at most `wait`.
    /// Returns how many sessions it ended.
    pub fn end_all(&self, wait: Duration) -> usize {
        let ended: Vec<UserId> = {
            let mut state = self.shared.lock();
            state.by_connection.clear();
            state.by_user.drain().map(|(user, _)| user).collect()
        };
        let mut settled = Settled::new();
        for &user in &ended {
            if let Some(offline) = self.release(user) {
                self.send(offline, Some(settled.then()));
            }
        }
        let unsettled = settled.wait(Instant::now() + wait);
        if unsettled > 0 {
            tracing::warn!(left = unsettled, "offline announcements unconfirmed at shutdown");
        }
        if !ended.is_empty() {
            tracing::info!(sessions = ended.len(), announced = settled.sent, "sessions ended");
        }
        ended.len()
    }

    /// [`Sessions::login`] and [`Sessions::resume`].
    fn start(&self, user: UserId, connection: &C) -> Result<Login, LoginError> {
        let lane = self.lane(user);
        let previous = self.presence.claim(user, &self.config.owner, self.config.lease_ttl)?;
        let (old, displaced, bound) = {
            let mut state = self.shared.lock();
            // The claim took the lease of the user's session here over: that session ends.
            let old = state.unbind_user(user);
            // Another user's session that a login bound on this connection meanwhile.
            let displaced = state.unbind_connection(connection.id()).map(|(other, _)| other);
            let epoch = connection.is_open().then(|| state.bind(user, connection.clone()));
            (old, displaced, epoch)
        };
        let kicked = old.filter(|s| s.connection.id() != connection.id());
        if let Some(session) = &kicked {
            session.connection.kick(REPLACED);
        }
        let result = if let Some(epoch) = bound {
            drop(lane);
            let elsewhere = previous.filter(|p| *p != self.config.owner);
            Ok(Login { user, epoch, replaced: kicked.is_some() || elsewhere.is_some(), elsewhere })
        } else {
            // The connection's disconnect finds (or found) nothing of this login's to end,
            // so the login gives back the lease it took.
            let was_online = previous.is_some() || kicked.is_some();
            let offline = self.release_in(lane, was_online);
            if let Some(offline) = offline {
                self.send(offline, None);
            }
            Err(LoginError::Closed)
        };
        if let Some(other) = displaced {
            if let Some(offline) = self.release(other) {
                self.send(offline, None);
            }
            tracing::info!(user = %other, connection = %connection.id(), "session ended by a later login");
        }
        result
    }

    /// Releases the lease of `user`, whose session here was unbound, in the user's lane and
    /// only if no session of the user was bound here since (rule 2 of the module head).
    /// Returns the "offline" announcement to send when it released this proxy's lease.
    fn release(&self, user: UserId) -> Option<Announcement> {
        let lane = self.lane(user);
        let newer = self.shared.lock().by_user.contains_key(&user);
        if newer {
            return None;
        }
        self.release_in(lane, true)
    }

    /// Releases the lease of the lane's user if this proxy holds it, and makes the
    /// "offline" announcement (when `announce`) before leaving the lane, so that it is
    /// numbered before whatever the user's next login here announces.
    fn release_in(&self, lane: Lane<'_, C>, announce: bool) -> Option<Announcement> {
        let user = lane.user;
        match self.presence.release(user, &self.config.owner) {
            Ok(true) if announce => {
                let offline = self.shared.lock().announcements.make(user, false);
                drop(lane);
                Some(offline)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%user, %error, "cannot release the lease; it will lapse");
                None
            }
        }
    }

    /// Hands `announcement` to the announcer; `then` runs once it is settled.
    fn send(&self, announcement: Announcement, then: Option<Then>) {
        let shared = Arc::clone(&self.shared);
        let record = move |retry: bool| {
            shared.lock().announcements.settle(announcement, retry);
            if let Some(then) = then {
                then();
            }
        };
        self.announcer.announce(announcement, Settle::new(record));
    }
}

impl<C> std::fmt::Debug for Sessions<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sessions, waiting) = {
            let state = self.shared.lock();
            (state.by_user.len(), state.waiting)
        };
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .field("sessions", &sessions)
            .field("waiting_for_lanes", &waiting)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
