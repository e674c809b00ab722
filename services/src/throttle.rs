//! Login and registration throttling: per account and per source address; and the
//! bucket of messages per user that each proxy applies to its sessions
//! ([`Config::writes`]).
//!
//! Two kinds of counter stand behind the [`Throttle`] trait, in memory ([`Memory`],
//! standalone and unit tests) or in Redis ([`Redis`], shared by every user service of a
//! cluster):
//!
//! * a **back-off** per account ([`Throttle::begin_attempt`]): the first
//!   [`Backoff::free_failures`] failed logins since the last success cost nothing; after
//!   that each attempt must wait `base * 2^k` (k = 0, 1, 2, ... for each further failure)
//!   after the previous one, up to [`Backoff::cap`]. An attempt is counted as a failure
//!   when it begins, so concurrent guesses cannot slip past the count; a success clears
//!   it ([`Throttle::reset`]);
//! * a **token bucket** per source address ([`Throttle::take`]): [`Bucket::burst`]
//!   attempts at once, then one more per [`Bucket::every`]. Logins and registrations
//!   have a bucket each; a successful login gives its token back
//!   ([`Throttle::give_back`]), so that many people behind one address who know their
//!   passwords are not held up by each other.
//!
//! [`Limits`] applies a [`Config`] over a [`Throttle`]: the user service asks it before
//! hashing anything, and a refusal is `ResourceExhausted` naming the wait. Every counter
//! forgets itself after [`Config::forget_after`] without attempts (Redis keys expire).
//!
//! ```
//! use std::net::IpAddr;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use services::throttle::{Backoff, Config, Limits, Memory};
//!
//! let config = Config {
//!     account: Backoff { free_failures: 2, base: Duration::from_secs(1), cap: Duration::from_secs(60) },
//!     ..Config::default()
//! };
//! let limits = Limits::new(config, Arc::new(Memory::new()));
//! let from: IpAddr = "192.0.2.7".parse().unwrap();
//! assert!(limits.begin_login("alice", from).is_ok()); // fails: 1 of 2 free
//! assert!(limits.begin_login("alice", from).is_ok()); // fails: 2 of 2 free
//! assert!(limits.begin_login("alice", from).is_ok()); // a third try, then wait 1 s
//! let refused = limits.begin_login("alice", from).unwrap_err();
//! assert!(refused.to_string().contains("try again in 1 s"), "{refused}");
//! ```

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rpc_core::Status;

pub use self::memory::Memory;
pub use self::redis::Redis;

/// A token bucket: `burst` at once, then one more each `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens when full. 0 turns the bucket off (nothing is ever refused).
    pub burst: u32,
    /// How long one token takes to come back.
    pub every: Duration,
}

/// Exponential back-off after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures since the last success that cost no wait.
    pub free_failures: u32,
    /// The wait after the first failure past the free ones; each further failure
    /// doubles it. Zero turns the back-off off.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

/// The limits, with defaults that stop a guessing attack while leaving room for people
/// who mistype:
///
/// | field | default |
/// |---|---|
/// | `account` | 5 free failures, then 1 s, 2 s, 4 s, ... up to 5 min between attempts |
/// | `address_login` | 30 attempts, then one per 10 s (successes give theirs back) |
/// | `address_register` | 5 registrations, then one per 5 min |
/// | `writes` | 50 messages and changes per user, then 10 a second |
/// | `forget_after` | 1 h |
///
/// With these, one account takes at most about 24 guesses in the first hour and 12 in
/// each after, and one address about 360 guesses an hour over all accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Back-off per account name (case does not matter).
    pub account: Backoff,
    /// Login attempts per source address.
    pub address_login: Bucket,
    /// Registrations per source address.
    pub address_register: Bucket,
    /// Messages and other changes (friends, groups) per user, counted by the proxy that
    /// holds the user's session (see `proxy::Config::writes`): far above what a person
    /// does, far below what one account could make the database store.
    pub writes: Bucket,
    /// A counter left alone this long (after its last wait) is forgotten.
    pub forget_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            account: Backoff {
                free_failures: 5,
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
            },
            address_login: Bucket { burst: 30, every: Duration::from_secs(10) },
            address_register: Bucket { burst: 5, every: Duration::from_secs(300) },
            writes: Bucket { burst: 50, every: Duration::from_millis(100) },
            forget_after: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Limits so high that nothing is refused: for benchmarks and tests that log
    /// thousands of users in from one address.
    pub fn unlimited() -> Self {
        Config {
            account: Backoff { free_failures: 0, base: Duration::ZERO, cap: Duration::ZERO },
            address_login: Bucket { burst: 0, every: Duration::ZERO },
            address_register: Bucket { burst: 0, every: Duration::ZERO },
            writes: Bucket { burst: 0, every: Duration::ZERO },
            ..Config::default()
        }
    }
}

