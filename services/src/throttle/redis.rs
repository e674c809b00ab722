//! [`Throttle`] counters in Redis, shared by every user service of a cluster.
//!
//! Each counter is one hash key, `{prefix}{key}`: a bucket holds `tokens` and `at` (the
//! Redis server's clock in milliseconds when `tokens` was right), a back-off holds
//! `failures` and `next` (when the next attempt may begin). Each operation is one Lua
//! script, so reading a counter and changing it is one atomic step however many user
//! services count at once, and each sets the key's expiry to when the counter no longer
//! matters plus the configured `forget_after`: nothing is left behind.

use std::time::Duration;

use ::redis::{Connection, RedisError, Script};

use super::{Backoff, Bucket, Error, Throttle};
use crate::redis_pool::{unreachable, Pool};

/// Where Redis is and how the keys are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `redis://HOST:PORT/DB`.
    pub url: String,
    /// Put before every key, so that several systems (or test runs) can share a server.
    pub key_prefix: String,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long one command may wait for its answer.
    pub io_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "chatroom:throttle:".into(),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(2),
        }
    }
}

/// The Redis server's clock in milliseconds, as `now`; then the bucket's tokens refilled
/// up to `now` as `tokens` (nil when the key is gone). ARGV[1] is the burst, ARGV[2] the
/// milliseconds per token.
const REFILL: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst, every = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = nil
if held[1] then
  tokens = burst
  if every > 0 then
    tokens = math.min(burst, tonumber(held[1]) + (now - tonumber(held[2])) / every)
  end
end
";

/// Stores `tokens` at `now` in KEYS[1], expiring once full plus ARGV[3] ms.
const STORE: &str = r"redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * every) + tonumber(ARGV[3]))
";

/// Takes a token from bucket KEYS[1]: returns -1 if it did, else the milliseconds until
/// one is back.
fn take_script() -> String {
    format!(
        "{REFILL}if not tokens then tokens = burst end
if tokens < 1 then
  return math.ceil((1 - tokens) * every)
end
tokens = tokens - 1
{STORE}return -1
"
    )
}

/// Gives a token back to bucket KEYS[1], if it still exists.
fn give_back_script() -> String {
    format!(
        "{REFILL}if not tokens then return 0 end
tokens = math.min(burst, tokens + 1)
{STORE}return 1
"
    )
}

/// Begins an attempt under back-off KEYS[1] (ARGV: free failures, base ms, cap ms,
/// forget ms): returns the milliseconds left to wait, or -1 after counting the attempt
/// as a failure and setting when the next may begin.
const BEGIN_ATTEMPT: &str = r"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('HMGET', KEYS[1], 'failures', 'next')
local failures = 0
if held[1] then
  local next = tonumber(held[2])
  if next > now then
    return next - now
  end
  failures = tonumber(held[1])
end
failures = failures + 1
local past = failures - tonumber(ARGV[1])
local wait = 0
if past > 0 then
  wait = math.min(tonumber(ARGV[2]) * 2 ^ math.min(past - 1, 31), tonumber(ARGV[3]))
end
redis.call('HSET', KEYS[1], 'failures', failures, 'next', now + wait)
redis.call('PEXPIRE', KEYS[1], wait + tonumber(ARGV[4]))
return -1
";

/// Throttle counters in Redis.
pub struct Redis {
    /// The connections.
    pool: Pool,
    /// Put before every key.
    key_prefix: String,
    /// [`take_script`].
    take: Script,
    /// [`give_back_script`].
    give_back: Script,
    /// [`BEGIN_ATTEMPT`].
    begin_attempt: Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("key_prefix", &self.key_prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects once to check that Redis answers, and keeps that connection for reuse.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be reached, [`Error::Redis`] for a
    /// malformed URL or a refusal (for example a wrong password).
    pub fn with_config(config: &Config) -> Result<Self, Error> {
        let throttle = Redis {
            pool: Pool::new(&config.url, config.connect_timeout, config.io_timeout)?,
            key_prefix: config.key_prefix.clone(),
            take: Script::new(&take_script()),
            give_back: Script::new(&give_back_script()),
            begin_attempt: Script::new(BEGIN_ATTEMPT),
        };
        throttle.with_conn(|conn| ::redis::cmd("PING").query::<String>(conn))?;
        Ok(throttle)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// Runs `f` on a pooled connection, and once more on a fresh one when the pooled
    /// one turns out broken (Redis restarted). A step whose answer was lost may so count
    /// twice: one token or one failure more, which errs on the side of refusing.
    fn with_conn<T>(&self, f: impl FnMut(&mut Connection) -> Result<T, RedisError>) -> Result<T, Error> {
        self.pool.run(f, true).map_err(classify)
    }

    /// Runs a bucket script on `key`.
    fn bucket(
        &self,
        script: &Script,
        key: &str,
        bucket: &Bucket,
        forget_after: Duration,
    ) -> Result<i64, Error> {
        let mut invocation = script.key(self.key(key));
        invocation.arg(bucket.burst).arg(millis(bucket.every)).arg(millis(forget_after));
        self.with_conn(|conn| invocation.invoke(conn))
    }
}

/// Whole milliseconds of `d`, for a script.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A script's wait in milliseconds; -1 (or less) means none.
fn wait(ms: i64) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Sorts connection failures into [`Error::Unavailable`].
fn classify(e: RedisError) -> Error {
    if unreachable(&e) {
        Error::Unavailable(e.to_string())
    } else {
        Error::Redis(e)
    }
}

impl Throttle for Redis {
    fn take(&self, key: &str, bucket: &Bucket, forget_after: Duration) -> Result<Option<Duration>, Error> {
        Ok(wait(self.bucket(&self.take, key, bucket, forget_after)?))
    }

    fn give_back(&self, key: &str, bucket: &Bucket, forget_after: Duration) -> Result<(), Error> {
        self.bucket(&self.give_back, key, bucket, forget_after).map(drop)
    }

    fn begin_attempt(
        &self,
        key: &str,
        backoff: &Backoff,
        forget_after: Duration,
    ) -> Result<Option<Duration>, Error> {
        let mut invocation = self.begin_attempt.key(self.key(key));
        invocation
            .arg(backoff.free_failures)
            .arg(millis(backoff.base))
            .arg(millis(backoff.cap))
            .arg(millis(forget_after));
        Ok(wait(self.with_conn(|conn| invocation.invoke::<i64>(conn))?))
    }

    fn reset(&self, key: &str) -> Result<(), Error> {
        let key = self.key(key);
        self.with_conn(|conn| ::redis::cmd("DEL").arg(&key).query::<i64>(conn)).map(drop)
    }
}
