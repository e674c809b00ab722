//! The blocking Redis connections of one process's presence table or login throttle:
//! reused between calls, dropped when they fail, and all dropped when one breaks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::{Client, Connection, RedisError};

/// Idle connections to one Redis, reused so that a call does not pay for a connect.
pub(crate) struct Pool {
    /// Opens connections.
    client: Client,
    /// Connections between calls. A connection that failed is dropped rather than put
    /// back, and one that broke takes the others with it. As many as calls ran at once.
    idle: Mutex<Vec<Connection>>,
    /// How many times a pooled connection broke.
    breaks: AtomicU64,
    /// For new connections.
    connect_timeout: Duration,
    /// For every command.
    io_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("breaks", &self.breaks()).finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool for `url`; it connects on first use.
    pub(crate) fn new(
        url: &str,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Pool, RedisError> {
        Ok(Pool {
            client: Client::open(url)?,
            idle: Mutex::new(Vec::new()),
            breaks: AtomicU64::new(0),
            connect_timeout,
            io_timeout,
        })
    }

    /// How many times a pooled connection broke since the pool was made.
    pub(crate) fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::Relaxed)
    }

    /// Runs `f` on an idle connection (or a new one), and keeps the connection for the
    /// next call only if `f` succeeded. When a pooled connection is found broken (the
    /// server restarted or failed over), the pool is emptied, since the other idle
    /// connections point at the same dead server, and, if `retry`, `f` runs once more on
    /// a fresh connection. Only retry an `f` that may run twice: its first run may have
    /// reached Redis and lost only its answer.
    pub(crate) fn run<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> Result<T, RedisError>,
        retry: bool,
    ) -> Result<T, RedisError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(mut conn) = pooled {
            match f(&mut conn) {
                Ok(value) => {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
                    return Ok(value);
                }
                Err(error) if broken(&error) => {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    self.breaks.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%error, retry, "a pooled redis connection broke; the pool is emptied");
                    if !retry {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
        let mut conn = self.connect()?;
        let value = f(&mut conn)?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        Ok(value)
    }

    /// A new connection with the configured time-outs.
    fn connect(&self) -> Result<Connection, RedisError> {
        let conn = self.client.get_connection_with_timeout(self.connect_timeout)?;
        conn.set_read_timeout(Some(self.io_timeout))?;
        conn.set_write_timeout(Some(self.io_timeout))?;
        Ok(conn)
    }
}

/// Whether `error` says the connection is dead (closed, reset, refused), as opposed to
/// slow (a time-out) or a refusal of the command.
fn broken(error: &RedisError) -> bool {
    error.is_connection_dropped()
        || error.is_connection_refusal()
        || (error.is_io_error() && !error.is_timeout())
}

/// Whether `error` means Redis could not be reached or did not answer in time, rather
/// than an answer of its own.
pub(crate) fn unreachable(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_connection_dropped()
}
