//! [`Store`] on MySQL or MariaDB, for the cluster.
//!
//! Several user-service and chat-service processes share one database, so every rule
//! that needs atomicity is kept by the database, not by the process:
//!
//! * A message's sequence number is assigned inside the transaction that stores it, with
//!   the conversation's row locked (`SELECT ... FOR UPDATE`) from reading `last_seq`
//!   until commit. Writers to one conversation queue on that row; writers to different
//!   conversations do not meet. A rolled-back send also rolls back its increment, so the
//!   numbers have no gaps.
//! * Unique keys decide races: two registrations of one name, two sends with one client
//!   message id. The loser's duplicate-key error becomes `AlreadyExists` or the original
//!   message.
//! * Transactions run at READ COMMITTED, so a statement after a lock wait sees what the
//!   transaction it waited for committed; deadlocks and lock-wait time-outs are retried a
//!   few times before they are reported.
//! * The schema is migrated under a named lock (`GET_LOCK`), so services starting
//!   together migrate once.
//!
//! Sending is the hot path, so it costs as few round trips as the rules allow: pooled
//! connections keep their prepared statements (the pool does not reset a connection when
//! it is returned: every transaction here ends in a commit or a rollback and leaves no
//! session state behind), sessions start at READ COMMITTED, a conversation's row id is
//! remembered once looked up (rows are never deleted and their keys never change), and
//! locking the row and taking the next number is one `UPDATE ... LAST_INSERT_ID()`.
//! Concurrent sends are stored together (`batch.rs`): a few committer threads each take
//! what is queued and store it in one transaction with multi-row statements, answering
//! each sender after the commit; whatever a batch cannot decide, or a failed batch, goes
//! through the one-message path on the caller's thread. A one-to-one pair's first
//! message creates the pair's row inside its sending transaction.
//!
//! The parts: `send.rs` stores one message alone, `batch.rs` stores concurrent ones
//! together, `transact.rs` runs and retries transactions, `migrate.rs` creates the
//! database and migrates its schema; `queries.rs`, `groups.rs` and `tokens.rs` hold the
//! statements. The rules both SQL stores keep are in `store/rules.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn};

use super::paging::{self, collect_sync, history_limit, HistoryRows};
use super::rules::{
    already_friends, already_member, check_friend, check_new_message, check_new_user, check_password_hash,
    name_key, name_taken, no_user_named, not_friends,
};
use super::{
    now_ms, Anchor, ConversationState, Credentials, Cursor, Error, Group, GroupSettings, Invitation,
    NewMessage, NewToken, Page, Sent, Store, User,
};
use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::limits;

mod batch;
mod groups;
mod migrate;
mod queries;
mod send;
mod tokens;
mod transact;

use self::batch::Commits;
use self::migrate::create_database_if_missing;
use self::queries::{
    check_participant, conversation_row, conversation_states, messages_after, messages_before, raise_cursor,
    require_group, require_user, user_from, UserRow, USER_COLUMNS,
};
use self::transact::is_duplicate;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `mysql://USER:PASSWORD@HOST:PORT/DATABASE`. The database is created if it does not
    /// exist and the user may create it; its name may hold only ASCII letters, digits
    /// and `_`.
    pub url: String,
    /// The most connections the pool opens; each concurrent store call holds one.
    pub max_connections: usize,
    /// How long opening a TCP connection may take before the store reports
    /// [`Error::Unavailable`].
    pub connect_timeout: Duration,
    /// How long a call waits for a free pooled connection.
    pub checkout_timeout: Duration,
    /// How long one read or write on a connection may block before the store gives the
    /// connection up and reports [`Error::Unavailable`] (a lost connection, so a send's
    /// outcome is unknown), so that a frozen database server holds no thread for ever.
    /// Longer than a lock wait (`innodb_lock_wait_timeout`, set to
    /// [`LOCK_WAIT_SECS`] on every connection), which ends a statement first.
    pub io_timeout: Duration,
    /// Threads that store concurrent sends together, one transaction per batch (see
    /// `batch.rs`); each holds a pooled connection while it commits.
    pub committers: usize,
    /// The most sends one such transaction stores.
    pub max_batch: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "mysql://chatroom:chatroom@127.0.0.1:3306/chatroom".into(),
            max_connections: 32,
            connect_timeout: Duration::from_secs(5),
            checkout_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            committers: 4,
            max_batch: 64,
        }
    }
}

