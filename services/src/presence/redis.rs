//! [`Presence`] in Redis, shared by every proxy and chat service of a cluster.
//!
//! Each lease is one string key, `{prefix}user:{id}`, holding the proxy instance id, with
//! a millisecond expiry (`PX`): Redis itself makes a lapsed lease disappear, so
//! [`Presence::lookup`] (one `MGET`) finds it offline at once. Because the key vanishes,
//! two more keys remember what lapsing must still announce:
//!
//! * `{prefix}expiries`, a sorted set of user ids scored by when their lease lapses
//!   (milliseconds of the Redis server's clock, the clock `PX` uses), moved forward by
//!   every claim and renewal and dropped at release;
//! * `{prefix}owners`, a hash of user id -> the proxy that claimed the lease last.
//!
//! Claiming, renewing, releasing and sweeping are small Lua scripts, so "check, then
//! change the keys" is one atomic step. The sweep takes the entries whose score has
//! passed, keeps only those whose lease key is really gone (a renewal or a new login
//! since would have moved the score, and a key still alive is put back at its real
//! expiry), removes them and returns them: two proxies sweeping at once never get the
//! same user. [`Presence::renew_all`] sends all its renewals in one pipeline.
//!
//! The sweep script builds lease key names from the prefix instead of receiving them in
//! `KEYS`, so it suits one Redis server (or a primary with replicas), not Redis Cluster.
//!
//! # Connections, and retrying on a fresh one
//!
//! Connections are pooled (`redis_pool.rs`, shared with the login throttle). When Redis restarts, every idle connection in the pool is
//! dead, and each would fail the next request made on it. So a request whose pooled
//! connection breaks (reset, closed, refused; not a timeout, which a slow server also
//! causes) empties the pool, counts a break ([`Presence::breaks`]) and is sent once more
//! on a fresh connection. A broken connection cannot say whether the command ran before
//! it broke, so only requests whose second run answers as the first would are sent again:
//!
//! * `lookup` (`MGET`) and the connection check (`PING`) only read;
//! * renewing (one or all) and [`Presence::reclaim`] leave the same lease and give the
//!   same answer when run twice;
//! * claiming and releasing are made so: each call carries a random id, and its script
//!   records its answer under that id in `{prefix}call:{user}` for a minute, so a second
//!   run with the same id answers as the first did (the previous holder, or whether it
//!   released) and changes nothing;
//! * sweeping is not sent again: a sweep that ran took its leases out of the table, and
//!   running it again would answer with others. The proxies sweep every second anyway.

use std::time::Duration;

use ::redis::{Connection, RedisError, Script};

use super::{ttl_millis, Error, Lapsed, Presence};
use crate::ids::UserId;
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
            key_prefix: "chatroom:presence:".into(),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(2),
        }
    }
}

