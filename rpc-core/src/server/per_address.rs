//! `Config::max_connections_per_address`: the connections open from each client
//! address, shared by the server's loops, and the ones refused past the limit.
//!
//! One client (one address) opening thousands of connections would otherwise take the
//! file descriptors and the connection table everyone shares. The count is taken when a
//! connection is accepted, or when the PROXY header of a trusted balancer names its
//! client, and given back when the loop closes the connection, whatever closed it.
//!
//! The map sits behind one lock shared by the loops: a loop takes it once per accept
//! and once per close, and other loops rarely at the same moment. Its keys are chosen by
//! peers (any address they connect from), so it keeps the standard library's hasher,
//! which a peer cannot make collide, rather than the crate's fast one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::log_limit::LogLimit;

/// Refusals are logged at most once per this interval (the others are counted and
/// summed into the next line), so that a client hammering the limit cannot flood the log.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// The connections open per client address, and the refusals.
#[derive(Debug)]
pub(crate) struct PerAddress {
    /// Connections one address may hold; 0: no limit, nothing counted.
    limit: usize,
    /// Connections open per address (by [`key`]); an address with none has no entry.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Connections refused for being over the limit.
    refused: AtomicU64,
    /// Limits the log lines about refusals.
    log: LogLimit,
}

impl PerAddress {
    /// Counts against `limit` connections per address (0: no limit).
    pub(crate) fn new(limit: usize) -> PerAddress {
        PerAddress { limit, open: Mutex::default(), refused: AtomicU64::new(0), log: LogLimit::default() }
    }

    /// Counts a new connection from `client`. `Ok(Some(key))`: counted, to be given back
    /// with [`PerAddress::release`]`(key)` when it closes; `Ok(None)`: there is no limit,
    /// nothing counted. `Err(reason)`: it is one too many, nothing counted; the reason is
    /// for its go-away. The refusal is counted and logged here.
    pub(crate) fn admit(&self, client: IpAddr) -> Result<Option<IpAddr>, String> {
        if self.limit == 0 {
            return Ok(None);
        }
        let key = key(client);
        {
            let mut open = self.lock();
            let count = open.entry(key).or_insert(0);
            if *count < self.limit {
                *count += 1;
                return Ok(Some(key));
            }
        }
        let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let client = shown(key);
        if let Some(also) = self.log.due(LOG_INTERVAL) {
            tracing::warn!(
                %client,
                limit = self.limit,
                also_refused = also,
                total_refused = total,
                "connection refused: too many connections from one address"
            );
        }
        Err(format!("too many connections from {client} (limit {})", self.limit))
    }

    /// Gives back the count of a connection [`PerAddress::admit`] counted under `key`.
    pub(crate) fn release(&self, key: IpAddr) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                // Every address ever seen would otherwise stay in the map.
                open.remove(&key);
            }
        }
    }

    /// Connections open and counted against `client`'s address.
    pub(crate) fn open_from(&self, client: IpAddr) -> usize {
        self.lock().get(&key(client)).copied().unwrap_or(0)
    }

    /// Connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map stays consistent through a panic elsewhere: every change is one step.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a client address counts as: an IPv4 address (IPv4-mapped IPv6 ones included)
/// as itself, an IPv6 address as its /64, the block one subscriber is given, so that a
/// client cannot pass the limit by walking through its own addresses.
fn key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// A key as the go-away and the log show it.
fn shown(key: IpAddr) -> String {
    match key {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_limit_holds_per_address_and_closing_gives_the_count_back() {
        let per = PerAddress::new(2);
        let a = per.admit(ip("192.0.2.7")).unwrap().unwrap();
        per.admit(ip("192.0.2.7")).unwrap().unwrap();
        let refusal = per.admit(ip("192.0.2.7")).unwrap_err();
        assert_eq!(refusal, "too many connections from 192.0.2.7 (limit 2)");
        assert_eq!(per.refused(), 1);
        // Another address has a count of its own.
        per.admit(ip("192.0.2.8")).unwrap().unwrap();
        per.release(a);
        assert_eq!(per.open_from(ip("192.0.2.7")), 1);
        per.admit(ip("192.0.2.7")).unwrap().unwrap();
        per.release(a);
        per.release(a);
        assert_eq!(per.open_from(ip("192.0.2.7")), 0);
        assert!(!per.lock().contains_key(&a), "an address with no connection leaves the map");
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let per = PerAddress::new(1);
        per.admit(ip("2001:db8:1:2::7")).unwrap().unwrap();
        let refusal = per.admit(ip("2001:db8:1:2:ffff::1")).unwrap_err();
        assert_eq!(refusal, "too many connections from 2001:db8:1:2::/64 (limit 1)");
        per.admit(ip("2001:db8:1:3::7")).unwrap().unwrap();
        per.admit(ip("::ffff:192.0.2.7")).unwrap().unwrap();
        assert!(per.admit(ip("192.0.2.7")).is_err());
    }

    #[test]
    fn no_limit_counts_nothing() {
        let per = PerAddress::new(0);
        for _ in 0..10 {
            assert_eq!(per.admit(ip("192.0.2.7")), Ok(None));
        }
        assert_eq!(per.open_from(ip("192.0.2.7")), 0);
    }
}
