//! Transactions on [`MySql`]: each runs at READ COMMITTED (set once per session) and is
//! retried whole on a deadlock or a lock-wait time-out; and the server's error codes
//! the store tells apart.

use std::time::Duration;

use mysql::{PooledConn, Transaction, TxOpts};

use super::MySql;
use crate::store::Error;

/// How many times a transaction that hit a deadlock or lock-wait time-out is tried.
const ATTEMPTS: u32 = 5;

const ER_DUP_ENTRY: u16 = 1062;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;

impl MySql {
    /// Runs `f` in a READ COMMITTED transaction and commits, retrying the whole of it on
    /// deadlock or lock-wait time-out.
    pub(super) fn transact<T>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.transact_on(&mut None, &mut f)
    }

    /// As [`MySql::transact`], starting on `conn` when one is given (it is used up).
    /// Sessions start at READ COMMITTED ([`SESSION_INIT`](super::SESSION_INIT)), so
    /// starting a transaction is one statement.
    pub(super) fn transact_on<T>(
        &self,
        conn: &mut Option<PooledConn>,
        f: &mut impl FnMut(&mut Transaction<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let opts = TxOpts::default();
        let mut attempt = 1;
        loop {
            let mut conn = match conn.take() {
                Some(conn) => conn,
                None => self.conn()?,
            };
            let outcome = conn.start_transaction(opts).map_err(Error::from).and_then(|mut tx| {
                let value = f(&mut tx)?;
                tx.commit()?;
                Ok(value)
            });
            match outcome {
                Err(Error::MySql(e)) if is_retryable(&e) && attempt < ATTEMPTS => {
                    tracing::debug!(attempt, error = %e, "retrying mysql transaction");
                    std::thread::sleep(Duration::from_millis(5 << attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// The server's error code, when the server answered with an error.
pub(super) fn server_code(e: &mysql::Error) -> Option<u16> {
    match e {
        mysql::Error::MySqlError(e) => Some(e.code),
        _ => None,
    }
}

/// Whether a transaction that failed with `e` (a deadlock, a lock wait that ended) is
/// worth running again.
fn is_retryable(e: &mysql::Error) -> bool {
    matches!(server_code(e), Some(ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT))
}

/// Whether `e` is a unique key refusing a second row with the same key.
pub(super) fn is_duplicate(e: &Error) -> bool {
    matches!(e, Error::MySql(e) if server_code(e) == Some(ER_DUP_ENTRY))
}
