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
    /// The leases, live and lapsed, and who last let each go.
    leases: Mutex<Table>,
}

/// What the lock guards.
#[derive(Debug, Default)]
struct Table {
    /// The leases, live and lapsed.
    live: HashMap<UserId, Lease>,
    /// Who last released each lease, or held it when it lapsed, until when: a proxy
    /// may not [`Presence::reclaim`] a lease another let go (see [`GONE_FOR`]).
    gone: HashMap<UserId, (String, Instant)>,
}

/// How long a released or swept lease's last holder is remembered.
const GONE_FOR: Duration = Duration::from_secs(300);

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

    fn lock(&self) -> MutexGuard<'_, Table> {
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
        let mut table = self.lock();
        table.gone.remove(&user);
        let previous = table.live.insert(user, Lease { owner: owner.to_owned(), expires });
        Ok(previous.and_then(|lease| lease.live_owner(now).map(str::to_owned)))
    }

    fn renew(&self, user: UserId, owner: &str, ttl: Duration) -> Result<bool, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        Ok(Memory::renew_locked(&mut self.lock().live, user, owner, expires, now))
    }

    fn renew_all(&self, users: &[UserId], owner: &str, ttl: Duration) -> Result<Vec<UserId>, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        let mut table = self.lock();
        Ok(users
            .iter()
            .copied()
            .filter(|&user| !Memory::renew_locked(&mut table.live, user, owner, expires, now))
            .collect())
    }

    fn reclaim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error> {
        let now = Instant::now();
        let expires = deadline(now, ttl)?;
        let mut table = self.lock();
        // Live or lapsed but not yet swept, another's lease is not taken.
        if let Some(lease) = table.live.get(&user) {
            if lease.owner != owner {
                return Ok(Some(lease.owner.clone()));
            }
        }
        if let Some((last, until)) = table.gone.get(&user) {
            if *until > now && last != owner {
                return Ok(Some(last.clone()));
            }
        }
        table.live.insert(user, Lease { owner: owner.to_owned(), expires });
        Ok(None)
    }

    fn release(&self, user: UserId, owner: &str) -> Result<bool, Error> {
        let now = Instant::now();
        let mut table = self.lock();
        let owned = table.live.get(&user).is_some_and(|lease| lease.live_owner(now) == Some(owner));
        if owned {
            table.live.remove(&user);
            table.gone.insert(user, (owner.to_owned(), now + GONE_FOR));
        }
        Ok(owned)
    }

    fn lookup(&self, users: &[UserId]) -> Result<Vec<Option<String>>, Error> {
        let now = Instant::now();
        let table = self.lock();
        Ok(users
            .iter()
            .map(|user| table.live.get(user).and_then(|lease| lease.live_owner(now).map(str::to_owned)))
            .collect())
    }

    fn sweep_lapsed(&self, limit: usize) -> Result<Vec<Lapsed>, Error> {
        let now = Instant::now();
        let mut table = self.lock();
        let due: Vec<UserId> = table
            .live
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(&user, _)| user)
            .take(limit)
            .collect();
        // Forgotten once stale, so the map holds no more than the recent ones.
        table.gone.retain(|_, (_, until)| *until > now);
        let mut lapsed = Vec::with_capacity(due.len());
        for user in due {
            if let Some(lease) = table.live.remove(&user) {
                table.gone.insert(user, (lease.owner.clone(), now + GONE_FOR));
                lapsed.push(Lapsed { user, owner: lease.owner });
            }
        }
        Ok(lapsed)
    }
}
