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
//! Each backend keeps these rules with its own SQL; what the rules say about the rows
//! read, and the error each broken rule answers with, is written once in `rules.rs`
//! (and paging, the same for both, in `paging.rs`).
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
mod paging;
mod rules;
mod schema;
pub mod sqlite;
mod types;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};

pub use self::error::Error;
pub use self::mysql::MySql;
pub(crate) use self::rules::member_or_hidden;
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
