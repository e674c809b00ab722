//! What can go wrong in a [`Store`](super::Store).
//!
//! The first six variants are answers about the request and map one to one onto the
//! wire statuses of the same names; the rest are the backend failing and map onto
//! Unavailable or Internal.

use crate::ids::GroupId;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user, group, friendship or membership the request names does not exist. The
    /// text says which, e.g. `no user named "bob"`.
    #[error("{0}")]
    NotFound(String),
    /// What the request would create exists already, e.g. `the name "bob" is already
    /// taken`.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is not a participant of the conversation or group it named.
    #[error("{0}")]
    PermissionDenied(String),
    /// A per-group bound was reached, e.g. too many pending invitations.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request breaks a rule that does not depend on stored data: a limit from
    /// [`crate::limits`], befriending oneself, messaging oneself.
    #[error("{0}")]
    InvalidArgument(String),
    /// The database could not be reached, or no connection came free in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database holds a schema newer than this program knows; an older binary is
    /// running against a migrated database.
    #[error("database schema version {found} is newer than the newest this program knows ({supported}); upgrade the program")]
    SchemaTooNew {
        /// The version recorded in `schema_version`.
        found: u32,
        /// The newest version this program can migrate to.
        supported: u32,
    },
    /// A stored row breaks an invariant the schema should have kept.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// MySQL or MariaDB failed. (A lost or refused connection is [`Error::Unavailable`].)
    #[error("mysql: {0}")]
    MySql(mysql::Error),
}

impl From<mysql::Error> for Error {
    /// A connection that cannot be made, or breaks during a query or transaction (the
    /// server restarting), is `Unavailable`, which a caller may retry; anything else
    /// is the database failing.
    fn from(e: mysql::Error) -> Self {
        match e {
            mysql::Error::IoError(_)
            | mysql::Error::DriverError(
                mysql::DriverError::ConnectTimeout
                | mysql::DriverError::CouldNotConnect(_)
                | mysql::DriverError::Timeout,
            ) => Error::Unavailable(e.to_string()),
            other => Error::MySql(other),
        }
    }
}

impl From<crate::limits::Error> for Error {
    fn from(e: crate::limits::Error) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl Error {
    /// The answer for a group that does not exist, and also for a private group asked
    /// about by someone outside it, so that nobody learns which private groups exist.
    pub(crate) fn no_group(id: GroupId) -> Self {
        Error::NotFound(format!("group {id} does not exist"))
    }
}