/// The counters could not be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis cannot be reached or did not answer in time.
    #[error("the throttle's Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
}

/// Where attempts are counted. Each method is one atomic step, however many user
/// services share the counters.
pub trait Throttle: Send + Sync {
    /// Takes a token from bucket `key`; `Some(wait)` (and nothing taken) when it is
    /// empty, `wait` being how long until a token is back.
    ///
    /// # Errors
    ///
    /// When the counters cannot be reached.
    fn take(&self, key: &str, bucket: &Bucket, forget_after: Duration) -> Result<Option<Duration>, Error>;

    /// Gives a token back to bucket `key` (never past `burst`).
    ///
    /// # Errors
    ///
    /// When the counters cannot be reached.
    fn give_back(&self, key: &str, bucket: &Bucket, forget_after: Duration) -> Result<(), Error>;

    /// Begins an attempt under back-off `key`: `Some(wait)` (and nothing counted) while
    /// the previous attempts' wait has not passed; otherwise counts the attempt as a
    /// failure, sets the wait the next attempt will have, and returns `None`.
    ///
    /// # Errors
    ///
    /// When the counters cannot be reached.
    fn begin_attempt(
        &self,
        key: &str,
        backoff: &Backoff,
        forget_after: Duration,
    ) -> Result<Option<Duration>, Error>;

    /// Forgets back-off `key` (the attempt succeeded).
    ///
    /// # Errors
    ///
    /// When the counters cannot be reached.
    fn reset(&self, key: &str) -> Result<(), Error>;
}

/// The wait before the attempt after `failures` failures (this one included).
pub(crate) fn backoff_wait(backoff: &Backoff, failures: u64) -> Duration {
    let past_free = failures.saturating_sub(u64::from(backoff.free_failures));
    if past_free == 0 || backoff.base.is_zero() {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(past_free - 1).unwrap_or(u32::MAX).min(40);
    backoff.base.saturating_mul(1u32 << doublings.min(31)).min(backoff.cap)
}

/// A login or registration that must wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Too many attempts; try again after `wait`.
    #[error("{what}; try again in {} s", whole_seconds(*.wait))]
    Wait {
        /// Which limit (for the message).
        what: &'static str,
        /// How long until an attempt is accepted.
        wait: Duration,
    },
    /// The counters cannot be reached, so nothing is let through.
    #[error("{0}")]
    Unavailable(String),
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        match refusal {
            Refusal::Wait { .. } => Status::resource_exhausted(refusal.to_string()),
            Refusal::Unavailable(_) => Status::unavailable(refusal.to_string()),
        }
    }
}

