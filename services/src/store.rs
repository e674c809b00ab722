//! Durable state of the chat: users, friends, groups, messages and read cursors.
//!
//! [`Store`] is the seam; [`Sqlite`] (one file, for the standalone mode) and [`MySql`]
//! (a connection pool, for the cluster) implement it with the same behaviour, checked by
//! one shared test suite. Both create and migrate their schema when opened (see
//! `docs/SCHEMA.md`), use bound parameters only, and check every field against
//! [`crate::limits`] before storing it.
//!
//! The rules the stores enforce, so that every service gets them for free:
//!
//! * names are unique ignoring ASCII case;
//! * friendship is symmetric: adding or removing it changes both sides at once;
//! * only participants send to or read a conversation: the two users of a one-to-one
//!   pair, or the current members of a group;
//! * a group is private unless created public: joining it takes an invitation from a
//!   member, and to anyone outside it a private group answers exactly as a missing one
//!   does (`NotFound`), so its id reveals nothing;
//! * a member of a group whose history is [`HistoryVisibility::Joined`] reads only the
//!   messages stored after their latest join, in history and in sync alike;
//! * each conversation's sequence numbers are assigned in the transaction that stores the
//!   message, so they are 1, 2, 3, ... without gaps even under concurrent writers from
//!   several processes;
//! * a message is identified by its sender and client message id: storing it again
//!   returns the original;
//! * sending moves the sender's read cursor to the new message, and joining a group moves
//!   the new member's cursor to the group's newest message, so neither counts as unread.
//!
//! ```
//! use services::store::{Anchor, NewMessage, Sqlite, Store};
//! use services::ConversationId;
//!
//! # fn main() -> Result<(), services::store::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = Sqlite::open(dir.path().join("chat.db"))?;
//! let alice = store.create_user("alice", "$argon2id$...")?;
//! let bob = store.create_user("bob", "$argon2id$...")?;
//! let conversation = ConversationId::direct(alice.id, bob.id);
//! let sent = store.send(&NewMessage {
//!     sender: alice.id,
//!     conversation,
//!     client_msg_id: "m-1",
//!     body: "hi bob",
//! })?;
//! assert_eq!(sent.message.seq, 1);
//! let page = store.history(bob.id, conversation, Anchor::Latest, 50)?;
//! assert_eq!(page.messages[0].body, "hi bob");
//! # Ok(()) }
//! ```

mod error;
pub mod mysql;
mod schema;
pub mod sqlite;
mod types;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};

pub use self::error::Error;
pub use self::mysql::MySql;
pub use self::schema::VERSION as SCHEMA_VERSION;
pub use self::sqlite::Sqlite;
pub use self::types::password_check;
pub use self::types::{
    Anchor, ConversationState, Credentials, Cursor, Group, GroupSettings, HistoryVisibility, Invitation,
    Message, NewMessage, NewToken, Page, Sent, User,
};

/// Durable chat state. Every method is one transaction (or one read); implementations are
/// shared between worker threads behind an `Arc<dyn Store>`.
pub trait Store: Send + Sync {
    /// Registers a user under `name` with an already computed password hash.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `name` breaks [`crate::limits::check_name`] or the
    /// hash is empty, [`Error::AlreadyExists`] when the name is taken ignoring ASCII case.
    fn create_user(&self, name: &str, password_hash: &str) -> Result<User, Error>;

    /// The user registered under `name` (ignoring ASCII case) with their password hash.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    fn credentials(&self, name: &str) -> Result<Credentials, Error>;

    /// Replaces `user`'s password hash and, in the same transaction, revokes every
    /// session token of theirs, so that no session opened before the change can resume.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when the hash is empty, [`Error::NotFound`] when there
    /// is no such user.
    fn set_password_hash(&self, user: UserId, password_hash: &str) -> Result<(), Error>;

    /// Stores a session token's hash, then deletes the user's expired tokens and all but
    /// the newest [`NewToken::keep`] of the others (at least this one is kept); all in
    /// one transaction that first checks, with the user's row locked, that their
    /// password hash is still the one [`NewToken::password_check`] names.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user, [`Error::PermissionDenied`] when
    /// the password changed since the login checked it.
    fn add_session_token(&self, token: &NewToken) -> Result<(), Error>;

    /// The user whose session token hashes to `hash`. An expired token is deleted and
    /// answered as unknown.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when no unexpired token has this hash (never issued, expired,
    /// revoked or pushed out by newer ones).
    fn session_token_user(&self, hash: &[u8; 32]) -> Result<User, Error>;

