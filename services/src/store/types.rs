//! The records a [`Store`](super::Store) takes and returns.

use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};

/// A registered user, as anyone may see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Assigned at registration.
    pub id: UserId,
    /// The name as typed at registration; unique ignoring ASCII case.
    pub name: String,
    /// When the user registered, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// A user together with their password hash; only the login check needs this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user the hash belongs to.
    pub user: User,
    /// The argon2id PHC string stored at registration (see [`crate::auth`]).
    pub password_hash: String,
}

/// A session token to store. The store keeps only the token's hash: whoever reads the
/// database cannot resume anyone's session (see [`crate::session_token`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewToken {
    /// Whose session the token resumes.
    pub user: UserId,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// When the token stops working, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
    /// How many of the user's tokens to keep, this one included: the newest ones.
    pub keep: usize,
    /// SHA-256 of the password hash that the login issuing the token checked
    /// ([`password_check`]): the token is added only while the user's hash is still
    /// that one, so a login that raced a password change gets no token.
    pub password_check: [u8; 32],
}

/// SHA-256 of a stored password hash, as [`NewToken::password_check`] holds it.
pub fn password_check(password_hash: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(password_hash.as_bytes()).into()
}

/// A chat group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Assigned at creation.
    pub id: GroupId,
    /// The display name; not unique.
    pub name: String,
    /// The creator, or after the owner left, the longest-standing remaining member. When
    /// the last member leaves, the last owner stays recorded.
    pub owner: UserId,
    /// When the group was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// True when anyone may join; a private group is joined only by invitation.
    pub public: bool,
    /// Which messages a member may read.
    pub history: HistoryVisibility,
}

/// Which of a group's messages a member may read. Chosen at creation; it never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryVisibility {
    /// Messages stored after the member's latest join only: someone who leaves and
    /// joins again sees only what came after they came back.
    #[default]
    Joined,
    /// Every message of the group, from before the member joined too.
    Shared,
}

/// How a new group admits members and shows its history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupSettings {
    /// True when anyone may join; false (the default) when joining takes an invitation
    /// from a member.
    pub public: bool,
    /// Which messages members may read; [`HistoryVisibility::Joined`] by default.
    pub history: HistoryVisibility,
}

/// A member's invitation of a user into a group, good until it expires, the user joins,
/// or the member who made it leaves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invitation {
    /// The group.
    pub group: GroupId,
    /// The invited user.
    pub user: UserId,
    /// The member who invited them (the latest one, when several did).
    pub inviter: UserId,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The conversation it belongs to, normalised.
    pub conversation: ConversationId,
    /// Its place in the conversation: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// Who sent it.
    pub sender: UserId,
    /// The sender's id for it, unique per sender; makes retries idempotent.
    pub client_msg_id: String,
    /// The text.
    pub body: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub sent_at_ms: i64,
}

/// A message to store. The sender must come from the session, never from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// The session's user.
    pub sender: UserId,
    /// Where it goes; a one-to-one pair must include the sender.
    pub conversation: ConversationId,
    /// The client's id for the message (see [`crate::limits::check_client_msg_id`]).
    pub client_msg_id: &'a str,
    /// The text (see [`crate::limits::check_body`]).
    pub body: &'a str,
}

/// The outcome of [`Store::send`](super::Store::send).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message as stored, with its sequence number and time.
    pub message: Message,
    /// True when the sender had already stored a message with this client message id:
    /// `message` is that original and nothing new was stored.
    pub duplicate: bool,
}

/// Where a page of history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The newest messages.
    Latest,
    /// Messages with a sequence number below this one, the nearest first.
    Before(u64),
    /// Messages with a sequence number above this one, the nearest first.
    After(u64),
}

/// A page of messages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// For history, ascending sequence order; for sync, grouped by conversation, each in
    /// ascending sequence order.
    pub messages: Vec<Message>,
    /// True when more messages lie beyond this page: further back for
    /// [`Anchor::Latest`] and [`Anchor::Before`], further on for [`Anchor::After`] and
    /// for sync.
    pub has_more: bool,
}

/// Where one user stands in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationState {
    /// The conversation.
    pub conversation: ConversationId,
    /// The newest message's sequence number (0 when it has none).
    pub last_seq: u64,
    /// The highest sequence number the user acknowledged or sent; never above `last_seq`.
    pub read_seq: u64,
}

impl ConversationState {
    /// How many messages the user has not acknowledged yet.
    pub fn unread(&self) -> u64 {
        self.last_seq.saturating_sub(self.read_seq)
    }
}

/// The last sequence number a client holds for one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The conversation.
    pub conversation: ConversationId,
    /// The highest sequence number the client has.
    pub seq: u64,
}
