//! The statements behind [`MySql`](super::MySql), one small function each, and the
//! conversions from rows to records. Every statement binds its values as parameters.

use mysql::prelude::Queryable;

use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::store::paging::StateRow;
use crate::store::rules::{self, conversation_from_columns, history_from_column, no_user};
use crate::store::{ConversationState, Error, Group, Message, User};

pub(super) type UserRow = (u64, String, i64);
pub(super) type GroupRow = (u64, String, u64, i64, bool, bool);
pub(super) type MessageRow = (u64, u64, String, String, i64);

pub(super) const USER_COLUMNS: &str = "id, name, created_at_ms";
/// A group's columns, prefixed with `g.` so that they serve joins too.
pub(super) const GROUP_COLUMNS: &str =
    "g.id, g.name, g.owner_id, g.created_at_ms, g.is_public, g.shared_history";
pub(super) const MESSAGE_COLUMNS: &str = "seq, sender_id, client_msg_id, body, sent_at_ms";

pub(super) fn user_from((id, name, created_at_ms): UserRow) -> User {
    User { id: UserId(id), name, created_at_ms }
}

pub(super) fn group_from((id, name, owner, created_at_ms, public, shared): GroupRow) -> Group {
    Group {
        id: GroupId(id),
        name,
        owner: UserId(owner),
        created_at_ms,
        public,
        history: history_from_column(shared),
    }
}

pub(super) fn message_from(
    conversation: ConversationId,
    (seq, sender, client_msg_id, body, sent_at_ms): MessageRow,
) -> Message {
    Message { conversation, seq, sender: UserId(sender), client_msg_id, body, sent_at_ms }
}

pub(super) fn find_user(q: &mut impl Queryable, id: UserId) -> Result<Option<User>, Error> {
    let row: Option<UserRow> =
        q.exec_first(format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"), (id.0,))?;
    Ok(row.map(user_from))
}

pub(super) fn require_user(q: &mut impl Queryable, id: UserId) -> Result<User, Error> {
    find_user(q, id)?.ok_or_else(|| no_user(id))
}

/// The group, read with `FOR UPDATE` when `lock` is set, so that membership and
/// ownership changes to one group queue behind each other.
pub(super) fn require_group(q: &mut impl Queryable, id: GroupId, lock: bool) -> Result<Group, Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row: Option<GroupRow> =
        q.exec_first(format!("SELECT {GROUP_COLUMNS} FROM chat_groups g WHERE g.id = ?{suffix}"), (id.0,))?;
    row.map(group_from).ok_or_else(|| Error::no_group(id))
}

/// The highest sequence number hidden from `user` in `group` (see
/// [`check_participant`]), or `None` when they are not a member.
pub(super) fn membership(q: &mut impl Queryable, user: UserId, group: GroupId) -> Result<Option<u64>, Error> {
    Ok(q.exec_first(
        "SELECT visible_after_seq FROM group_members WHERE group_id = ? AND user_id = ?",
        (group.0, user.0),
    )?)
}

pub(super) fn is_member(q: &mut impl Queryable, user: UserId, group: GroupId) -> Result<bool, Error> {
    Ok(membership(q, user, group)?.is_some())
}

/// Fails unless `user` may read and write `conversation` (which must be normalised), and
/// returns the highest sequence number hidden from them ([`rules::check_participant`]).
pub(super) fn check_participant(
    q: &mut impl Queryable,
    user: UserId,
    conversation: ConversationId,
) -> Result<u64, Error> {
    rules::check_participant(user, conversation, |group| {
        Ok((require_group(q, group, false)?, membership(q, user, group)?))
    })
}

/// Fails unless `user` may send to `conversation` (normalised). The same rule as
/// [`check_participant`], in one statement for a member of a group.
pub(super) fn check_sender(
    q: &mut impl Queryable,
    user: UserId,
    conversation: ConversationId,
) -> Result<(), Error> {
    match conversation {
        ConversationId::Group(group) if is_member(q, user, group)? => Ok(()),
        // Not a member: find out whether the group exists, for the right error.
        _ => check_participant(q, user, conversation).map(drop),
    }
}

/// Locks conversation row `id` until the transaction ends and raises its `last_seq` by
/// one, returning the new value.
pub(super) fn next_seq(q: &mut impl Queryable, id: u64) -> Result<u64, Error> {
    advance_seq(q, id, 1)
}

/// Locks conversation row `id` until the transaction ends and raises its `last_seq` by
/// `k`, returning the new value (the numbers taken are `new - k + 1 ..= new`): one
/// statement, since `LAST_INSERT_ID(expr)` hands the value back in the statement's
/// answer.
pub(super) fn advance_seq(q: &mut impl Queryable, id: u64, k: u64) -> Result<u64, Error> {
    let result = q.exec_iter(
        "UPDATE conversations SET last_seq = LAST_INSERT_ID(last_seq + ?) WHERE id = ?",
        (k, id),
    )?;
    match (result.affected_rows(), result.last_insert_id()) {
        (1, Some(seq)) if seq >= k && k > 0 => Ok(seq),
        (rows, seq) => Err(Error::Corrupt(format!(
            "advancing conversation row {id} by {k} changed {rows} rows and gave sequence {seq:?}"
        ))),
    }
}

