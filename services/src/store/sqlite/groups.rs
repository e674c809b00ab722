//! The group operations of [`Sqlite`](super::Sqlite): creating groups, membership and
//! invitations. Each function runs inside the caller's write or read transaction.

use rusqlite::{params, OptionalExtension, Transaction};

use super::queries::{
    conversation_row, group_from_row, is_member, raise_cursor, require_group, require_user, user_from_row,
    GROUP_COLUMNS,
};
use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::store::rules::{
    already_member, check_invitation, check_removal, hidden_on_join, history_to_column, invitation_expiry,
    member_or_hidden, no_group_row, not_a_member, not_a_member_to_remove,
};
use crate::store::{Error, Group, GroupSettings, Invitation, User};

pub(super) fn create(
    tx: &Transaction<'_>,
    owner: UserId,
    name: &str,
    settings: GroupSettings,
    created_at_ms: i64,
) -> Result<Group, Error> {
    require_user(tx, owner)?;
    tx.prepare_cached(
        "INSERT INTO chat_groups (name, owner_id, created_at_ms, is_public, shared_history)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        name,
        owner,
        created_at_ms,
        settings.public,
        history_to_column(settings.history)
    ])?;
    let id = GroupId(tx.last_insert_rowid() as u64);
    tx.prepare_cached("INSERT INTO group_members (group_id, user_id, joined_at_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![id, owner, created_at_ms])?;
    tx.prepare_cached("INSERT INTO conversations (group_id, last_seq) VALUES (?1, 0)")?.execute([id])?;
    Ok(Group {
        id,
        name: name.to_owned(),
        owner,
        created_at_ms,
        public: settings.public,
        history: settings.history,
    })
}

pub(super) fn join(tx: &Transaction<'_>, user: UserId, group: GroupId, now: i64) -> Result<Group, Error> {
    let found = require_group(tx, group)?;
    require_user(tx, user)?;
    if is_member(tx, user, group)? {
        return Err(already_member(user, group));
    }
    if !found.public {
        let expires: Option<i64> = tx
            .prepare_cached(
                "SELECT expires_at_ms FROM group_invitations WHERE group_id = ?1 AND user_id = ?2",
            )?
            .query_row(params![group, user], |row| row.get(0))
            .optional()?;
        check_invitation(group, expires, now)?;
        tx.prepare_cached("DELETE FROM group_invitations WHERE group_id = ?1 AND user_id = ?2")?
            .execute(params![group, user])?;
    }
    let (id, last_seq) =
        conversation_row(tx, ConversationId::Group(group))?.ok_or_else(|| no_group_row(group))?;
    let hidden = hidden_on_join(&found, last_seq);
    tx.prepare_cached(
        "INSERT INTO group_members (group_id, user_id, joined_at_ms, visible_after_seq)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![group, user, now, hidden])?;
    raise_cursor(tx, user, id, last_seq)?;
    Ok(found)
}

pub(super) fn leave(tx: &Transaction<'_>, user: UserId, group: GroupId) -> Result<(), Error> {
    let found = require_group(tx, group)?;
    if !drop_member(tx, &found, user)? {
        return Err(not_a_member(user, &found));
    }
    Ok(())
}

pub(super) fn invite(
    tx: &Transaction<'_>,
    inviter: UserId,
    group: GroupId,
    user: UserId,
    now: i64,
) -> Result<Invitation, Error> {
    let found = require_group(tx, group)?;
    if !is_member(tx, inviter, group)? {
        return Err(member_or_hidden(inviter, &found));
    }
    require_user(tx, user)?;
    if is_member(tx, user, group)? {
        return Err(already_member(user, group));
    }
    tx.prepare_cached("DELETE FROM group_invitations WHERE group_id = ?1 AND expires_at_ms <= ?2")?
        .execute(params![group, now])?;
    let others: usize = tx
        .prepare_cached("SELECT COUNT(*) FROM group_invitations WHERE group_id = ?1 AND user_id <> ?2")?
        .query_row(params![group, user], |row| row.get(0))?;
    let expires_at_ms = invitation_expiry(group, others, now)?;
    tx.prepare_cached(
        "INSERT INTO group_invitations (group_id, user_id, inviter_id, expires_at_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, user_id)
         DO UPDATE SET inviter_id = excluded.inviter_id, expires_at_ms = excluded.expires_at_ms",
    )?
    .execute(params![group, user, inviter, expires_at_ms])?;
    Ok(Invitation { group, user, inviter, expires_at_ms })
}

pub(super) fn remove_member(
    tx: &Transaction<'_>,
    owner: UserId,
    group: GroupId,
    member: UserId,
) -> Result<(), Error> {
    let found = require_group(tx, group)?;
    if !is_member(tx, owner, group)? {
        return Err(member_or_hidden(owner, &found));
    }
    check_removal(&found, owner, member)?;
    if !drop_member(tx, &found, member)? {
        return Err(not_a_member_to_remove(member, group));
    }
    Ok(())
}

pub(super) fn of_user(tx: &Transaction<'_>, user: UserId) -> Result<Vec<Group>, Error> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {GROUP_COLUMNS} FROM group_members gm
         JOIN chat_groups g ON g.id = gm.group_id
         WHERE gm.user_id = ?1 ORDER BY g.id"
    ))?;
    let rows = stmt.query_map([user], group_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn members(tx: &Transaction<'_>, group: GroupId) -> Result<Vec<User>, Error> {
    require_group(tx, group)?;
    let mut stmt = tx.prepare_cached(
        "SELECT u.id, u.name, u.created_at_ms FROM group_members gm
         JOIN users u ON u.id = gm.user_id
         WHERE gm.group_id = ?1 ORDER BY gm.id",
    )?;
    let rows = stmt.query_map([group], user_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Takes `user` out of `group`, withdraws the invitations they made into it, and hands
/// ownership on when they owned it. False when they were not a member.
fn drop_member(tx: &Transaction<'_>, group: &Group, user: UserId) -> Result<bool, Error> {
    let removed = tx
        .prepare_cached("DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2")?
        .execute(params![group.id, user])?;
    if removed == 0 {
        return Ok(false);
    }
    tx.prepare_cached("DELETE FROM group_invitations WHERE group_id = ?1 AND inviter_id = ?2")?
        .execute(params![group.id, user])?;
    if group.owner == user {
        let heir: Option<u64> = tx
            .prepare_cached("SELECT user_id FROM group_members WHERE group_id = ?1 ORDER BY id LIMIT 1")?
            .query_row([group.id], |row| row.get(0))
            .optional()?;
        if let Some(heir) = heir {
            tx.prepare_cached("UPDATE chat_groups SET owner_id = ?1 WHERE id = ?2")?
                .execute(params![heir, group.id])?;
        }
    }
    Ok(true)
}
