//! Creating the database when it is missing, and migrating its schema under a named
//! lock (`GET_LOCK`), so that services starting together migrate once.

use mysql::prelude::Queryable;
use mysql::{OptsBuilder, PooledConn};

use super::transact::server_code;
use super::MySql;
use crate::store::schema::{self, MYSQL, MYSQL_VERSION_TABLE};
use crate::store::{now_ms, Error};

const ER_DUP_FIELDNAME: u16 = 1060;
const ER_BAD_DB_ERROR: u16 = 1049;

impl MySql {
    /// Brings the schema up to date under a named lock, so that stores opening together
    /// migrate once.
    pub(super) fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.conn()?;
        // Named locks are per server, so the database name is part of the lock name.
        let lock = format!("chatroom.schema.{}", self.database);
        let got: Option<i64> = conn.exec_first("SELECT GET_LOCK(?, 60)", (&lock,))?;
        if got != Some(1) {
            return Err(Error::Unavailable(format!("timed out waiting for the schema lock {lock:?}")));
        }
        let result = migrate_locked(&mut conn);
        let released = conn.exec_drop("SELECT RELEASE_LOCK(?)", (&lock,));
        result?;
        released?;
        Ok(())
    }
}

/// Connects without a database and creates `database` if connecting to it fails with
/// "unknown database".
pub(super) fn create_database_if_missing(builder: OptsBuilder, database: &str) -> Result<(), Error> {
    match mysql::Conn::new(builder.clone()) {
        Ok(_) => return Ok(()),
        Err(mysql::Error::MySqlError(e)) if e.code == ER_BAD_DB_ERROR => {}
        Err(e) => return Err(e.into()),
    }
    let mut conn = mysql::Conn::new(builder.db_name(None::<String>)).map_err(Error::from)?;
    // Identifiers cannot be bound; the name was checked to be [A-Za-z0-9_]+ above.
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
    ))?;
    tracing::info!(database, "created mysql database");
    Ok(())
}

/// Applies every migration above the recorded version; the caller holds the schema lock.
fn migrate_locked(conn: &mut PooledConn) -> Result<(), Error> {
    conn.query_drop(MYSQL_VERSION_TABLE)?;
    let current: u32 = conn.query_first("SELECT COALESCE(MAX(version), 0) FROM schema_version")?.unwrap_or(0);
    for migration in schema::pending(MYSQL, current)? {
        for statement in migration.statements {
            match conn.query_drop(statement) {
                // A column added by an earlier run that was cut short.
                Err(e) if server_code(&e) == Some(ER_DUP_FIELDNAME) => {
                    tracing::info!(version = migration.version, error = %e, "column already added")
                }
                other => other?,
            }
        }
        conn.exec_drop(
            "INSERT INTO schema_version (version, description, applied_at_ms) VALUES (?, ?, ?)",
            (migration.version, migration.description, now_ms()),
        )?;
        tracing::info!(version = migration.version, "mysql schema migrated");
    }
    Ok(())
}
