//! The statements behind [`Sqlite`](super::Sqlite), one small function each, and the
//! conversions between ids and rows and SQLite values. Every statement binds its values
//! as parameters.

use rusqlite::types::ToSqlOutput;
use rusqlite::{params, ErrorCode, OptionalExtension, Row, ToSql, Transaction};

use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::store::paging::StateRow;
use crate::store::rules::{self, conversation_from_columns, history_from_column, no_user};
use crate::store::{ConversationState, Error, Group, Message, User};

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
pub(super) fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

pub(super) const USER_COLUMNS: &str = "id, name, created_at_ms";
/// A group's columns, prefixed with `g.` so that they serve joins too.
pub(super) const GROUP_COLUMNS: &str =
    "g.id, g.name, g.owner_id, g.created_at_ms, g.is_public, g.shared_history";

pub(super) fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User { id: UserId(row.get(0)?), name: row.get(1)?, created_at_ms: row.get(2)? })
}

pub(super) fn group_from_row(row: &Row<'_>) -> rusqlite::Result<Group> {
    Ok(Group {
        id: GroupId(row.get(0)?),
        name: row.get(1)?,
        owner: UserId(row.get(2)?),
        created_at_ms: row.get(3)?,
        public: row.get(4)?,
        history: history_from_column(row.get(5)?),
    })
}

/// Reads `seq, sender_id, client_msg_id, body, sent_at_ms` into a message of
/// `conversation`.
pub(super) fn message_from_row(conversation: ConversationId, row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        conversation,
        seq: row.get(0)?,
        sender: UserId(row.get(1)?),
        client_msg_id: row.get(2)?,
        body: row.get(3)?,
        sent_at_ms: row.get(4)?,
    })
}

pub(super) fn find_user(tx: &Transaction<'_>, id: UserId) -> Result<Option<User>, Error> {
    Ok(tx
        .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], user_from_row)
        .optional()?)
}

pub(super) fn require_user(tx: &Transaction<'_>, id: UserId) -> Result<User, Error> {
    find_user(tx, id)?.ok_or_else(|| no_user(id))
}

pub(super) fn require_group(tx: &Transaction<'_>, id: GroupId) -> Result<Group, Error> {
    tx.prepare_cached(&format!("SELECT {GROUP_COLUMNS} FROM chat_groups g WHERE g.id = ?1"))?
        .query_row([id], group_from_row)
        .optional()?
        .ok_or_else(|| Error::no_group(id))
}

/// The highest sequence number hidden from `user` in `group` (see
/// [`check_participant`]), or `None` when they are not a member.
pub(super) fn membership(tx: &Transaction<'_>, user: UserId, group: GroupId) -> Result<Option<u64>, Error> {
    Ok(tx
        .prepare_cached("SELECT visible_after_seq FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .query_row(params![group, user], |row| row.get(0))
        .optional()?)
}

pub(super) fn is_member(tx: &Transaction<'_>, user: UserId, group: GroupId) -> Result<bool, Error> {
    Ok(membership(tx, user, group)?.is_some())
}

/// Fails unless `user` may read and write `conversation` (which must be normalised), and
/// returns the highest sequence number hidden from them ([`rules::check_participant`]).
pub(super) fn check_participant(
    tx: &Transaction<'_>,
    user: UserId,
    conversation: ConversationId,
) -> Result<u64, Error> {
    rules::check_participant(user, conversation, |group| {
        Ok((require_group(tx, group)?, membership(tx, user, group)?))
    })
}

/// The row id and newest sequence number of a conversation, if it has a row.
pub(super) fn conversation_row(
    tx: &Transaction<'_>,
    conversation: ConversationId,
) -> Result<Option<(i64, u64)>, Error> {
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
pub(super) fn find_sent(
    tx: &Transaction<'_>,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<Message>, Error> {
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
pub(super) fn raise_cursor(tx: &Transaction<'_>, user: UserId, id: i64, seq: u64) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, conversation_id)
         DO UPDATE SET read_seq = MAX(read_seq, excluded.read_seq)",
    )?
    .execute(params![user, id, seq])?;
    Ok(())
}

/// Up to `n` messages of conversation row `id` after `after`, ascending.
pub(super) fn messages_after(
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

/// Up to `n` messages of conversation row `id` before `before` (or the newest) and after
/// `hidden`, newest first.
pub(super) fn messages_before(
    tx: &Transaction<'_>,
    id: i64,
    conversation: ConversationId,
    before: Option<u64>,
    hidden: u64,
    n: usize,
) -> Result<Vec<Message>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, sender_id, client_msg_id, body, sent_at_ms FROM messages
         WHERE conversation_id = ?1 AND (?2 IS NULL OR seq < ?2) AND seq > ?3
         ORDER BY seq DESC LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![id, before.map(seq_param), seq_param(hidden), n as u64], |row| {
        message_from_row(conversation, row)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The user's conversations with their row ids and hidden prefixes, in the documented
/// order.
pub(super) fn conversation_states(tx: &Transaction<'_>, user: UserId) -> Result<Vec<StateRow<i64>>, Error> {
    let mut stmt = tx.prepare_cached(
        "SELECT c.id, c.user_low, c.user_high, c.group_id, c.last_seq,
                COALESCE(r.read_seq, 0), 0 AS hidden, 0 AS part
         FROM conversations c
         LEFT JOIN read_cursors r ON r.conversation_id = c.id AND r.user_id = ?1
         WHERE c.user_low = ?1 OR c.user_high = ?1
         UNION ALL
         SELECT c.id, c.user_low, c.user_high, c.group_id, c.last_seq,
                COALESCE(r.read_seq, 0), gm.visible_after_seq, 1 AS part
         FROM group_members gm
         JOIN conversations c ON c.group_id = gm.group_id
         LEFT JOIN read_cursors r ON r.conversation_id = c.id AND r.user_id = ?1
         WHERE gm.user_id = ?1
         ORDER BY 8, 1",
    )?;
    let rows = stmt.query_map([user], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, Option<u64>>(1)?,
            row.get::<_, Option<u64>>(2)?,
            row.get::<_, Option<u64>>(3)?,
            row.get::<_, u64>(4)?,
            row.get::<_, u64>(5)?,
            row.get::<_, u64>(6)?,
        ))
    })?;
    let mut states = Vec::new();
    for row in rows {
        let (id, low, high, group, last_seq, read_seq, hidden) = row?;
        let conversation = conversation_from_columns(low, high, group)?;
        let state = ConversationState { conversation, last_seq, read_seq: read_seq.min(last_seq) };
        states.push((id, state, hidden));
    }
    Ok(states)
}