/// The Redis server's clock in milliseconds, as a Lua expression; the same clock `PX`
/// expiries run on. It stays under 2^53, so a Lua number holds it exactly.
macro_rules! now_ms {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// How long a claim's or a release's answer is kept for a retry of the same call, in
/// milliseconds: far longer than a retry can take (an I/O time-out and a connect).
const CALL_MEMO_MS: u64 = 60_000;

/// How long a released or swept lease is remembered (its last holder, in the key
/// [`Redis::gone_key`]), in milliseconds, so that [`RECLAIM`] does not hand it to a
/// proxy that lost it to another: far longer than a renewal interval.
const GONE_MS: u64 = 300_000;

/// Lua: `replayed` is the answer recorded in the memo KEYS[4] by an earlier run of the
/// call with id ARGV[4], or nil when this call has not run.
macro_rules! replayed {
    () => {
        "local replayed = nil
local memo = redis.call('GET', KEYS[4])
if memo and string.sub(memo, 1, #ARGV[4] + 1) == ARGV[4] .. '=' then
  replayed = string.sub(memo, #ARGV[4] + 2)
end
"
    };
}

/// Gives the lease KEYS[1] to ARGV[1] for ARGV[2] ms and returns the previous holder, if
/// any; schedules user ARGV[3] in the expiries KEYS[2], names the owner in KEYS[3] and
/// forgets who last released or lost the lease (KEYS[5]). Records the answer for call
/// ARGV[4] in KEYS[4], and answers a second run from it.
const CLAIM: &str = concat!(
    replayed!(),
    r"if replayed then
  if replayed == '' then return false end
  return replayed
end
",
    now_ms!(),
    r"local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
redis.call('DEL', KEYS[5])
redis.call('SET', KEYS[4], ARGV[4] .. '=' .. (previous or ''), 'PX', ARGV[5])
return previous
"
);

/// Gives the lease KEYS[1] to ARGV[1] for ARGV[2] ms as [`CLAIM`] does, but only if
/// nobody else holds it, claimed it last (the owners KEYS[3], kept until a sweep or a
/// release) or released or lost it last (KEYS[4], see [`GONE_MS`]): returns that proxy
/// then, else nothing. So a lease taken over by a
/// newer login elsewhere stays gone for the older session even after the newer one
/// released it; one lost with Redis's data is taken back.
const RECLAIM: &str = concat!(
    r"local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return holder
end
local last = redis.call('HGET', KEYS[3], ARGV[3])
if last and last ~= ARGV[1] then
  return last
end
local gone = redis.call('GET', KEYS[4])
if gone and gone ~= ARGV[1] then
  return gone
end
",
    now_ms!(),
    r"redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
return false
"
);

/// Extends the lease KEYS[1] to ARGV[2] ms if ARGV[1] holds it, and moves user ARGV[3]'s
/// entry in the expiries KEYS[2] with it; returns 1 if it did, else 0.
const RENEW: &str = concat!(
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
",
    now_ms!(),
    r"redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"
);

/// Deletes the lease KEYS[1] if ARGV[1] holds it, with user ARGV[3]'s entries in the
/// expiries KEYS[2] and owners KEYS[3] (a released lease is announced by its releaser,
/// not by a sweep), and remembers ARGV[1] as its last holder in KEYS[5] for ARGV[6] ms;
/// returns 1 if it did, else 0. Records the answer for call ARGV[4] in KEYS[4], and
/// answers a second run from it.
const RELEASE: &str = concat!(
    replayed!(),
    r"if replayed then
  return tonumber(replayed)
end
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('HDEL', KEYS[3], ARGV[3])
  released = redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[6])
end
redis.call('SET', KEYS[4], ARGV[4] .. '=' .. released, 'PX', ARGV[5])
return released
"
);

/// Takes up to ARGV[2] users whose score in the expiries KEYS[1] has passed and whose
/// lease key (ARGV[1] .. user) is gone; removes them from KEYS[1] and the owners KEYS[2]
/// and returns them flattened as user, owner, user, owner, ... Each one's last holder is
/// remembered in ARGV[3] .. user for ARGV[4] ms (see [`GONE_MS`]). A due user whose key
/// still lives is rescheduled at the key's real expiry; one whose key has no expiry is
/// not a lease of ours and is dropped from the schedule.
const SWEEP: &str = concat!(
    now_ms!(),
    r"local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local lapsed = {}
for _, user in ipairs(due) do
  local ttl = redis.call('PTTL', ARGV[1] .. user)
  if ttl >= 0 then
    redis.call('ZADD', KEYS[1], now + ttl, user)
  else
    redis.call('ZREM', KEYS[1], user)
    local owner = redis.call('HGET', KEYS[2], user)
    redis.call('HDEL', KEYS[2], user)
    if ttl == -2 then
      table.insert(lapsed, user)
      table.insert(lapsed, owner or '')
      if owner then
        redis.call('SET', ARGV[3] .. user, owner, 'PX', ARGV[4])
      end
    end
  end
end
return lapsed
"
);

/// Presence leases in Redis.
pub struct Redis {
    /// The connections; its breaks are [`Presence::breaks`].
    pool: Pool,
    /// Put before every key.
    key_prefix: String,
    /// [`CLAIM`]; `redis::Script` sends `EVALSHA` and loads the script on `NOSCRIPT`.
    claim: Script,
    /// [`RENEW`].
    renew: Script,
    /// [`RECLAIM`].
    reclaim: Script,
    /// [`RELEASE`].
    release: Script,
    /// [`SWEEP`].
    sweep: Script,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("key_prefix", &self.key_prefix).finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to `url` with the default key prefix and time-outs; see
    /// [`Redis::with_config`].
    ///
    /// # Errors
    ///
    /// As for [`Redis::with_config`].
    pub fn open(url: &str) -> Result<Self, Error> {
        Redis::with_config(&Config { url: url.to_owned(), ..Config::default() })
    }

    /// Connects once to check that Redis answers, and keeps that connection for reuse.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when Redis cannot be reached, [`Error::Redis`] for a
    /// malformed URL or a refusal (for example a wrong password).
    pub fn with_config(config: &Config) -> Result<Self, Error> {
        let presence = Redis {
            pool: Pool::new(&config.url, config.connect_timeout, config.io_timeout)?,
            key_prefix: config.key_prefix.clone(),
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            reclaim: Script::new(RECLAIM),
            release: Script::new(RELEASE),
            sweep: Script::new(SWEEP),
        };
        presence.with_conn(|conn| ::redis::cmd("PING").query::<String>(conn))?;
        Ok(presence)
    }

    fn key(&self, user: UserId) -> String {
        format!("{}{USER}{}", self.key_prefix, user.0)
    }

    /// The sorted set of user ids by when their lease lapses.
    fn expiries_key(&self) -> String {
        format!("{}expiries", self.key_prefix)
    }

    /// The hash of user id -> the proxy that claimed the lease last.
    fn owners_key(&self) -> String {
        format!("{}owners", self.key_prefix)
    }

    /// Where call `id`, a claim or release of `user`, records its answer for a retry of
    /// the same call (one key per call: a retry after another proxy's call on the same
    /// user still finds its own answer).
    fn memo_key(&self, user: UserId, id: &str) -> String {
        format!("{}call:{}:{id}", self.key_prefix, user.0)
    }

    /// Who last released `user`'s lease, or held it when it lapsed (see [`GONE_MS`]).
    fn gone_key(&self, user: UserId) -> String {
        format!("{}{GONE}{}", self.key_prefix, user.0)
    }

    /// `script` on `user`'s lease: KEYS are the lease, the expiries and the owners; ARGV
    /// `owner`, then `ms` if given, then the user id.
    fn invocation<'a>(
        &self,
        script: &'a Script,
        user: UserId,
        owner: &str,
        ms: Option<u64>,
    ) -> ::redis::ScriptInvocation<'a> {
        let mut invocation = script.key(self.key(user));
        invocation.key(self.expiries_key()).key(self.owners_key()).arg(owner);
        // RELEASE has no TTL; a placeholder keeps the user id at ARGV[3] everywhere.
        invocation.arg(ms.unwrap_or(0)).arg(user.0);
        invocation
    }

    /// `invocation` made a call that a retry may repeat: it gets the call's memo key
    /// (KEYS\[4\]), a fresh call id (ARGV\[4\]) and the memo's lifetime (ARGV\[5\]), then
    /// `user`'s gone key (KEYS\[5\]) and its lifetime (ARGV\[6\]).
    fn once<'a>(
        &self,
        mut invocation: ::redis::ScriptInvocation<'a>,
        user: UserId,
    ) -> ::redis::ScriptInvocation<'a> {
        let id = format!("{:016x}", rand::random::<u64>());
        invocation.key(self.memo_key(user, &id)).arg(id).arg(CALL_MEMO_MS);
        invocation.key(self.gone_key(user)).arg(GONE_MS);
        invocation
    }

    /// Runs `f` on an idle connection (or a new one), and keeps the connection for the
    /// next call only if `f` succeeded. When a pooled connection breaks, the pool is
    /// emptied and `f` runs once more on a fresh connection; only pass an `f` that may
    /// run twice (see the module head).
    fn with_conn<T>(&self, f: impl FnMut(&mut Connection) -> Result<T, RedisError>) -> Result<T, Error> {
        self.pool.run(f, true).map_err(classify)
    }

    /// [`Redis::with_conn`] for an `f` that must not run twice: a broken pooled
    /// connection still empties the pool, but the call fails.
    fn with_conn_once<T>(&self, f: impl FnMut(&mut Connection) -> Result<T, RedisError>) -> Result<T, Error> {
        self.pool.run(f, false).map_err(classify)
    }
}