/// The row id of the one-to-one conversation of `low` and `high`, created now when it
/// has none; the row stays locked until the transaction ends.
pub(super) fn create_pair(q: &mut impl Queryable, low: UserId, high: UserId) -> Result<u64, Error> {
    let result = q.exec_iter(
        "INSERT INTO conversations (user_low, user_high, last_seq) VALUES (?, ?, 0)
         ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
        (low.0, high.0),
    )?;
    if let Some(id) = result.last_insert_id().filter(|&id| id > 0) {
        return Ok(id);
    }
    drop(result);
    conversation_row(q, ConversationId::Direct { low, high }, true)?
        .map(|(id, _)| id)
        .ok_or_else(|| Error::Corrupt(format!("no row for the pair ({low}, {high}) after creating it")))
}

/// The row id and newest sequence number of a conversation, if it has a row; with
/// `lock`, the row stays locked until the transaction ends.
pub(super) fn conversation_row(
    q: &mut impl Queryable,
    conversation: ConversationId,
    lock: bool,
) -> Result<Option<(u64, u64)>, Error> {
    let suffix = if lock { " FOR UPDATE" } else { "" };
    let row = match conversation {
        ConversationId::Direct { low, high } => q.exec_first(
            format!(
                "SELECT id, last_seq FROM conversations \
                 WHERE user_low = ? AND user_high = ?{suffix}"
            ),
            (low.0, high.0),
        )?,
        ConversationId::Group(group) => q.exec_first(
            format!("SELECT id, last_seq FROM conversations WHERE group_id = ?{suffix}"),
            (group.0,),
        )?,
    };
    Ok(row)
}

/// The message `sender` stored under `client_msg_id`, if any.
pub(super) fn find_sent(
    q: &mut impl Queryable,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<Message>, Error> {
    type Row = (u64, u64, String, String, i64, Option<u64>, Option<u64>, Option<u64>);
    let row: Option<Row> = q.exec_first(
        "SELECT m.seq, m.sender_id, m.client_msg_id, m.body, m.sent_at_ms,
                c.user_low, c.user_high, c.group_id
         FROM messages m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.sender_id = ? AND m.client_msg_id = ?",
        (sender.0, client_msg_id),
    )?;
    row.map(|(seq, sender, id, body, at, low, high, group)| {
        let conversation = conversation_from_columns(low, high, group)?;
        Ok(message_from(conversation, (seq, sender, id, body, at)))
    })
    .transpose()
}

/// Raises `user`'s read cursor in conversation row `id` to at least `seq`.
pub(super) fn raise_cursor(q: &mut impl Queryable, user: UserId, id: u64, seq: u64) -> Result<(), Error> {
    q.exec_drop(
        "INSERT INTO read_cursors (user_id, conversation_id, read_seq) VALUES (?, ?, ?)
         ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
        (user.0, id, seq),
    )?;
    Ok(())
}

/// Up to `n` messages of conversation row `id` after `after`, ascending.
pub(super) fn messages_after(
    q: &mut impl Queryable,
    id: u64,
    conversation: ConversationId,
    after: u64,
    n: usize,
) -> Result<Vec<Message>, Error> {
    let rows: Vec<MessageRow> = q.exec(
        format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id = ? AND seq > ? ORDER BY seq ASC LIMIT ?"
        ),
        (id, after, n as u64),
    )?;
    Ok(rows.into_iter().map(|row| message_from(conversation, row)).collect())
}

/// Up to `n` messages of conversation row `id` before `before` and after `hidden`,
/// newest first.
pub(super) fn messages_before(
    q: &mut impl Queryable,
    id: u64,
    conversation: ConversationId,
    before: u64,
    hidden: u64,
    n: usize,
) -> Result<Vec<Message>, Error> {
    let rows: Vec<MessageRow> = q.exec(
        format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages \
             WHERE conversation_id = ? AND seq < ? AND seq > ? ORDER BY seq DESC LIMIT ?"
        ),
        (id, before, hidden, n as u64),
    )?;
    Ok(rows.into_iter().map(|row| message_from(conversation, row)).collect())
}

/// The user's conversations with their row ids and hidden prefixes, in the documented
/// order.
pub(super) fn conversation_states(q: &mut impl Queryable, user: UserId) -> Result<Vec<StateRow<u64>>, Error> {
    type Row = (u64, Option<u64>, Option<u64>, Option<u64>, u64, u64, u64, u8);
    let rows: Vec<Row> = q.exec(
        "SELECT c.id, c.user_low, c.user_high, c.group_id, c.last_seq,
                COALESCE(r.read_seq, 0), 0 AS hidden, 0 AS part
         FROM conversations c
         LEFT JOIN read_cursors r ON r.conversation_id = c.id AND r.user_id = ?
         WHERE c.user_low = ? OR c.user_high = ?
         UNION ALL
         SELECT c.id, c.user_low, c.user_high, c.group_id, c.last_seq,
                COALESCE(r.read_seq, 0), gm.visible_after_seq, 1 AS part
         FROM group_members gm
         JOIN conversations c ON c.group_id = gm.group_id
         LEFT JOIN read_cursors r ON r.conversation_id = c.id AND r.user_id = ?
         WHERE gm.user_id = ?
         ORDER BY 8, 1",
        (user.0, user.0, user.0, user.0, user.0),
    )?;
    rows.into_iter()
        .map(|(id, low, high, group, last_seq, read_seq, hidden, _)| {
            let state = ConversationState {
                conversation: conversation_from_columns(low, high, group)?,
                last_seq,
                read_seq: read_seq.min(last_seq),
            };
            Ok((id, state, hidden))
        })
        .collect()
}
