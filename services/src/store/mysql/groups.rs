//! The group operations of [`MySql`](super::MySql): creating groups, membership and
//! invitations. Each function runs inside the caller's transaction; those that change a
//! group first lock its row (`require_group(.., true)`), so that membership, ownership
//! and invitation changes to one group queue behind each other.

use mysql::prelude::Queryable;

use super::queries::{
    conversation_row, group_from, is_member, raise_cursor, require_group, require_user, GroupRow,
    GROUP_COLUMNS,
};
use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::store::rules::{
    already_member, check_invitation, check_removal, hidden_on_join, history_to_column, invitation_expiry,
    member_or_hidden, no_group_row, not_a_member, not_a_member_to_remove,
};
use crate::store::{Error, Group, GroupSettings, Invitation};

pub(super) fn create(
    q: &mut impl Queryable,
    owner: UserId,
    name: &str,
    settings: GroupSettings,
    created_at_ms: i64,
) -> Result<Group, Error> {
    require_user(q, owner)?;
    let shared = history_to_column(settings.history);
    let id = q
        .exec_iter(
            "INSERT INTO chat_groups (name, owner_id, created_at_ms, is_public, shared_history)
             VALUES (?, ?, ?, ?, ?)",
            (name, owner.0, created_at_ms, settings.public, shared),
        )?
        .last_insert_id()
        .ok_or_else(|| Error::Corrupt("no id for the new group".into()))?;
    q.exec_drop(
        "INSERT INTO group_members (group_id, user_id, joined_at_ms) VALUES (?, ?, ?)",
        (id, owner.0, created_at_ms),
    )?;
    q.exec_drop("INSERT INTO conversations (group_id, last_seq) VALUES (?, 0)", (id,))?;
    Ok(Group {
        id: GroupId(id),
        name: name.to_owned(),
        owner,
        created_at_ms,
        public: settings.public,
        history: settings.history,
    })
}

pub(super) fn join(q: &mut impl Queryable, user: UserId, group: GroupId, now: i64) -> Result<Group, Error> {
    let found = require_group(q, group, true)?;
    require_user(q, user)?;
    if is_member(q, user, group)? {
        return Err(already_member(user, group));
    }
    if !found.public {
        let expires: Option<i64> = q.exec_first(
            "SELECT expires_at_ms FROM group_invitations WHERE group_id = ? AND user_id = ?",
            (group.0, user.0),
        )?;
        check_invitation(group, expires, now)?;
        q.exec_drop("DELETE FROM group_invitations WHERE group_id = ? AND user_id = ?", (group.0, user.0))?;
    }
    // A message stored while this runs gets a number above `last_seq`, so the new
    // member sees it: it came after the join began.
    let (id, last_seq) =
        conversation_row(q, ConversationId::Group(group), false)?.ok_or_else(|| no_group_row(group))?;
    let hidden = hidden_on_join(&found, last_seq);
    q.exec_drop(
        "INSERT INTO group_members (group_id, user_id, joined_at_ms, visible_after_seq) VALUES (?, ?, ?, ?)",
        (group.0, user.0, now, hidden),
    )?;
    raise_cursor(q, user, id, last_seq)?;
    Ok(found)
}

pub(super) fn leave(q: &mut impl Queryable, user: UserId, group: GroupId) -> Result<(), Error> {
    let found = require_group(q, group, true)?;
    if !drop_member(q, &found, user)? {
        return Err(not_a_member(user, &found));
    }
    Ok(())
}

pub(super) fn invite(
    q: &mut impl Queryable,
    inviter: UserId,
    group: GroupId,
    user: UserId,
    now: i64,
) -> Result<Invitation, Error> {
    let found = require_group(q, group, true)?;
    if !is_member(q, inviter, group)? {
        return Err(member_or_hidden(inviter, &found));
    }
    require_user(q, user)?;
    if is_member(q, user, group)? {
        return Err(already_member(user, group));
    }
    q.exec_drop("DELETE FROM group_invitations WHERE group_id = ? AND expires_at_ms <= ?", (group.0, now))?;
    let others: Option<u64> = q.exec_first(
        "SELECT COUNT(*) FROM group_invitations WHERE group_id = ? AND user_id <> ?",
        (group.0, user.0),
    )?;
    let others = usize::try_from(others.unwrap_or(0)).unwrap_or(usize::MAX);
    let expires_at_ms = invitation_expiry(group, others, now)?;
    q.exec_drop(
        "INSERT INTO group_invitations (group_id, user_id, inviter_id, expires_at_ms) VALUES (?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE inviter_id = VALUES(inviter_id), expires_at_ms = VALUES(expires_at_ms)",
        (group.0, user.0, inviter.0, expires_at_ms),
    )?;
    Ok(Invitation { group, user, inviter, expires_at_ms })
}

pub(super) fn remove_member(
    q: &mut impl Queryable,
    owner: UserId,
    group: GroupId,
    member: UserId,
) -> Result<(), Error> {
    let found = require_group(q, group, true)?;
    if !is_member(q, owner, group)? {
        return Err(member_or_hidden(owner, &found));
    }
    check_removal(&found, owner, member)?;
    if !drop_member(q, &found, member)? {
        return Err(not_a_member_to_remove(member, group));
    }
    Ok(())
}

pub(super) fn of_user(q: &mut impl Queryable, user: UserId) -> Result<Vec<Group>, Error> {
    let rows: Vec<GroupRow> = q.exec(
        format!(
            "SELECT {GROUP_COLUMNS} FROM group_members gm
             JOIN chat_groups g ON g.id = gm.group_id
             WHERE gm.user_id = ? ORDER BY g.id"
        ),
        (user.0,),
    )?;
    Ok(rows.into_iter().map(group_from).collect())
}

/// Takes `user` out of `group`, withdraws the invitations they made into it, and hands
/// ownership on when they owned it. False when they were not a member.
fn drop_member(q: &mut impl Queryable, group: &Group, user: UserId) -> Result<bool, Error> {
    let removed = q
        .exec_iter("DELETE FROM group_members WHERE group_id = ? AND user_id = ?", (group.id.0, user.0))?
        .affected_rows();
    if removed == 0 {
        return Ok(false);
    }
    q.exec_drop("DELETE FROM group_invitations WHERE group_id = ? AND inviter_id = ?", (group.id.0, user.0))?;
    if group.owner == user {
        let heir: Option<u64> = q.exec_first(
            "SELECT user_id FROM group_members WHERE group_id = ? ORDER BY id LIMIT 1",
            (group.id.0,),
        )?;
        if let Some(heir) = heir {
            q.exec_drop("UPDATE chat_groups SET owner_id = ? WHERE id = ?", (heir, group.id.0))?;
        }
    }
    Ok(true)
}