/// What comes between the key prefix and the user id in a lease's key.
const USER: &str = "user:";
/// What comes between the key prefix and the user id in a gone key.
const GONE: &str = "gone:";

/// Sorts connection failures into [`Error::Unavailable`].
fn classify(e: RedisError) -> Error {
    if unreachable(&e) {
        Error::Unavailable(e.to_string())
    } else {
        Error::Redis(e)
    }
}

impl Presence for Redis {
    fn claim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error> {
        let ms = ttl_millis(ttl)?;
        let invocation = self.once(self.invocation(&self.claim, user, owner, Some(ms)), user);
        self.with_conn(|conn| invocation.invoke(conn))
    }

    fn reclaim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error> {
        let ms = ttl_millis(ttl)?;
        let mut invocation = self.invocation(&self.reclaim, user, owner, Some(ms));
        invocation.key(self.gone_key(user));
        self.with_conn(|conn| invocation.invoke(conn))
    }

    fn breaks(&self) -> u64 {
        self.pool.breaks()
    }

    fn renew(&self, user: UserId, owner: &str, ttl: Duration) -> Result<bool, Error> {
        let ms = ttl_millis(ttl)?;
        let invocation = self.invocation(&self.renew, user, owner, Some(ms));
        let renewed: i64 = self.with_conn(|conn| invocation.invoke(conn))?;
        Ok(renewed == 1)
    }

