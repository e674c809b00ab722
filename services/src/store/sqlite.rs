//! [`Store`] on an SQLite file, for the standalone mode.
//!
//! One connection serves the whole process behind a mutex: the standalone system is one
//! process and SQLite admits one writer at a time anyway, so a pool would add threads
//! waiting on the same file lock. The file is in WAL mode with `synchronous = FULL`, so a
//! message is on disk before `send` returns. Every write runs in a `BEGIN IMMEDIATE`
//! transaction, which takes the write lock up front; that makes read-then-write sequences
//! such as sequence assignment atomic even when another process opens the same file
//! (it then waits up to [`BUSY_TIMEOUT`] for the lock).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::ToSqlOutput;
use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Row, ToSql, Transaction, TransactionBehavior,
};

use super::schema::{self, SQLITE, SQLITE_VERSION_TABLE};
use super::{
    check_new_message, collect_sync, conversation_from_columns, duplicate, history_page, name_key,
    not_participant, now_ms, Anchor, ConversationState, Credentials, Cursor, Error, Group, Message,
    NewMessage, Page, Sent, Store, User,
};
use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::limits;

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
    if current > schema::VERSION {
        return Err(Error::SchemaTooNew { found: current, supported: schema::VERSION });
    }
    for migration in SQLITE.iter().filter(|m| m.version > current) {
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

/// Ids are bound as SQLite integers, which are signed. An id above `i64::MAX` (which a
/// client may send, but SQLite never assigns) is bound as -1, which matches no row, so a
/// look-up answers "not found" instead of failing.
impl ToSql for UserId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(i64::try_from(self.0).unwrap_or(-1)))
    }
}

/// As for [`UserId`].
impl ToSql for GroupId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(i64::try_from(self.0).unwrap_or(-1)))
    }
}

/// A sequence number as an SQLite integer; numbers above `i64::MAX` (never assigned)
/// are bound as `i64::MAX`, which compares above every stored one.
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

const USER_COLUMNS: &str = "id, name, created_at_ms";
const GROUP_COLUMNS: &str = "id, name, owner_id, created_at_ms";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User { id: UserId(row.get(0)?), name: row.get(1)?, created_at_ms: row.get(2)? })
}

fn group_from_row(row: &Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        id: GroupId(row.get(0)?),
        name: row.get(1)?,
        owner: UserId(row.get(2)?),
        created_at_ms: row.get(3)?,
    })
}

/// Reads `seq, sender_id, client_msg_id, body, sent_at_ms` into a message of
/// `conversation`.
fn message_from_row(conversation: ConversationId, row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        conversation,
        seq: row.get(0)?,
        sender: UserId(row.get(1)?),
        client_msg_id: row.get(2)?,
        body: row.get(3)?,
        sent_at_ms: row.get(4)?,
    })
}

fn find_user(tx: &Transaction<'_>, id: UserId) -> Result<Option<User>, Error> {
    Ok(tx
        .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], user_from_row)
        .optional()?)
}

fn require_user(tx: &Transaction<'_>, id: UserId) -> Result<User, Error> {
    find_user(tx, id)?.ok_or_else(|| Error::NotFound(format!("user {id} does not exist")))
}

fn require_group(tx: &Transaction<'_>, id: GroupId) -> Result<Group, Error> {
    tx.prepare_cached(&format!("SELECT {GROUP_COLUMNS} FROM chat_groups WHERE id = ?1"))?
        .query_row([id], group_from_row)
        .optional()?
        .ok_or_else(|| Error::NotFound(format!("group {id} does not exist")))
}