/// The chat store in a MySQL or MariaDB database.
#[derive(Debug, Clone)]
pub struct MySql {
    /// Connections to the database; cloning the store shares the pool.
    pool: Pool,
    /// The database name, for logs and [`MySql::database`].
    database: String,
    /// How long a call waits for a connection.
    checkout_timeout: Duration,
    /// Conversation row ids by conversation, shared by clones. Rows are never deleted
    /// and their keys never change, so an entry never goes stale.
    conversation_ids: Arc<Mutex<HashMap<ConversationId, u64>>>,
    /// The queue to the committer threads that store concurrent sends in one
    /// transaction; `None` in the committers' own copies of the store.
    commits: Option<Arc<Commits>>,
}

/// Set on every new connection: every transaction runs at READ COMMITTED without a
/// statement of its own to say so.
const SESSION_INIT: &str = "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// How long a statement waits for a row lock before MariaDB ends it (the server's
/// default is 50 s); a lock wait that ends is retried like a deadlock (`ATTEMPTS`).
pub const LOCK_WAIT_SECS: u32 = 20;

impl MySql {
    /// Connects to `url` with the other settings at their defaults; see
    /// [`MySql::with_config`].
    ///
    /// # Errors
    ///
    /// As for [`MySql::with_config`].
    pub fn open(url: &str) -> Result<Self, Error> {
        MySql::with_config(&Config { url: url.to_owned(), ..Config::default() })
    }

    /// Connects, creates the database if it is missing, and brings the schema up to
    /// date.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a malformed URL or database name,
    /// [`Error::Unavailable`] when the server cannot be reached, [`Error::MySql`] when it
    /// refuses (wrong password, missing rights), [`Error::SchemaTooNew`] when a newer
    /// program already migrated the database.
    pub fn with_config(config: &Config) -> Result<Self, Error> {
        let opts =
            Opts::from_url(&config.url).map_err(|e| Error::InvalidArgument(format!("bad MySQL URL: {e}")))?;
        let database = opts
            .get_db_name()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("the MySQL URL must name a database: {}", redact(&config.url)))
            })?
            .to_owned();
        if !database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::InvalidArgument(format!(
                "database name {database:?} may hold only ASCII letters, digits and '_'"
            )));
        }
        let constraints = PoolConstraints::new(0, config.max_connections.max(1))
            .ok_or_else(|| Error::InvalidArgument("bad pool size".into()))?;
        // No reset when a connection goes back to the pool: a reset costs a round trip
        // and drops the connection's prepared statements, so every statement would be
        // prepared again on every call.
        let pool_opts = PoolOpts::default().with_constraints(constraints).with_reset_connection(false);
        let builder = OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(config.connect_timeout))
            .read_timeout(Some(config.io_timeout))
            .write_timeout(Some(config.io_timeout))
            .init(vec![
                SESSION_INIT.to_owned(),
                format!("SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_SECS}"),
            ])
            // Room for the batch statements (six sizes of four kinds) beside the others.
            .stmt_cache_size(128)
            .pool_opts(pool_opts);

        create_database_if_missing(builder.clone(), &database)?;
        let pool = Pool::new(builder).map_err(Error::from)?;
        let mut store = MySql {
            pool,
            database,
            checkout_timeout: config.checkout_timeout,
            conversation_ids: Arc::default(),
            commits: None,
        };
        store.migrate()?;
        store.commits = Some(Arc::new(batch::start(&store, config.committers, config.max_batch)));
        tracing::debug!(database = %store.database, "mysql store open");
        Ok(store)
    }

    /// The database this store uses.
    pub fn database(&self) -> &str {
        &self.database
    }

    fn conn(&self) -> Result<PooledConn, Error> {
        self.pool.try_get_conn(self.checkout_timeout).map_err(Error::from)
    }
}

/// `url` (MySQL, Redis, any `scheme://user:password@host` form) with its password
/// replaced by `***`, for messages that name the URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

impl Store for MySql {
    fn create_user(&self, name: &str, password_hash: &str) -> Result<User, Error> {
        check_new_user(name, password_hash)?;
        let created_at_ms = now_ms();
        let mut conn = self.conn()?;
        let inserted = conn
            .exec_drop(
                "INSERT INTO users (name, name_key, password_hash, created_at_ms)
                 VALUES (?, ?, ?, ?)",
                (name, name_key(name), password_hash, created_at_ms),
            )
            .map_err(Error::from);
        match inserted {
            Ok(()) => Ok(User { id: UserId(conn.last_insert_id()), name: name.to_owned(), created_at_ms }),
            Err(e) if is_duplicate(&e) => Err(name_taken(name)),
            Err(e) => Err(e),
        }
    }

