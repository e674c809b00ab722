//! [`Store`] on an SQLite file, for the standalone mode.
//!
//! One connection serves the whole process behind a mutex: the standalone system is one
//! process and SQLite admits one writer at a time anyway, so a pool would add threads
//! waiting on the same file lock. The file is in WAL mode with `synchronous = FULL`, so a
//! message is on disk before `send` returns. Every write runs in a `BEGIN IMMEDIATE`
//! transaction, which takes the write lock up front; that makes read-then-write sequences
//! such as sequence assignment atomic even when another process opens the same file
//! (it then waits up to [`BUSY_TIMEOUT`] for the lock).
//!
//! `queries.rs`, `groups.rs` and `tokens.rs` hold the statements; the rules both SQL
//! stores keep are in `store/rules.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::paging::{self, collect_sync, history_limit, HistoryRows};
use super::rules::{
    already_friends, check_friend, check_new_message, check_new_user, check_password_hash, duplicate,
    name_key, name_taken, no_conversation_row, no_user_named, not_friends, stored,
};
use super::schema::{self, SQLITE, SQLITE_VERSION_TABLE};
use super::{
    now_ms, Anchor, ConversationState, Credentials, Cursor, Error, Group, GroupSettings, Invitation,
    NewMessage, NewToken, Page, Sent, Store, User,
};
use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::limits;

mod groups;
mod queries;
mod tokens;

use self::queries::{
    check_participant, conversation_row, conversation_states, find_sent, is_unique_violation, messages_after,
    messages_before, raise_cursor, require_group, require_user, user_from_row, USER_COLUMNS,
};

/// How long a write waits for another connection's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The chat store in one SQLite file.
#[derive(Debug)]
pub struct Sqlite {
    /// The only connection; the mutex makes each method's transaction exclusive within
    /// the process.
    conn: Mutex<Connection>,
    /// Where the file is, for logs and errors.
    path: PathBuf,
}

impl Sqlite {
    /// Opens (creating if needed) the database file at `path`, creating its parent
    /// directory, and brings its schema up to date.
    ///
    /// # Errors
    ///
    /// [`Error::Sqlite`] when the file cannot be opened or migrated,
    /// [`Error::SchemaTooNew`] when a newer program already migrated it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::Unavailable(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "sqlite did not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        tracing::debug!(path = %path.display(), "sqlite store open");
        Ok(Sqlite { conn: Mutex::new(conn), path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held dropped its transaction, which rolled back, so
        // the connection is in a clean state and the poison can be ignored.
        self.conn.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committing when it succeeds.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in one deferred (read) transaction, so that it sees one snapshot.
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        f(&tx)
    }
}

/// Applies every migration above the recorded version, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(SQLITE_VERSION_TABLE, [])?;
    let current: u32 =
        tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |row| row.get(0))?;
    for migration in schema::pending(SQLITE, current)? {
        for statement in migration.statements {
            tx.execute(statement, [])?;
        }
        tx.execute(
            "INSERT INTO schema_version (version, description, applied_at_ms) VALUES (?1, ?2, ?3)",
            params![migration.version, migration.description, now_ms()],
        )?;
        tracing::info!(version = migration.version, "sqlite schema migrated");
    }
    tx.commit()?;
    Ok(())
}

