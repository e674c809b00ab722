//! [`Presence`] in this process's memory, for the standalone mode and tests.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{ttl_millis, Error, Lapsed, Presence};
use crate::ids::UserId;

/// Leases in a map under a mutex; lapsed entries read as absent, stay in the map until
/// [`Presence::sweep_lapsed`] removes and returns them (under the same lock, so once),
/// and are replaced by a new claim.
#[derive(Debug, Default)]
pub struct Memory {
    /// The leases, live and lapsed.
    leases: Mutex<HashMap<UserId, Lease>>,
}

/// One user's lease.
#[derive(Debug, Clone)]
struct Lease {
    /// The proxy instance that holds it.
    owner: String,
    /// When it lapses unless renewed.
    expires: Instant,
}

impl Lease {
    fn live_owner(&self, now: Instant) -> Option<&str> {
        (self.expires > now).then_some(self.owner.as_str())
    }
}

impl Memory {
    /// An empty lease table.
    pub fn new() -> Self {
        Memory::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Lease>> {
        // Every update below is a single map operation, so a panic elsewhere cannot
        // leave the map half-changed.
        self.leases.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn renew_locked(
        leases: &mut HashMap<UserId, Lease>,
        user: UserId,
        owner: &str,
        expires: Instant,
        now: Instant,
    ) -> bool {
        match leases.get_mut(&user) {
            Some(lease) if lease.live_owner(now) == Some(owner) => {
                lease.expires = expires;
                true
            }
            _ => false,
        }
    }
}

/// `now + ttl`, with a TTL too large to represent meaning "very far away".
fn deadline(now: Instant, ttl: Duration) -> Result<Instant, Error> {
    ttl_millis(ttl)?;
    Ok(now.checked_add(ttl).unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)))
}

impl Presence for Memory {
    fn claim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        let previous = self.lock().insert(user, Lease { owner: owner.to_owned(), expires });
        Ok(previous.and_then(|lease| lease.live_owner(now).map(str::to_owned)))
    }

    fn renew(&self, user: UserId, owner: &str, ttl: Duration) -> Result<bool, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        Ok(Memory::renew_locked(&mut self.lock(), user, owner, expires, now))
    }

    fn renew_all(&self, users: &[UserId], owner: &str, ttl: Duration) -> Result<Vec<UserId>, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        let mut leases = self.lock();
        Ok(users
            .iter()
            .copied()
            .filter(|&user| !Memory::renew_locked(&mut leases, user, owner, expires, now))
            .collect())
    }

    fn reclaim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        let mut leases = self.lock();
        if let Some(holder) = leases.get(&user).and_then(|lease| lease.live_owner(now)) {
            if holder != owner {
                return Ok(Some(holder.to_owned()));
            }
        }
        leases.insert(user, Lease { owner: owner.to_owned(), expires });
        Ok(None)
    }

    fn release(&self, user: UserId, owner: &str) -> Result<bool, Error> {
        let now = Instant::now();
        let mut leases = self.lock();
        let owned = leases.get(&user).is_some_and(|lease| lease.live_owner(now) == Some(owner));
        if owned {
            leases.remove(&user);
        }
        Ok(owned)
    }

    fn lookup(&self, users: &[UserId]) -> Result<Vec<Option<String>>, Error> {
        let now = Instant::now();
        let leases = self.lock();
        Ok(users
            .iter()
            .map(|user| leases.get(user).and_then(|lease| lease.live_owner(now).map(str::to_owned)))
            .collect())
    }

    fn sweep_lapsed(&self, limit: usize) -> Result<Vec<Lapsed>, Error> {
        let now = Instant::now();
        let mut leases = self.lock();
        let due: Vec<UserId> = leases
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(&user, _)| user)
            .take(limit)
            .collect();
        Ok(due
            .into_iter()
            .filter_map(|user| leases.remove(&user).map(|lease| Lapsed { user, owner: lease.owner }))
            .collect())
    }
}