    /// Deletes the session token that hashes to `hash`; false when there was none.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn revoke_session_token(&self, hash: &[u8; 32]) -> Result<bool, Error>;

    /// The user with this id.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    fn user(&self, id: UserId) -> Result<User, Error>;

    /// The user registered under `name`, ignoring ASCII case.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such user.
    fn user_by_name(&self, name: &str) -> Result<User, Error>;

    /// Makes `user` and `friend` friends of each other, and returns `friend`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when they are the same user, [`Error::NotFound`] when
    /// either does not exist, [`Error::AlreadyExists`] when they are friends already.
    fn add_friend(&self, user: UserId, friend: UserId) -> Result<User, Error>;

    /// Ends the friendship between `user` and `friend`, on both sides.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when they are not friends.
    fn remove_friend(&self, user: UserId, friend: UserId) -> Result<(), Error>;

    /// The friends of `user`, ordered by name ignoring case.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn friends(&self, user: UserId) -> Result<Vec<User>, Error>;

    /// Creates a group owned by `owner`, who becomes its first member.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when `name` breaks [`crate::limits::check_group_name`],
    /// [`Error::NotFound`] when `owner` does not exist.
    fn create_group(&self, owner: UserId, name: &str, settings: GroupSettings) -> Result<Group, Error>;

    /// The group with this id. This does not check who asks.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such group.
    fn group(&self, id: GroupId) -> Result<Group, Error>;

    /// Adds `user` to `group`. Messages already in the group count as read for them. A
    /// private group needs an invitation for `user` that has not expired; joining uses
    /// it up. With [`HistoryVisibility::Joined`] the user reads from this join on.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the user or group does not exist, or the group is
    /// private and holds no invitation for the user (the same answer as for a missing
    /// group), [`Error::AlreadyExists`] when the user is a member already.
    fn join_group(&self, user: UserId, group: GroupId) -> Result<Group, Error>;

    /// Removes `user` from `group`. When the owner leaves, the longest-standing remaining
    /// member becomes owner. Invitations `user` made into the group are withdrawn.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the group does not exist or `user` is not a member.
    fn leave_group(&self, user: UserId, group: GroupId) -> Result<(), Error>;

    /// Lets `user` join `group` (see [`join_group`](Store::join_group)): `inviter`, a
    /// member, invites them for [`crate::limits::INVITATION_TTL_MS`]. Inviting someone
    /// already invited renews the invitation in the inviter's name. A group holds at most
    /// [`crate::limits::GROUP_INVITATIONS_MAX`] invitations that have not expired.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the group does not exist, or is private and `inviter` is
    /// not a member, or `user` does not exist; [`Error::PermissionDenied`] when the group
    /// is public and `inviter` is not a member; [`Error::AlreadyExists`] when `user` is a
    /// member already; [`Error::ResourceExhausted`] when the group's invitations are at
    /// their bound.
    fn invite(&self, inviter: UserId, group: GroupId, user: UserId) -> Result<Invitation, Error>;

    /// `owner` removes `member` from `group`, as if `member` had left (their invitations
    /// are withdrawn too). They may rejoin only as anyone else may: a public group
    /// freely, a private one with a new invitation.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when the group does not exist, or is private and `owner` is not
    /// a member, or `member` is not a member; [`Error::PermissionDenied`] when `owner` is
    /// not the group's owner; [`Error::InvalidArgument`] when the owner names themself
    /// (they leave instead).
    fn remove_member(&self, owner: UserId, group: GroupId, member: UserId) -> Result<(), Error>;

    /// The groups `user` belongs to, ordered by id.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn groups_of(&self, user: UserId) -> Result<Vec<Group>, Error>;

    /// The members of `group` in the order they joined. This does not check who asks:
    /// callers acting for a client check membership first, and answer
    /// a non-member of a private group as if it did not exist.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such group.
    fn group_members(&self, group: GroupId) -> Result<Vec<User>, Error>;

    /// The ids of the members of `group`, in the order they joined: what fan-out
    /// needs, without the names. This does not check who asks.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] when there is no such group.
    fn group_member_ids(&self, group: GroupId) -> Result<Vec<UserId>, Error> {
        Ok(self.group_members(group)?.into_iter().map(|u| u.id).collect())
    }