fn is_member(tx: &Transaction<'_>, user: UserId, group: GroupId) -> Result<bool, Error> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .query_row(params![group, user], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Fails unless `user` may read and write `conversation` (which must be normalised).
fn check_participant(tx: &Transaction<'_>, user: UserId, conversation: ConversationId) -> Result<(), Error> {
    match conversation {
        ConversationId::Direct { low, high } if low == user || high == user => Ok(()),
        ConversationId::Direct { .. } => Err(not_participant(user, conversation)),
        ConversationId::Group(group) => {
            require_group(tx, group)?;
            if is_member(tx, user, group)? {
                Ok(())
            } else {
                Err(not_participant(user, conversation))
            }
        }
    }
}

/// The row id and newest sequence number of a conversation, if it has a row.
fn conversation_row(tx: &Transaction<'_>, conversation: ConversationId) -> Result<Option<(i64, u64)>, Error> {
    let row = match conversation {
        ConversationId::Direct { low, high } => tx
            .prepare_cached("SELECT id, last_seq FROM conversations WHERE user_low = ?1 AND user_high = ?2")?
            .query_row([low, high], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
        ConversationId::Group(group) => tx
            .prepare_cached("SELECT id, last_seq FROM conversations WHERE group_id = ?1")?
            .query_row([group], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    };
    Ok(row)
}

/// The message `sender` stored under `client_msg_id`, if any.
fn find_sent(tx: &Transaction<'_>, sender: UserId, client_msg_id: &str) -> Result<Option<Message>, Error> {
    let row = tx
        .prepare_cached(
            "SELECT m.seq, m.sender_id, m.client_msg_id, m.body, m.sent_at_ms,
                    c.user_low, c.user_high, c.group_id
             FROM messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.sender_id = ?1 AND m.client_msg_id = ?2",
        )?
        .query_row(params![sender, client_msg_id], |row| {
            let columns = (row.get(5)?, row.get(6)?, row.get(7)?);
            // The conversation is filled in below, once the columns are checked.
            let message = message_from_row(ConversationId::Group(GroupId(0)), row)?;
            Ok((message, columns))
        })
        .optional()?;
    row.map(|(mut message, (low, high, group))| {
        message.conversation = conversation_from_columns(low, high, group)?;
        Ok(message)
    })
    .transpose()
}

/// Raises `user`'s read cursor in conversation row `id` to at least `seq`.
fn raise_cursor(tx: &Transaction<'_>, user: UserId, id: i64, seq: u64) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, conversation_id)
         DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)",
    )?
    .execute(params![user, id, seq])?;
    Ok(())
}

/// Up to `n` messages of conversation row `id` after `after`, ascending.
fn messages_after(
    tx: &Transaction<'_>,
    id: i64,
    conversation: ConversationId,
    after: u64,
    n: usize,
) -> Result<Vec<Message>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, sender_id, client_msg_id, body, sent_at_ms FROM messages
         WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
    )?;
    let rows =
        stmt.query_map(params![id, seq_param(after), n as u64], |row| message_from_row(conversation, row))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `n` messages of conversation row `id` before `before` (or the newest), newest
/// first.
fn messages_before(
    tx: &Transaction<'_>,
    id: i64,
    conversation: ConversationId,
    before: Option<u64>,
    n: usize,
) -> Result<Vec<Message>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, sender_id, client_msg_id, body, sent_at_ms FROM messages
         WHERE conversation_id = ?1 AND (?2 IS NULL OR seq < ?2) ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![id, before.map(seq_param), n as u64], |row| message_from_row(conversation, row))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The user's conversations with their row ids, in the documented order.
fn conversation_states(tx: &Transaction<'_>, user: UserId) -> Result<Vec<(i64, ConversationState)>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT c.id, c.user_low, c.user_high, c.group_id, c.last_seq,
                COALESCE(r.read_seq, 0), 0 AS part
         FROM conversations c
         LEFT JOIN read_cursors r ON r.conversation_id = c.id AND r.user_id = ?1
         WHERE c.user_low = ?1 OR c.user_high = ?1
         UNION ALL
         SELECT c.id, c.user_low, c.user_high, c.group_id, c.last_seq,
                COALESCE(r.read_seq, 0), 1 AS part
         FROM group_members gm
         JOIN conversations c ON c.group_id = gm.group_id
         LEFT JOIN read_cursors r ON r.conversation_id = c.id AND r.user_id = ?1
         WHERE gm.user_id = ?1
         ORDER BY 7, 1",
    )?;
    let rows = stmt.query_map([user], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<u64>>(1)?,
            row.get::<_, Option<u64>>(2)?,
            row.get::<_, Option<u64>>(3)?,
            row.get::<_, u64>(4)?,
            row.get::<_, u64>(5)?,
        ))
    })?;
    let mut states = Vec::new();
    for row in rows {
        let (id, low, high, group, last_seq, read_seq) = row?;
        let conversation = conversation_from_columns(low, high, group)?;
        states.push((id, ConversationState { conversation, last_seq, read_seq: read_seq.min(last_seq) }));
    }
    Ok(states)
}

