//! The rules both SQL stores keep, written once: the checks that need no more than the
//! request and the rows a backend has read, and the error each broken rule answers with.
//!
//! A backend reads and writes its rows with its own SQL and asks these functions what
//! the rows mean, so [`Sqlite`](super::Sqlite) and [`MySql`](super::MySql) cannot drift
//! apart in a rule or in the words of its error.

use crate::conversation::ConversationId;
use crate::ids::{GroupId, UserId};
use crate::limits;

use super::{password_check, Error, Group, HistoryVisibility, Message, NewMessage, NewToken, Sent, User};

// Users and their passwords.

/// The form of a name that uniqueness and look-ups use: names are ASCII, so lowercasing
/// them is exact and does not depend on database collations.
pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Checks a registration: the name against the limits, and that there is a hash.
pub(crate) fn check_new_user(name: &str, password_hash: &str) -> Result<(), Error> {
    limits::check_name(name)?;
    check_password_hash(password_hash)
}

/// Checks that a password hash to store is not empty.
pub(crate) fn check_password_hash(password_hash: &str) -> Result<(), Error> {
    if password_hash.is_empty() {
        return Err(Error::InvalidArgument("password hash is empty".into()));
    }
    Ok(())
}

/// The answer to a registration whose name is taken, ignoring ASCII case.
pub(crate) fn name_taken(name: &str) -> Error {
    Error::AlreadyExists(format!("the name {name:?} is already taken"))
}

/// The answer to a look-up of a name nobody registered.
pub(crate) fn no_user_named(name: &str) -> Error {
    Error::NotFound(format!("no user named {name:?}"))
}

/// The answer for a user id that names nobody.
pub(crate) fn no_user(id: UserId) -> Error {
    Error::NotFound(format!("user {id} does not exist"))
}

// Session tokens.

/// Checks, with the user's row locked, that their password hash (`current`, `None` for
/// a user without a row) is still the one the login issuing `token` checked.
pub(crate) fn check_password_unchanged(current: Option<&str>, token: &NewToken) -> Result<(), Error> {
    if current.map(password_check) != Some(token.password_check) {
        return Err(password_changed());
    }
    Ok(())
}

/// How many of the user's newest tokens adding `token` keeps: at least this one.
pub(crate) fn tokens_kept(token: &NewToken) -> usize {
    token.keep.max(1)
}

/// The user of a token found with its expiry (`None`: no token has the hash). An expired
/// token is deleted with `revoke` and answered as unknown.
pub(crate) fn token_user(
    found: Option<(User, i64)>,
    now_ms: i64,
    revoke: impl FnOnce() -> Result<bool, Error>,
) -> Result<User, Error> {
    match found {
        Some((user, expires_at_ms)) if expires_at_ms > now_ms => Ok(user),
        Some(_) => {
            revoke()?;
            Err(unknown_token())
        }
        None => Err(unknown_token()),
    }
}

/// The error for a token whose login checked a password that has changed since.
pub(crate) fn password_changed() -> Error {
    Error::PermissionDenied("the password changed since this login checked it; log in again".into())
}

/// The answer for a session token that does not (or no longer) open a session.
pub(crate) fn unknown_token() -> Error {
    Error::NotFound("the session token is unknown, expired or revoked".into())
}

// Friends.

/// Checks that a user befriends someone else.
pub(crate) fn check_friend(user: UserId, friend: UserId) -> Result<(), Error> {
    if user == friend {
        return Err(Error::InvalidArgument("you cannot add yourself as a friend".into()));
    }
    Ok(())
}

/// The answer to befriending a friend.
pub(crate) fn already_friends(user: UserId, friend: UserId) -> Error {
    Error::AlreadyExists(format!("user {user} and user {friend} are already friends"))
}

/// The answer to ending a friendship that does not exist.
pub(crate) fn not_friends(user: UserId, friend: UserId) -> Error {
    Error::NotFound(format!("user {friend} is not a friend of user {user}"))
}

// Groups: membership and invitations.

/// The value of a group's `shared_history` column for `history`.
pub(crate) fn history_to_column(history: HistoryVisibility) -> bool {
    history == HistoryVisibility::Shared
}

/// The visibility a group's `shared_history` column stores.
pub(crate) fn history_from_column(shared: bool) -> HistoryVisibility {
    if shared {
        HistoryVisibility::Shared
    } else {
        HistoryVisibility::Joined
    }
}

/// The answer to joining, or being invited into, a group one is a member of.
pub(crate) fn already_member(user: UserId, group: GroupId) -> Error {
    Error::AlreadyExists(format!("user {user} is already a member of group {group}"))
}

/// Checks that a user may join private group `group`: they hold an invitation
/// (expiring at `expires_at_ms`) that has not expired by `now`. Without one the group
/// answers as a missing one does.
pub(crate) fn check_invitation(group: GroupId, expires_at_ms: Option<i64>, now: i64) -> Result<(), Error> {
    if expires_at_ms.is_none_or(|at| at <= now) {
        return Err(Error::no_group(group));
    }
    Ok(())
}

/// The highest sequence number hidden from a member who joins `group` now, when its
/// newest message is `last_seq`.
pub(crate) fn hidden_on_join(group: &Group, last_seq: u64) -> u64 {
    match group.history {
        HistoryVisibility::Joined => last_seq,
        HistoryVisibility::Shared => 0,
    }
}