/// A [`Config`] applied over a [`Throttle`].
#[derive(Clone)]
pub struct Limits {
    /// The limits.
    config: Config,
    /// Where attempts are counted.
    counters: Arc<dyn Throttle>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Limits {
    /// `config` over `counters`.
    pub fn new(config: Config, counters: Arc<dyn Throttle>) -> Self {
        Limits { config, counters }
    }

    /// Counters in memory with the default limits.
    pub fn in_memory(config: Config) -> Self {
        Limits::new(config, Arc::new(Memory::new()))
    }

    /// The limits.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Asks whether `account` may try a password from `from` now, and counts the
    /// attempt (as a failure, until [`Limits::login_succeeded`] says otherwise).
    ///
    /// # Errors
    ///
    /// [`Refusal::Wait`] when the address or the account must wait first;
    /// [`Refusal::Unavailable`] when the counters cannot be reached.
    pub fn begin_login(&self, account: &str, from: IpAddr) -> Result<(), Refusal> {
        let forget = self.config.forget_after;
        if self.config.address_login.burst > 0 {
            let key = address_key("login", from);
            if let Some(wait) =
                self.counters.take(&key, &self.config.address_login, forget).map_err(unavailable)?
            {
                return Err(Refusal::Wait { what: "too many logins from this address", wait });
            }
        }
        if !self.config.account.base.is_zero() {
            let key = account_key(account);
            if let Some(wait) =
                self.counters.begin_attempt(&key, &self.config.account, forget).map_err(unavailable)?
            {
                return Err(Refusal::Wait { what: "too many failed logins for this account", wait });
            }
        }
        Ok(())
    }

    /// Records that a login begun with [`Limits::begin_login`] had the right password:
    /// the account's failures are forgotten and the address gets its token back. A
    /// failure here is logged, not returned: the login itself was right.
    pub fn login_succeeded(&self, account: &str, from: IpAddr) {
        let forget = self.config.forget_after;
        let mut outcome = Ok(());
        if !self.config.account.base.is_zero() {
            outcome = self.counters.reset(&account_key(account));
        }
        if self.config.address_login.burst > 0 {
            outcome = outcome.and(self.counters.give_back(
                &address_key("login", from),
                &self.config.address_login,
                forget,
            ));
        }
        if let Err(error) = outcome {
            tracing::warn!(%error, "cannot clear the login throttle after a successful login");
        }
    }

    /// Asks whether `from` may register an account now, and counts it.
    ///
    /// # Errors
    ///
    /// As for [`Limits::begin_login`].
    pub fn begin_register(&self, from: IpAddr) -> Result<(), Refusal> {
        if self.config.address_register.burst == 0 {
            return Ok(());
        }
        let key = address_key("register", from);
        match self.counters.take(&key, &self.config.address_register, self.config.forget_after) {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(Refusal::Wait { what: "too many registrations from this address", wait }),
            Err(error) => Err(unavailable(error)),
        }
    }
}

/// `wait` in whole seconds, rounded up (at least 1), so that a client that waits that
/// long is not refused again.
fn whole_seconds(wait: Duration) -> u128 {
    wait.as_millis().div_ceil(1000).max(1)
}

fn unavailable(error: Error) -> Refusal {
    tracing::warn!(%error, "the login throttle cannot count; refusing the attempt");
    Refusal::Unavailable(format!("the login throttle is unavailable: {error}"))
}

/// The back-off key of an account name, case folded as names are.
fn account_key(account: &str) -> String {
    format!("account:{}", account.to_lowercase())
}

/// The bucket key of `kind` for address `ip`. An IPv6 address counts by its /64, the
/// block one subscriber usually holds, so that one host cannot hop addresses.
fn address_key(kind: &str, ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{kind}:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("{kind}:{v4}"),
            None => {
                let s = v6.segments();
                format!("{kind}:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_after_the_free_failures_up_to_the_cap() {
        let backoff = Backoff { free_failures: 2, base: Duration::from_secs(1), cap: Duration::from_secs(5) };
        let waits: Vec<u64> = (1..=7).map(|f| backoff_wait(&backoff, f).as_secs()).collect();
        assert_eq!(waits, [0, 0, 1, 2, 4, 5, 5]);
        assert_eq!(backoff_wait(&backoff, u64::MAX), Duration::from_secs(5));
    }

    #[test]
    fn addresses_count_by_host_and_ipv6_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key("login", a), address_key("login", b));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(address_key("login", mapped), "login:192.0.2.1");
        assert_ne!(address_key("login", mapped), address_key("register", mapped));
    }

    #[test]
    fn a_success_clears_the_account_and_returns_the_token() {
        let config = Config {
            account: Backoff {
                free_failures: 1,
                base: Duration::from_secs(60),
                cap: Duration::from_secs(60),
            },
            address_login: Bucket { burst: 2, every: Duration::from_secs(3600) },
            ..Config::default()
        };
        let limits = Limits::in_memory(config);
        let from: IpAddr = "192.0.2.1".parse().unwrap();
        limits.begin_login("Bob", from).unwrap();
        limits.login_succeeded("bob", from);
        limits.begin_login("bob", from).unwrap();
        limits.begin_login("BOB", from).unwrap();
        // Two failures: the account waits a minute, and the address has no token left.
        assert!(matches!(limits.begin_login("bob", from), Err(Refusal::Wait { .. })));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let refused = limits.begin_login("carol", from).unwrap_err();
        assert!(refused.to_string().contains("from this address"), "{refused}");
        limits.begin_login("carol", other).unwrap();
    }

    #[test]
    fn unlimited_refuses_nothing() {
        let limits = Limits::in_memory(Config::unlimited());
        let from: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..100 {
            limits.begin_login("alice", from).unwrap();
            limits.begin_register(from).unwrap();
        }
    }

    #[test]
    fn the_refusal_is_resource_exhausted_with_the_wait() {
        let status =
            Status::from(Refusal::Wait { what: "too many logins", wait: Duration::from_millis(2500) });
        assert_eq!(status.code, rpc_core::Code::ResourceExhausted);
        assert_eq!(status.message, "too many logins; try again in 3 s");
    }
}