    fn renew_all(&self, users: &[UserId], owner: &str, ttl: Duration) -> Result<Vec<UserId>, Error> {
        let ms = ttl_millis(ttl)?;
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        // Loading first makes the EVALSHAs below safe even on a server that restarted.
        pipe.load_script(&self.renew).ignore();
        for &user in users {
            pipe.invoke_script(&self.invocation(&self.renew, user, owner, Some(ms)));
        }
        let renewed: Vec<i64> = self.with_conn(|conn| pipe.query(conn))?;
        Ok(users.iter().zip(renewed).filter(|&(_, renewed)| renewed != 1).map(|(&user, _)| user).collect())
    }

    fn release(&self, user: UserId, owner: &str) -> Result<bool, Error> {
        let invocation = self.once(self.invocation(&self.release, user, owner, None), user);
        let released: i64 = self.with_conn(|conn| invocation.invoke(conn))?;
        Ok(released == 1)
    }

    fn lookup(&self, users: &[UserId]) -> Result<Vec<Option<String>>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|&user| self.key(user)).collect();
        self.with_conn(|conn| ::redis::cmd("MGET").arg(&keys).query(conn))
    }

    fn sweep_lapsed(&self, limit: usize) -> Result<Vec<Lapsed>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = self.sweep.key(self.expiries_key());
        invocation.key(self.owners_key()).arg(format!("{}{USER}", self.key_prefix)).arg(limit);
        invocation.arg(format!("{}{GONE}", self.key_prefix)).arg(GONE_MS);
        // Not sent twice: a sweep that ran took its leases out of the table.
        let flat: Vec<String> = self.with_conn_once(|conn| invocation.invoke(conn))?;
        let mut lapsed = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            match pair[0].parse() {
                Ok(id) => lapsed.push(Lapsed { user: UserId(id), owner: pair[1].clone() }),
                Err(_) => tracing::warn!(member = %pair[0], "not a user id in the lease expiries; skipped"),
            }
        }
        Ok(lapsed)
    }
}