/// When a new invitation into `group` expires, made at `now` while the group holds
/// `others` unexpired invitations for other users.
///
/// # Errors
///
/// [`Error::ResourceExhausted`] when those are at [`limits::GROUP_INVITATIONS_MAX`].
pub(crate) fn invitation_expiry(group: GroupId, others: usize, now: i64) -> Result<i64, Error> {
    if others >= limits::GROUP_INVITATIONS_MAX {
        return Err(Error::ResourceExhausted(format!(
            "group {group} has {} invitations waiting, the most it may have; wait for some to be used or expire",
            limits::GROUP_INVITATIONS_MAX
        )));
    }
    Ok(now.saturating_add(limits::INVITATION_TTL_MS))
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

/// The answer to the owner removing someone who is not a member.
pub(crate) fn not_a_member_to_remove(member: UserId, group: GroupId) -> Error {
    Error::NotFound(format!("user {member} is not a member of group {group}"))
}

// Conversations and messages.

/// Checks a new message against the limits and the rules that need no stored data, and
/// returns its conversation normalised.
pub(crate) fn check_new_message(message: &NewMessage<'_>) -> Result<ConversationId, Error> {
    limits::check_client_msg_id(message.client_msg_id)?;
    limits::check_body(message.body)?;
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

/// Whether `user` may read and write `conversation` (normalised), and if so the highest
/// sequence number hidden from them: in a group with [`HistoryVisibility::Joined`], the
/// group's newest message when they last joined; otherwise 0. `group_membership` reads a
/// group (failing when it does not exist) and the hidden number of `user` in it (`None`
/// when they are not a member).
pub(crate) fn check_participant(
    user: UserId,
    conversation: ConversationId,
    group_membership: impl FnOnce(GroupId) -> Result<(Group, Option<u64>), Error>,
) -> Result<u64, Error> {
    match conversation {
        ConversationId::Direct { low, high } if low == user || high == user => Ok(0),
        ConversationId::Direct { .. } => Err(not_participant(user, conversation)),
        ConversationId::Group(group) => {
            let (found, hidden) = group_membership(group)?;
            hidden.ok_or_else(|| member_or_hidden(user, &found))
        }
    }
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

/// The error for a conversation a send found without its row: every group has one from
/// its creation, and a pair gets one in the transaction of its first message.
pub(crate) fn no_conversation_row(conversation: ConversationId) -> Error {
    Error::Corrupt(format!("{conversation} has no conversation row"))
}

/// The error for a group found without its conversation row.
pub(crate) fn no_group_row(group: GroupId) -> Error {
    Error::Corrupt(format!("group {group} has no conversation row"))
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

/// The answer to a send stored now, as number `seq` of `conversation` (normalised).
pub(crate) fn stored(
    message: &NewMessage<'_>,
    conversation: ConversationId,
    seq: u64,
    sent_at_ms: i64,
) -> Sent {
    Sent {
        message: Message {
            conversation,
            seq,
            sender: message.sender,
            client_msg_id: message.client_msg_id.to_owned(),
            body: message.body.to_owned(),
            sent_at_ms,
        },
        duplicate: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn group(public: bool, history: HistoryVisibility) -> Group {
        Group { id: GroupId(7), name: "g".into(), owner: UserId(1), created_at_ms: 0, public, history }
    }

    #[test]
    fn an_invitation_admits_until_the_moment_it_expires() {
        assert!(check_invitation(GroupId(7), Some(101), 100).is_ok());
        for expires in [Some(100), Some(99), None] {
            let err = check_invitation(GroupId(7), expires, 100).unwrap_err();
            assert_eq!(err.to_string(), Error::no_group(GroupId(7)).to_string(), "{expires:?}");
        }
    }

    #[test]
    fn invitations_stop_at_their_bound_and_last_their_ttl() {
        let last = limits::GROUP_INVITATIONS_MAX - 1;
        assert_eq!(invitation_expiry(GroupId(7), last, 5).unwrap(), 5 + limits::INVITATION_TTL_MS);
        let full = invitation_expiry(GroupId(7), last + 1, 5).unwrap_err();
        assert!(matches!(full, Error::ResourceExhausted(_)), "{full}");
        assert_eq!(invitation_expiry(GroupId(7), 0, i64::MAX).unwrap(), i64::MAX, "saturates");
    }

    #[test]
    fn a_joiner_sees_only_what_the_history_setting_shows() {
        assert_eq!(hidden_on_join(&group(true, HistoryVisibility::Joined), 42), 42);
        assert_eq!(hidden_on_join(&group(true, HistoryVisibility::Shared), 42), 0);
        for history in [HistoryVisibility::Joined, HistoryVisibility::Shared] {
            assert_eq!(history_from_column(history_to_column(history)), history);
        }
    }

    #[test]
    fn a_private_group_answers_a_stranger_as_a_missing_one() {
        let hidden = member_or_hidden(UserId(2), &group(false, HistoryVisibility::Joined));
        assert_eq!(hidden.to_string(), Error::no_group(GroupId(7)).to_string());
        let public = member_or_hidden(UserId(2), &group(true, HistoryVisibility::Joined));
        assert!(matches!(public, Error::PermissionDenied(_)), "{public}");
        let outsider = check_participant(UserId(2), ConversationId::Group(GroupId(7)), |_| {
            Ok((group(false, HistoryVisibility::Joined), None))
        });
        assert_eq!(outsider.unwrap_err().to_string(), Error::no_group(GroupId(7)).to_string());
    }

    #[test]
    fn an_expired_token_is_revoked_and_unknown() {
        let user = User { id: UserId(1), name: "ann".into(), created_at_ms: 0 };
        let mut revoked = false;
        let err = token_user(Some((user.clone(), 100)), 100, || {
            revoked = true;
            Ok(true)
        })
        .unwrap_err();
        assert!(revoked);
        assert_eq!(err.to_string(), unknown_token().to_string());
        let live = token_user(Some((user.clone(), 101)), 100, || panic!("a live token is kept"));
        assert_eq!(live.unwrap(), user);
    }
}
