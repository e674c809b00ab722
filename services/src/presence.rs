//! Who is online, and on which proxy: a lease per user.
//!
//! A proxy that logs a user in *claims* the user's lease with its own instance id and a
//! time to live, *renews* the leases of all its users well within that time, and
//! *releases* a lease at logout. A lease that is not renewed lapses, and a user without a
//! live lease is offline; so when a proxy dies its users go offline within one TTL and
//! nobody is ever stuck online. Renewal and release only act while the lease still
//! belongs to the proxy that asks, so a proxy that lost a user to a newer login elsewhere
//! cannot take the user back or log them out.
//!
//! A lapsed lease is offline for [`Presence::lookup`] at once, but nobody has told the
//! user's friends yet: the proxy that held it may have crashed. So every proxy *sweeps*
//! on a timer ([`Presence::sweep_lapsed`]), which removes lapsed leases and hands each
//! to exactly one sweeper, however many sweep at once; that proxy announces the user
//! offline. A lease that was renewed in time, released, or claimed again by a new login
//! (even after it lapsed) is not lapsed any more and is never handed out.
//!
//! [`Memory`] serves the standalone mode and unit tests; [`Redis`] serves the cluster,
//! where every proxy and chat service shares one view.
//!
//! ```
//! use std::time::Duration;
//! use services::presence::{Lapsed, Memory, Presence};
//! use services::UserId;
//!
//! let presence = Memory::new();
//! let ttl = Duration::from_secs(30);
//! assert_eq!(presence.claim(UserId(1), "proxy-a", ttl).unwrap(), None);
//! assert_eq!(presence.claim(UserId(1), "proxy-b", ttl).unwrap(), Some("proxy-a".into()));
//! assert!(!presence.release(UserId(1), "proxy-a").unwrap()); // no longer proxy-a's
//! assert_eq!(
//!     presence.lookup(&[UserId(1), UserId(2)]).unwrap(),
//!     vec![Some("proxy-b".to_string()), None]
//! );
//!
//! // proxy-b dies: the lease lapses, and one sweep hands it out, once.
//! presence.claim(UserId(2), "proxy-b", Duration::from_millis(1)).unwrap();
//! std::thread::sleep(Duration::from_millis(5));
//! assert_eq!(presence.lookup(&[UserId(2)]).unwrap(), vec![None]);
//! let lapsed = presence.sweep_lapsed(100).unwrap();
//! assert_eq!(lapsed, vec![Lapsed { user: UserId(2), owner: "proxy-b".into() }]);
//! assert!(presence.sweep_lapsed(100).unwrap().is_empty());
//! ```

pub mod memory;
pub mod redis;

use std::time::Duration;

use crate::ids::UserId;

pub use self::memory::Memory;
pub use self::redis::Redis;

/// The lease table: user -> proxy instance id, each entry with a time to live.
pub trait Presence: Send + Sync {
    /// Gives `user`'s lease to proxy `owner` for `ttl`, whoever held it before, and
    /// returns the previous holder if its lease was still live (which may be `owner`
    /// itself). A caller that gets another proxy back tells it to close its session.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a TTL under one millisecond; backend failures.
    fn claim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error>;

    /// Extends `user`'s lease to `ttl` from now if `owner` still holds it; returns false
    /// when the lease lapsed or belongs to another proxy.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a TTL under one millisecond; backend failures.
    fn renew(&self, user: UserId, owner: &str, ttl: Duration) -> Result<bool, Error>;

    /// Renews many leases at once, as a proxy does for all its sessions on a timer, and
    /// returns the users whose lease `owner` no longer holds (their sessions should end).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a TTL under one millisecond; backend failures.
    fn renew_all(&self, users: &[UserId], owner: &str, ttl: Duration) -> Result<Vec<UserId>, Error>;

    /// Takes `user`'s lease for `owner` for `ttl` only if no other proxy holds it, claimed
    /// it last (even if it lapsed since), or released it or held it when it was swept in
    /// the last minutes; returns that proxy otherwise (taking nothing). A proxy calls it
    /// for a session whose lease renewal found missing: the table lost it (a backend
    /// restarted empty), or it lapsed while the proxy could not renew. A lease a newer
    /// login took elsewhere is never taken back for the older session, even once the
    /// newer one ended. A lapsed lease taken back is no longer lapsed, so no sweep hands
    /// it out.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTtl`] for a TTL under one millisecond; backend failures.
    fn reclaim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error>;

    /// How many times a connection to the backend broke while in use, for a backend
    /// reached over the network (0 for one in memory). A proxy renews its leases at once
    /// when the count moves, because a backend that went away may have come back without
    /// them.
    fn breaks(&self) -> u64 {
        0
    }

    /// Ends `user`'s lease if `owner` still holds it; returns whether it did.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn release(&self, user: UserId, owner: &str) -> Result<bool, Error>;

    /// The proxy holding each user's live lease, `None` for users who are offline, in the
    /// order asked. A lapsed lease is offline here at once, whether or not it was swept.
    ///
    /// # Errors
    ///
    /// Backend failures.
    fn lookup(&self, users: &[UserId]) -> Result<Vec<Option<String>>, Error>;

    /// Removes up to `limit` leases that lapsed (were neither renewed, released nor
    /// claimed again in time) and returns them with the proxy that held them, so that the
    /// caller tells their friends they went offline. Removal and return are one atomic
    /// step: with many proxies sweeping the same table, each lapsed lease is returned by
    /// exactly one call. A caller that gets `limit` entries back sweeps again; fewer means
    /// nothing else had lapsed.
    ///
    /// # Errors
    ///
    /// Backend failures; nothing was removed then.
    fn sweep_lapsed(&self, limit: usize) -> Result<Vec<Lapsed>, Error>;
}

/// A lease that lapsed, as [`Presence::sweep_lapsed`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lapsed {
    /// The user who is offline now.
    pub user: UserId,
    /// The proxy that held the lease and stopped renewing it.
    pub owner: String,
}

/// A presence operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A lease needs a time to live of at least one millisecond.
    #[error("lease TTL must be at least 1 ms, got {0:?}")]
    InvalidTtl(Duration),
    /// The presence backend could not be reached.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
}

/// The TTL in whole milliseconds, rounded up, refusing zero.
pub(crate) fn ttl_millis(ttl: Duration) -> Result<u64, Error> {
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    match u64::try_from(millis) {
        Ok(0) => Err(Error::InvalidTtl(ttl)),
        Ok(ms) => Ok(ms),
        Err(_) => Ok(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_rounded_up_to_millis() {
        assert_eq!(ttl_millis(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(ttl_millis(Duration::from_millis(1500)).unwrap(), 1500);
        assert!(matches!(ttl_millis(Duration::ZERO), Err(Error::InvalidTtl(_))));
    }
}