impl Store for Sqlite {
    fn create_user(&self, name: &str, password_hash: &str) -> Result<User, Error> {
        limits::check_name(name)?;
        if password_hash.is_empty() {
            return Err(Error::InvalidArgument("password hash is empty".into()));
        }
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
                Err(e) if is_unique_violation(&e) => {
                    Err(Error::AlreadyExists(format!("the name {name:?} is already taken")))
                }
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
            .ok_or_else(|| Error::NotFound(format!("no user named {name:?}")))
        })
    }

    fn user(&self, id: UserId) -> Result<User, Error> {
        self.read(|tx| require_user(tx, id))
    }

    fn user_by_name(&self, name: &str) -> Result<User, Error> {
        self.credentials(name).map(|c| c.user)
    }

    fn add_friend(&self, user: UserId, friend: UserId) -> Result<User, Error> {
        if user == friend {
            return Err(Error::InvalidArgument("you cannot add yourself as a friend".into()));
        }
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
                    Err(e) if is_unique_violation(&e) => {
                        return Err(Error::AlreadyExists(format!(
                            "user {user} and user {friend} are already friends"
                        )))
                    }
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
                return Err(Error::NotFound(format!("user {friend} is not a friend of user {user}")));
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

    fn create_group(&self, owner: UserId, name: &str) -> Result<Group, Error> {
        limits::check_group_name(name)?;
        let created_at_ms = now_ms();
        self.write(|tx| {
            require_user(tx, owner)?;
            tx.prepare_cached("INSERT INTO chat_groups (name, owner_id, created_at_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![name, owner, created_at_ms])?;
            let id = GroupId(tx.last_insert_rowid() as u64);
            tx.prepare_cached(
                "INSERT INTO group_members (group_id, user_id, joined_at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id, owner, created_at_ms])?;
            tx.prepare_cached("INSERT INTO conversations (group_id, last_seq) VALUES (?1, 0)")?
                .execute([id])?;
            Ok(Group { id, name: name.to_owned(), owner, created_at_ms })
        })
    }

    fn group(&self, id: GroupId) -> Result<Group, Error> {
        self.read(|tx| require_group(tx, id))
    }

    fn join_group(&self, user: UserId, group: GroupId) -> Result<Group, Error> {
        let now = now_ms();
        self.write(|tx| {
            let found = require_group(tx, group)?;
            require_user(tx, user)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO group_members (group_id, user_id, joined_at_ms)
                     VALUES (?1, ?2, ?3)",
                )?
                .execute(params![group, user, now]);
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(Error::AlreadyExists(format!(
                        "user {user} is already a member of group {group}"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            let (id, last_seq) = conversation_row(tx, ConversationId::Group(group))?
                .ok_or_else(|| Error::Corrupt(format!("group {group} has no conversation row")))?;
            raise_cursor(tx, user, id, last_seq)?;
            Ok(found)
        })
    }

    fn leave_group(&self, user: UserId, group: GroupId) -> Result<(), Error> {
        self.write(|tx| {
            let found = require_group(tx, group)?;
            let removed = tx
                .prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
                .execute(params![group, user])?;
            if removed == 0 {
                return Err(Error::NotFound(format!("user {user} is not a member of group {group}")));
            }
            if found.owner == user {
                let heir: Option<u64> = tx
                    .prepare_cached(
                        "SELECT user_id FROM group_members WHERE group_id = ?1
                         ORDER BY id LIMIT 1",
                    )?
                    .query_row([group], |row| row.get(0))
                    .optional()?;
                if let Some(heir) = heir {
                    tx.prepare_cached("UPDATE chat_groups SET owner_id = ?1 WHERE id = ?2")?
                        .execute(params![heir, group])?;
                }
            }
            Ok(())
        })
    }

    fn groups_of(&self, user: UserId) -> Result<Vec<Group>, Error> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT g.id, g.name, g.owner_id, g.created_at_ms FROM group_members gm
                 JOIN chat_groups g ON g.id = gm.group_id
                 WHERE gm.user_id = ?1 ORDER BY g.id",
            )?;
            let rows = stmt.query_map([user], group_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn group_members(&self, group: GroupId) -> Result<Vec<User>, Error> {
        self.read(|tx| {
            require_group(tx, group)?;
            let mut stmt = tx.prepare_cached(
                "SELECT u.id, u.name, u.created_at_ms FROM group_members gm
                 JOIN users u ON u.id = gm.user_id
                 WHERE gm.group_id = ?1 ORDER BY gm.id",
            )?;
            let rows = stmt.query_map([group], user_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
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
            .ok_or_else(|| Error::Corrupt(format!("{conversation} has no conversation row")))?;
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
            Ok(Sent {
                message: Message {
                    conversation,
                    seq,
                    sender,
                    client_msg_id: message.client_msg_id.to_owned(),
                    body: message.body.to_owned(),
                    sent_at_ms,
                },
                duplicate: false,
            })
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
        let limit = limits::page_size(limit, limits::HISTORY_PAGE_DEFAULT, limits::HISTORY_PAGE_MAX);
        self.read(|tx| {
            check_participant(tx, user, conversation)?;
            let Some((id, _)) = conversation_row(tx, conversation)? else {
                return Ok(Page::default());
            };
            let rows = match anchor {
                Anchor::Latest => messages_before(tx, id, conversation, None, limit + 1)?,
                Anchor::Before(seq) => messages_before(tx, id, conversation, Some(seq), limit + 1)?,
                Anchor::After(seq) => messages_after(tx, id, conversation, seq, limit + 1)?,
            };
            Ok(history_page(rows, limit, anchor))
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
        self.read(|tx| Ok(conversation_states(tx, user)?.into_iter().map(|(_, state)| state).collect()))
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