impl Store for Sqlite {
    fn create_user(&self, name: &str, password_hash: &str) -> Result<User, Error> {
        check_new_user(name, password_hash)?;
        let created_at_ms = now_ms();
        self.write(|tx| {
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO users (name, name_key, password_hash, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![name, name_key(name), password_hash, created_at_ms]);
            match inserted {
                Ok(_) => Ok(User {
                    id: UserId(tx.last_insert_rowid() as u64),
                    name: name.to_owned(),
                    created_at_ms,
                }),
                Err(e) if is_unique_violation(&e) => Err(name_taken(name)),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn credentials(&self, name: &str) -> Result<Credentials, Error> {
        self.read(|tx| {
            tx.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users WHERE name_key = ?1"
            ))?
            .query_row([name_key(name)], |row| {
                Ok(Credentials { user: user_from_row(row)?, password_hash: row.get(3)? })
            })
            .optional()?
            .ok_or_else(|| no_user_named(name))
        })
    }

    fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), Error> {
        check_password_hash(password_hash)?;
        self.write(|tx| tokens::set_password_hash(tx, user, password_hash))
    }

    fn add_session_token(&self, token: &NewToken) -> Result<(), Error> {
        self.write(|tx| tokens::add(tx, token))
    }

    fn session_token_user(&self, hash: &[u8; 32]) -> Result<User, Error> {
        // A write: an expired token is deleted on the way.
        self.write(|tx| tokens::user(tx, hash))
    }

    fn revoke_session_token(&self, hash: &[u8; 32]) -> Result<bool, Error> {
        self.write(|tx| tokens::revoke(tx, hash))
    }

    fn user(&self, id: UserId) -> Result<User, Error> {
        self.read(|tx| require_user(tx, id))
    }

    fn user_by_name(&self, name: &str) -> Result<User, Error> {
        self.credentials(name).map(|c| c.user)
    }

    fn add_friend(&self, user: UserId, friend: UserId) -> Result<User, Error> {
        check_friend(user, friend)?;
        let now = now_ms();
        self.write(|tx| {
            require_user(tx, user)?;
            let other = require_user(tx, friend)?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO friends (user_id, friend_id, created_at_ms) VALUES (?1, ?2, ?3)",
            )?;
            for (a, b) in [(user, friend), (friend, user)] {
                match insert.execute(params![a, b, now]) {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => return Err(already_friends(user, friend)),
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(other)
        })
    }

    fn remove_friend(&self, user: UserId, friend: UserId) -> Result<(), Error> {
        self.write(|tx| {
            let removed = tx
                .prepare_cached(
                    "DELETE FROM friends WHERE (user_id = ?1 AND friend_id = ?2)
                                            OR (user_id = ?2 AND friend_id = ?1)",
                )?
                .execute([user, friend])?;
            if removed == 0 {
                return Err(not_friends(user, friend));
            }
            Ok(())
        })
    }

    fn friends(&self, user: UserId) -> Result<Vec<User>, Error> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT u.id, u.name, u.created_at_ms FROM friends f
                 JOIN users u ON u.id = f.friend_id
                 WHERE f.user_id = ?1 ORDER BY u.name_key",
            )?;
            let rows = stmt.query_map([user], user_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn create_group(&self, owner: UserId, name: &str, settings: GroupSettings) -> Result<Group, Error> {
        limits::check_group_name(name)?;
        let now = now_ms();
        self.write(|tx| groups::create(tx, owner, name, settings, now))
    }

    fn group(&self, id: GroupId) -> Result<Group, Error> {
        self.read(|tx| require_group(tx, id))
    }

    fn join_group(&self, user: UserId, group: GroupId) -> Result<Group, Error> {
        let now = now_ms();
        self.write(|tx| groups::join(tx, user, group, now))
    }

    fn leave_group(&self, user: UserId, group: GroupId) -> Result<(), Error> {
        self.write(|tx| groups::leave(tx, user, group))
    }

    fn invite(&self, inviter: UserId, group: GroupId, user: UserId) -> Result<Invitation, Error> {
        let now = now_ms();
        self.write(|tx| groups::invite(tx, inviter, group, user, now))
    }

    fn remove_member(&self, owner: UserId, group: GroupId, member: UserId) -> Result<(), Error> {
        self.write(|tx| groups::remove_member(tx, owner, group, member))
    }

    fn groups_of(&self, user: UserId) -> Result<Vec<Group>, Error> {
        self.read(|tx| groups::of_user(tx, user))
    }

    fn group_members(&self, group: GroupId) -> Result<Vec<User>, Error> {
        self.read(|tx| groups::members(tx, group))
    }

    fn send(&self, message: &NewMessage<'_>) -> Result<Sent, Error> {
        let conversation = check_new_message(message)?;
        let sender = message.sender;
        let sent_at_ms = now_ms();
        self.write(|tx| {
            // A retry is answered before any other check, so that it still gets its
            // original answer after, say, the sender left the group.
            if let Some(original) = find_sent(tx, sender, message.client_msg_id)? {
                return duplicate(original, conversation);
            }
            let id = match conversation {
                ConversationId::Direct { low, high } => {
                    let peer = if low == sender { high } else { low };
                    require_user(tx, peer)?;
                    tx.prepare_cached(
                        "INSERT INTO conversations (user_low, user_high, last_seq)
                         VALUES (?1, ?2, 0) ON CONFLICT DO NOTHING",
                    )?
                    .execute([low, high])?;
                    conversation_row(tx, conversation)?.map(|(id, _)| id)
                }
                ConversationId::Group(_) => {
                    check_participant(tx, sender, conversation)?;
                    conversation_row(tx, conversation)?.map(|(id, _)| id)
                }
            }
            .ok_or_else(|| no_conversation_row(conversation))?;
            let seq: u64 = tx
                .prepare_cached(
                    "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ?1
                     RETURNING last_seq",
                )?
                .query_row([id], |row| row.get(0))?;
            tx.prepare_cached(
                "INSERT INTO messages
                    (conversation_id, seq, sender_id, client_msg_id, body, sent_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                seq,
                sender,
                message.client_msg_id,
                message.body,
                sent_at_ms
            ])?;
            raise_cursor(tx, sender, id, seq)?;
            Ok(stored(message, conversation, seq, sent_at_ms))
        })
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
        self.read(|tx| {
            let hidden = check_participant(tx, user, conversation)?;
            let Some((id, _)) = conversation_row(tx, conversation)? else {
                return Ok(Page::default());
            };
            paging::history(anchor, limit, hidden, |rows, n| match rows {
                HistoryRows::Before { before, hidden } => {
                    messages_before(tx, id, conversation, before, hidden, n)
                }
                HistoryRows::After(after) => messages_after(tx, id, conversation, after, n),
            })
        })
    }

    fn ack(&self, user: UserId, conversation: ConversationId, seq: u64) -> Result<u64, Error> {
        let conversation = conversation.normalized();
        self.write(|tx| {
            check_participant(tx, user, conversation)?;
            let Some((id, last_seq)) = conversation_row(tx, conversation)? else {
                return Ok(0);
            };
            raise_cursor(tx, user, id, seq.min(last_seq))?;
            let read_seq: u64 = tx
                .prepare_cached(
                    "SELECT read_seq FROM read_cursors WHERE user_id = ?1 AND conversation_id = ?2",
                )?
                .query_row(params![user, id], |row| row.get(0))?;
            Ok(read_seq)
        })
    }

    fn conversations(&self, user: UserId) -> Result<Vec<ConversationState>, Error> {
        self.read(|tx| Ok(conversation_states(tx, user)?.into_iter().map(|(_, state, _)| state).collect()))
    }

    fn sync(&self, user: UserId, cursors: &[Cursor], limit: usize) -> Result<Page, Error> {
        self.read(|tx| {
            let rows = conversation_states(tx, user)?;
            collect_sync(&rows, cursors, limit, |id, conversation, after, n| {
                messages_after(tx, id, conversation, after, n)
            })
        })
    }
}
