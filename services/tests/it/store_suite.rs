//! The behaviour every [`Store`] must have. Each case is a function of a [`Fixture`];
//! `store_suite!(fixture_fn)` turns every case into a `#[test]` for one implementation.

use services::limits;
use services::store::{
    Anchor, Cursor, Error, Group, GroupSettings, HistoryVisibility, NewMessage, Page, Store, User,
};
use services::{ConversationId, GroupId, UserId};

// The cases, by subject; the helpers below are shared by all of them.
mod accounts;
mod private_groups;
mod reading;
mod sending;
mod social;
mod tokens;

pub use self::accounts::*;
pub use self::private_groups::*;
pub use self::reading::*;
pub use self::sending::*;
pub use self::social::*;
pub use self::tokens::*;

/// A store under test, in a database of its own.
pub trait Fixture: Sync {
    /// The store the case works with.
    fn store(&self) -> &dyn Store;
    /// A second, independent handle on the same database, as another process (or a
    /// restarted one) would open it.
    fn reopen(&self) -> Box<dyn Store>;
    /// Runs one SQL statement on the database directly, as an operator would (the
    /// cases use it to move time stamps into the past).
    fn execute(&self, sql: &str);
}

/// Generates one `#[test]` per case, each with a fresh fixture from `$fixture()`.
macro_rules! store_suite {
    ($fixture:path) => {
        store_suite!(@cases $fixture;
            users_are_registered_and_found,
            names_are_unique_ignoring_case,
            names_are_checked_against_the_limits,
            concurrent_registrations_of_one_name_admit_one,
            friendship_is_symmetric,
            friendship_rules,
            groups_create_join_list_and_members,
            group_rules,
            owner_leaving_hands_the_group_on,
            a_private_group_takes_an_invitation,
            non_members_cannot_tell_a_private_group_from_a_missing_one,
            invitations_are_bounded_renewed_expired_and_withdrawn,
            the_owner_removes_members_who_then_cannot_read_or_send,
            joined_history_starts_at_the_latest_join,
            shared_history_shows_everything,
            direct_messages_are_numbered_per_conversation,
            send_rules,
            bodies_are_stored_exactly,
            retry_returns_the_original_message,
            concurrent_retries_store_the_message_once,
            concurrent_senders_get_distinct_gap_free_seqs,
            concurrent_first_messages_open_one_conversation,
            history_pages_backwards_and_forwards,
            history_is_for_participants_only,
            unread_counts_follow_ack_and_send,
            sync_returns_missed_messages_across_conversations,
            sync_pages_with_cursors,
            joining_a_group_starts_with_nothing_unread,
            out_of_range_ids_and_seqs_are_answered_not_failed,
            data_survives_reopening,
            concurrent_opens_migrate_once,
            session_tokens_find_their_user_until_revoked,
            expired_session_tokens_are_refused_and_deleted,
            each_user_keeps_only_the_newest_session_tokens,
            a_password_change_revokes_every_session_token_of_the_user,
        );
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture = $fixture();
                crate::store_suite::$case(&fixture);
            }
        )*
    };
}

/// Groups as they were before they could be private: anyone joins and reads everything.
/// The cases about other subjects use these, so that they test only their subject.
pub const OPEN: GroupSettings = GroupSettings { public: true, history: HistoryVisibility::Shared };

pub const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

pub fn user(store: &dyn Store, name: &str) -> User {
    store.create_user(name, HASH).unwrap_or_else(|e| panic!("create {name}: {e}"))
}

pub fn send(store: &dyn Store, sender: &User, conversation: ConversationId, id: &str, body: &str) -> u64 {
    let sent = store
        .send(&NewMessage { sender: sender.id, conversation, client_msg_id: id, body })
        .unwrap_or_else(|e| panic!("send {id}: {e}"));
    assert!(!sent.duplicate, "{id} was new");
    sent.message.seq
}

pub fn direct(a: &User, b: &User) -> ConversationId {
    ConversationId::direct(a.id, b.id)
}

pub fn group_of(group: &Group) -> ConversationId {
    ConversationId::Group(group.id)
}

pub fn seqs(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

pub fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.name.as_str()).collect()
}

pub fn unread(store: &dyn Store, user: &User, conversation: ConversationId) -> u64 {
    store
        .conversations(user.id)
        .unwrap()
        .into_iter()
        .find(|s| s.conversation == conversation)
        .map_or_else(|| panic!("{conversation} is not among {}'s conversations", user.name), |s| s.unread())
}

#[track_caller]
pub fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::NotFound(_))), "expected NotFound, got {result:?}");
}

#[track_caller]
pub fn assert_exists<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::AlreadyExists(_))), "expected AlreadyExists, got {result:?}");
}

#[track_caller]
pub fn assert_denied<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::PermissionDenied(_))), "expected PermissionDenied, got {result:?}");
}

#[track_caller]
pub fn assert_exhausted<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::ResourceExhausted(_))), "expected ResourceExhausted, got {result:?}");
}

#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "expected InvalidArgument, got {result:?}");
}
