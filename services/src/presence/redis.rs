//! [`Presence`] in Redis, shared by every proxy and chat service of a cluster.
//!
//! Each lease is one string key, `{prefix}user:{id}`, holding the proxy instance id, with
//! a millisecond expiry (`PX`): Redis itself makes a lapsed lease disappear. Claiming,
//! renewing and releasing are small Lua scripts, so "check the owner, then change the
//! key" is one atomic step; [`Presence::renew_all`] sends all its renewals in one
//! pipeline, and [`Presence::lookup`] reads all users with one `MGET`.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::{Client, Connection, RedisError, Script};

use super::{ttl_millis, Error, Presence};
use crate::ids::UserId;

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

/// Gives the lease to ARGV[1] for ARGV[2] ms and returns the previous holder, if any.
const CLAIM: &str = r"
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return previous
";

/// Extends the lease to ARGV[2] ms if ARGV[1] holds it; returns 1 if it did, else 0.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease if ARGV[1] holds it; returns 1 if it did, else 0.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Presence leases in Redis.
pub struct Redis {
    /// Opens connections.
    client: Client,
    /// Idle connections, reused so that each call does not pay for a connect. A
    /// connection that failed is dropped rather than returned.
    idle: Mutex<Vec<Connection>>,
    /// Put before every key.
    key_prefix: String,
    /// For new connections.
    connect_timeout: Duration,
    /// For every command.
    io_timeout: Duration,
    /// [`CLAIM`]; `redis::Script` sends `EVALSHA` and loads the script on `NOSCRIPT`.
    claim: Script,
    /// [`RENEW`].
    renew: Script,
    /// [`RELEASE`].
    release: Script,
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
        let client = Client::open(config.url.as_str())?;
        let presence = Redis {
            client,
            idle: Mutex::new(Vec::new()),
            key_prefix: config.key_prefix.clone(),
            connect_timeout: config.connect_timeout,
            io_timeout: config.io_timeout,
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        };
        presence.with_conn(|conn| ::redis::cmd("PING").query::<String>(conn))?;
        Ok(presence)
    }

    fn key(&self, user: UserId) -> String {
        format!("{}user:{}", self.key_prefix, user.0)
    }

    /// Runs `f` on an idle connection (or a new one), and keeps the connection for the
    /// next call only if `f` succeeded.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, RedisError>) -> Result<T, Error> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = self.client.get_connection_with_timeout(self.connect_timeout).map_err(classify)?;
                conn.set_read_timeout(Some(self.io_timeout)).map_err(classify)?;
                conn.set_write_timeout(Some(self.io_timeout)).map_err(classify)?;
                conn
            }
        };
        let value = f(&mut conn).map_err(classify)?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        Ok(value)
    }
}

/// Sorts connection failures into [`Error::Unavailable`].
fn classify(e: RedisError) -> Error {
    if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() {
        Error::Unavailable(e.to_string())
    } else {
        Error::Redis(e)
    }
}

impl Presence for Redis {
    fn claim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, Error> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(user);
        self.with_conn(|conn| self.claim.key(&key).arg(owner).arg(ms).invoke(conn))
    }

    fn renew(&self, user: UserId, owner: &str, ttl: Duration) -> Result<bool, Error> {
        let ms = ttl_millis(ttl)?;
        let key = self.key(user);
        let renewed: i64 = self.with_conn(|conn| self.renew.key(&key).arg(owner).arg(ms).invoke(conn))?;
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
            let mut invocation = self.renew.key(self.key(user));
            invocation.arg(owner).arg(ms);
            pipe.invoke_script(&invocation);
        }
        let renewed: Vec<i64> = self.with_conn(|conn| pipe.query(conn))?;
        Ok(users.iter().zip(renewed).filter(|&(_, renewed)| renewed != 1).map(|(&user, _)| user).collect())
    }

    fn release(&self, user: UserId, owner: &str) -> Result<bool, Error> {
        let key = self.key(user);
        let released: i64 = self.with_conn(|conn| self.release.key(&key).arg(owner).invoke(conn))?;
        Ok(released == 1)
    }

    fn lookup(&self, users: &[UserId]) -> Result<Vec<Option<String>>, Error> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = users.iter().map(|&user| self.key(user)).collect();
        self.with_conn(|conn| ::redis::cmd("MGET").arg(&keys).query(conn))
    }
}