    fn credentials(&self, name: &str) -> Result<Credentials, Error> {
        if crate::limits::check_name(name).is_err() {
            // No such name was ever registered, and `name_key` is ASCII: MariaDB would
            // refuse to compare it with another character set.
            return Err(no_user_named(name));
        }
        let row: Option<(u64, String, i64, String)> = self.conn()?.exec_first(
            format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE name_key = ?"),
            (name_key(name),),
        )?;
        let (id, name_found, created_at_ms, password_hash) = row.ok_or_else(|| no_user_named(name))?;
        Ok(Credentials { user: user_from((id, name_found, created_at_ms)), password_hash })
    }

    fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), Error> {
        check_password_hash(password_hash)?;
        self.transact(|tx| tokens::set_password_hash(tx, user, password_hash))
    }

    fn add_session_token(&self, token: &NewToken) -> Result<(), Error> {
        self.transact(|tx| tokens::add(tx, token))
    }

    fn session_token_user(&self, hash: &[u8; 32]) -> Result<User, Error> {
        // One statement unless the token expired: then its deletion follows.
        tokens::user(&mut self.conn()?, hash)
    }

    fn revoke_session_token(&self, hash: &[u8; 32]) -> Result<bool, Error> {
        tokens::revoke(&mut self.conn()?, hash)
    }

    fn user(&self, id: UserId) -> Result<User, Error> {
        require_user(&mut self.conn()?, id)
    }

    fn user_by_name(&self, name: &str) -> Result<User, Error> {
        self.credentials(name).map(|c| c.user)
    }

    fn add_friend(&self, user: UserId, friend: UserId) -> Result<User, Error> {
        check_friend(user, friend)?;
        let now = now_ms();
        let outcome = self.transact(|tx| {
            require_user(tx, user)?;
            let other = require_user(tx, friend)?;
            tx.exec_batch(
                "INSERT INTO friends (user_id, friend_id, created_at_ms) VALUES (?, ?, ?)",
                [(user.0, friend.0, now), (friend.0, user.0, now)],
            )?;
            Ok(other)
        });
        match outcome {
            Err(e) if is_duplicate(&e) => Err(already_friends(user, friend)),
            other => other,
        }
    }

    fn remove_friend(&self, user: UserId, friend: UserId) -> Result<(), Error> {
        self.transact(|tx| {
            tx.exec_drop(
                "DELETE FROM friends WHERE (user_id = ? AND friend_id = ?)
                                        OR (user_id = ? AND friend_id = ?)",
                (user.0, friend.0, friend.0, user.0),
            )?;
            if tx.affected_rows() == 0 {
                return Err(not_friends(user, friend));
            }
            Ok(())
        })
    }

    fn friends(&self, user: UserId) -> Result<Vec<User>, Error> {
        let rows: Vec<UserRow> = self.conn()?.exec(
            "SELECT u.id, u.name, u.created_at_ms FROM friends f
             JOIN users u ON u.id = f.friend_id
             WHERE f.user_id = ? ORDER BY u.name_key",
            (user.0,),
        )?;
        Ok(rows.into_iter().map(user_from).collect())
    }

    fn create_group(&self, owner: UserId, name: &str, settings: GroupSettings) -> Result<Group, Error> {
        limits::check_group_name(name)?;
        let now = now_ms();
        self.transact(|tx| groups::create(tx, owner, name, settings, now))
    }

    fn group(&self, id: GroupId) -> Result<Group, Error> {
        require_group(&mut self.conn()?, id, false)
    }

    fn join_group(&self, user: UserId, group: GroupId) -> Result<Group, Error> {
        let now = now_ms();
        match self.transact(|tx| groups::join(tx, user, group, now)) {
            Err(e) if is_duplicate(&e) => Err(already_member(user, group)),
            other => other,
        }
    }

    fn leave_group(&self, user: UserId, group: GroupId) -> Result<(), Error> {
        self.transact(|tx| groups::leave(tx, user, group))
    }

    fn invite(&self, inviter: UserId, group: GroupId, user: UserId) -> Result<Invitation, Error> {
        let now = now_ms();
        self.transact(|tx| groups::invite(tx, inviter, group, user, now))
    }

    fn remove_member(&self, owner: UserId, group: GroupId, member: UserId) -> Result<(), Error> {
        self.transact(|tx| groups::remove_member(tx, owner, group, member))
    }

    fn groups_of(&self, user: UserId) -> Result<Vec<Group>, Error> {
        groups::of_user(&mut self.conn()?, user)
    }

    fn group_members(&self, group: GroupId) -> Result<Vec<User>, Error> {
        let mut conn = self.conn()?;
        require_group(&mut conn, group, false)?;
        let rows: Vec<UserRow> = conn.exec(
            "SELECT u.id, u.name, u.created_at_ms FROM group_members gm
             JOIN users u ON u.id = gm.user_id
             WHERE gm.group_id = ? ORDER BY gm.id",
            (group.0,),
        )?;
        Ok(rows.into_iter().map(user_from).collect())
    }

    fn group_member_ids(&self, group: GroupId) -> Result<Vec<UserId>, Error> {
        let mut conn = self.conn()?;
        let ids: Vec<u64> =
            conn.exec("SELECT user_id FROM group_members WHERE group_id = ? ORDER BY id", (group.0,))?;
        if ids.is_empty() {
            // A group always has its owner, unless everyone left or it does not exist.
            require_group(&mut conn, group, false)?;
        }
        Ok(ids.into_iter().map(UserId).collect())
    }

    fn send(&self, message: &NewMessage<'_>) -> Result<Sent, Error> {
        let conversation = check_new_message(message)?;
        // Sends to a conversation whose row id is known are queued to be stored with
        // whatever else is being sent; the rest, and what a batch leaves, go alone.
        if let (Some(commits), Some(id)) = (&self.commits, self.known_conversation_id(conversation)) {
            if let Some(answer) = commits.send(message, conversation, id) {
                return answer;
            }
        }
        self.send_one(message, conversation)
    }
    fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<Page, Error> {
        let conversation = conversation.normalized();
        let limit = history_limit(limit);
        let mut conn = self.conn()?;
        let hidden = check_participant(&mut conn, user, conversation)?;
        let Some((id, _)) = conversation_row(&mut conn, conversation, false)? else {
            return Ok(Page::default());
        };
        paging::history(anchor, limit, hidden, |rows, n| match rows {
            HistoryRows::Before { before, hidden } => {
                messages_before(&mut conn, id, conversation, before.unwrap_or(u64::MAX), hidden, n)
            }
            HistoryRows::After(after) => messages_after(&mut conn, id, conversation, after, n),
        })
    }

    fn ack(&self, user: UserId, conversation: ConversationId, seq: u64) -> Result<u64, Error> {
        let conversation = conversation.normalized();
        self.transact(|tx| {
            check_participant(tx, user, conversation)?;
            let Some((id, last_seq)) = conversation_row(tx, conversation, false)? else {
                return Ok(0);
            };
            raise_cursor(tx, user, id, seq.min(last_seq))?;
            let read_seq: Option<u64> = tx.exec_first(
                "SELECT read_seq FROM read_cursors WHERE user_id = ? AND conversation_id = ?",
                (user.0, id),
            )?;
            Ok(read_seq.unwrap_or(0))
        })
    }

    fn conversations(&self, user: UserId) -> Result<Vec<ConversationState>, Error> {
        Ok(conversation_states(&mut self.conn()?, user)?.into_iter().map(|(_, state, _)| state).collect())
    }

    fn sync(&self, user: UserId, cursors: &[Cursor], limit: usize) -> Result<Page, Error> {
        let mut conn = self.conn()?;
        let rows = conversation_states(&mut conn, user)?;
        collect_sync(&rows, cursors, limit, |id, conversation, after, n| {
            messages_after(&mut conn, id, conversation, after, n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password() {
        assert_eq!(redact("mysql://chatroom:secret@127.0.0.1:3306/"), "mysql://chatroom:***@127.0.0.1:3306/");
        assert_eq!(redact("mysql://host/db"), "mysql://host/db");
    }

    #[test]
    fn url_without_database_is_rejected_before_connecting() {
        let err = MySql::open("mysql://chatroom:secret@127.0.0.1:1/").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn odd_database_names_are_rejected_before_connecting() {
        let err = MySql::open("mysql://u:p@127.0.0.1:1/chat%60room").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    }
}