    /// Stores a message with the next sequence number of its conversation, or returns the
    /// message already stored under the same sender and client message id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a body or client message id that breaks a limit or
    /// a message to oneself; [`Error::PermissionDenied`] when the sender is not in the
    /// one-to-one pair or not a member of the group; [`Error::NotFound`] when the other
    /// user or the group does not exist; [`Error::AlreadyExists`] when the client message
    /// id was already used by this sender for a different conversation.
    fn send(&self, message: &NewMessage<'_>) -> Result<Sent, Error>;

    /// A page of at most `limit` messages of a conversation, in ascending sequence order
    /// (`limit` is read through [`crate::limits::page_size`] with the history bounds).
    /// In a group with [`HistoryVisibility::Joined`] it holds only messages stored after
    /// the user's latest join.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] when `user` is not a participant (of a one-to-one
    /// pair or a public group), [`Error::NotFound`] when the group does not exist or is
    /// private and `user` is not a member.
    fn history(
        &self,
        user: UserId,
        conversation: ConversationId,
        anchor: Anchor,
        limit: usize,
    ) -> Result<Page, Error>;

    /// Moves `user`'s read cursor in `conversation` up to `seq` (never backwards, never
    /// past the newest message) and returns the cursor.
    ///
    /// # Errors
    ///
    /// [`Error::PermissionDenied`] when `user` is not a participant, [`Error::NotFound`]
    /// when the group does not exist.
    fn ack(&self, user: UserId, conversation: ConversationId, seq: u64) -> Result<u64, Error>;

    /// Every conversation `user` is in with its newest sequence number and the user's
    /// read cursor: one-to-one conversations with at least one message first, then the
    /// user's groups, each part in order of creation.
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn conversations(&self, user: UserId) -> Result<Vec<ConversationState>, Error>;

    /// The messages `user` has not seen, across all their conversations, at most `limit`
    /// of them (read through [`crate::limits::page_size`] with the sync bounds). For a
    /// conversation listed in `cursors` it starts after the cursor's sequence number, for
    /// the others after the user's read cursor; never before the user's latest join in
    /// a group with [`HistoryVisibility::Joined`]. Cursors for conversations the user is
    /// not in are ignored. Conversations come in the order of
    /// [`conversations`](Store::conversations).
    ///
    /// # Errors
    ///
    /// Only backend failures.
    fn sync(&self, user: UserId, cursors: &[Cursor], limit: usize) -> Result<Page, Error>;
}

/// Milliseconds since the Unix epoch, the time stamp of every stored row.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The form of a name that uniqueness and look-ups use: names are ASCII, so lowercasing
/// them is exact and does not depend on database collations.
pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Checks a new message against the limits and the rules that need no stored data, and
/// returns its conversation normalised.
pub(crate) fn check_new_message(message: &NewMessage<'_>) -> Result<ConversationId, Error> {
    crate::limits::check_client_msg_id(message.client_msg_id)?;
    crate::limits::check_body(message.body)?;
    let conversation = message.conversation.normalized();
    if let ConversationId::Direct { low, high } = conversation {
        if low == high {
            return Err(Error::InvalidArgument("you cannot send a message to yourself".into()));
        }
        if message.sender != low && message.sender != high {
            return Err(not_participant(message.sender, conversation));
        }
    }
    Ok(conversation)
}

/// The answer for a session token that does not (or no longer) open a session.
/// The error for a token whose login checked a password that has changed since.
pub(crate) fn password_changed() -> Error {
    Error::PermissionDenied("the password changed since this login checked it; log in again".into())
}

pub(crate) fn unknown_token() -> Error {
    Error::NotFound("the session token is unknown, expired or revoked".into())
}

/// The error for `user`, not a member, asking about `group`: PermissionDenied for a
/// public group, and for a private one the same NotFound as for a missing group.
pub(crate) fn member_or_hidden(user: UserId, group: &Group) -> Error {
    if group.public {
        Error::PermissionDenied(format!("user {user} is not a member of group {}", group.id))
    } else {
        Error::no_group(group.id)
    }
}

/// The answer to a non-member leaving: a private group stays hidden.
pub(crate) fn not_a_member(user: UserId, group: &Group) -> Error {
    if group.public {
        Error::NotFound(format!("user {user} is not a member of group {}", group.id))
    } else {
        Error::no_group(group.id)
    }
}

/// The rules of a removal that need no more than the group: only the owner removes,
/// and not themself.
pub(crate) fn check_removal(group: &Group, owner: UserId, member: UserId) -> Result<(), Error> {
    if group.owner != owner {
        return Err(Error::PermissionDenied(format!(
            "only the owner of group {} may remove members",
            group.id
        )));
    }
    if member == owner {
        return Err(Error::InvalidArgument(
            "the owner cannot remove themself; leave the group instead".into(),
        ));
    }
    Ok(())
}

/// The answer when a group's invitations are at their bound.
pub(crate) fn too_many_invitations(group: GroupId) -> Error {
    Error::ResourceExhausted(format!(
        "group {group} has {} invitations waiting, the most it may have; wait for some to be used or expire",
        crate::limits::GROUP_INVITATIONS_MAX
    ))
}

/// The error for a user outside a one-to-one conversation.
pub(crate) fn not_participant(user: UserId, conversation: ConversationId) -> Error {
    match conversation {
        ConversationId::Group(group) => {
            Error::PermissionDenied(format!("user {user} is not a member of group {group}"))
        }
        ConversationId::Direct { .. } => Error::PermissionDenied(format!(
            "user {user} is not a participant of conversation {conversation}"
        )),
    }
}

/// The conversation a `conversations` row names: a pair, or a group, never both.
pub(crate) fn conversation_from_columns(
    low: Option<u64>,
    high: Option<u64>,
    group: Option<u64>,
) -> Result<ConversationId, Error> {
    match (low, high, group) {
        (Some(low), Some(high), None) => Ok(ConversationId::Direct { low: UserId(low), high: UserId(high) }),
        (None, None, Some(group)) => Ok(ConversationId::Group(GroupId(group))),
        other => {
            Err(Error::Corrupt(format!("conversation row with (user_low, user_high, group_id) = {other:?}")))
        }
    }
}

/// The answer to a send whose client message id is already stored: the original when it
/// went to the same conversation, an error when the id was used for another one.
pub(crate) fn duplicate(original: Message, conversation: ConversationId) -> Result<Sent, Error> {
    if original.conversation == conversation {
        Ok(Sent { message: original, duplicate: true })
    } else {
        Err(Error::AlreadyExists(format!(
            "client message id {:?} was already used for a message to {}",
            original.client_msg_id, original.conversation
        )))
    }
}

/// The page for a history query whose rows came back nearest-first, with one row more
/// than `limit` fetched to learn whether more exist. Puts the page in ascending order.
pub(crate) fn history_page(mut rows: Vec<Message>, limit: usize, anchor: Anchor) -> Page {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    if !matches!(anchor, Anchor::After(_)) {
        rows.reverse();
    }
    Page { messages: rows, has_more }
}

/// One of a user's conversations as the backends read it: a backend key, the state, and
/// the highest sequence number hidden from the user (their join into a group with
/// [`HistoryVisibility::Joined`]; 0 when everything is visible).
pub(crate) type StateRow<K> = (K, ConversationState, u64);

/// The sync algorithm shared by the backends. `rows` are the user's conversations in
/// answer order; `fetch(key, conversation, after, n)` returns up to `n` messages with a
/// sequence number above `after`, ascending.
pub(crate) fn collect_sync<K: Copy>(
    rows: &[StateRow<K>],
    cursors: &[Cursor],
    limit: usize,
    mut fetch: impl FnMut(K, ConversationId, u64, usize) -> Result<Vec<Message>, Error>,
) -> Result<Page, Error> {
    let mut remaining =
        crate::limits::page_size(limit, crate::limits::SYNC_PAGE_DEFAULT, crate::limits::SYNC_PAGE_MAX);
    let mut page = Page::default();
    for &(key, state, hidden) in rows {
        let after = cursors
            .iter()
            .rev()
            .find(|c| c.conversation.normalized() == state.conversation)
            .map_or(state.read_seq, |c| c.seq)
            .max(hidden);
        if state.last_seq <= after {
            continue;
        }
        // Sequence numbers have no gaps, so the number still missing is exact.
        let missing = state.last_seq - after;
        if remaining == 0 {
            page.has_more = true;
            break;
        }
        let take = usize::try_from(missing).unwrap_or(usize::MAX).min(remaining);
        let got = fetch(key, state.conversation, after, take)?;
        remaining -= got.len();
        let short = (got.len() as u64) < missing;
        page.messages.extend(got);
        if short {
            page.has_more = true;
            break;
        }
    }
    Ok(page)
}
