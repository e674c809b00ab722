//! The behaviour every [`Store`] must have. Each case is a function of a [`Fixture`];
//! `store_suite!(fixture_fn)` turns every case into a `#[test]` for one implementation.

use std::collections::BTreeSet;
use std::sync::Barrier;

use services::limits;
use services::store::{Anchor, Cursor, Error, Group, NewMessage, Page, Store, User};
use services::{ConversationId, GroupId, UserId};

/// A store under test, in a database of its own.
pub trait Fixture: Sync {
    /// The store the case works with.
    fn store(&self) -> &dyn Store;
    /// A second, independent handle on the same database, as another process (or a
    /// restarted one) would open it.
    fn reopen(&self) -> Box<dyn Store>;
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

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

fn user(store: &dyn Store, name: &str) -> User {
    store.create_user(name, HASH).unwrap_or_else(|e| panic!("create {name}: {e}"))
}

fn send(store: &dyn Store, sender: &User, conversation: ConversationId, id: &str, body: &str) -> u64 {
    let sent = store
        .send(&NewMessage { sender: sender.id, conversation, client_msg_id: id, body })
        .unwrap_or_else(|e| panic!("send {id}: {e}"));
    assert!(!sent.duplicate, "{id} was new");
    sent.message.seq
}

fn direct(a: &User, b: &User) -> ConversationId {
    ConversationId::direct(a.id, b.id)
}

fn group_of(group: &Group) -> ConversationId {
    ConversationId::Group(group.id)
}

fn seqs(page: &Page) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.name.as_str()).collect()
}

fn unread(store: &dyn Store, user: &User, conversation: ConversationId) -> u64 {
    store
        .conversations(user.id)
        .unwrap()
        .into_iter()
        .find(|s| s.conversation == conversation)
        .map_or_else(|| panic!("{conversation} is not among {}'s conversations", user.name), |s| s.unread())
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::NotFound(_))), "expected NotFound, got {result:?}");
}

#[track_caller]
fn assert_exists<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::AlreadyExists(_))), "expected AlreadyExists, got {result:?}");
}

#[track_caller]
fn assert_denied<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::PermissionDenied(_))), "expected PermissionDenied, got {result:?}");
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::InvalidArgument(_))), "expected InvalidArgument, got {result:?}");
}

pub fn users_are_registered_and_found(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "Alice");
    let bob = user(store, "bob");
    assert_ne!(alice.id, bob.id);
    assert!(alice.created_at_ms > 1_600_000_000_000, "a real time stamp");

    assert_eq!(store.user(alice.id).unwrap(), alice);
    assert_eq!(store.user_by_name("alice").unwrap(), alice, "look-ups ignore case");
    assert_eq!(store.user_by_name("ALICE").unwrap().name, "Alice", "the name keeps its case");
    let credentials = store.credentials("aLiCe").unwrap();
    assert_eq!(credentials.user, alice);
    assert_eq!(credentials.password_hash, HASH);

    assert_not_found(store.user_by_name("carol"));
    assert_not_found(store.credentials("carol"));
    assert_not_found(store.user(UserId(999_999)));
}

pub fn names_are_unique_ignoring_case(f: &dyn Fixture) {
    let store = f.store();
    user(store, "alice");
    for taken in ["alice", "ALICE", "aLice"] {
        let err = store.create_user(taken, HASH).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{taken}: {err:?}");
        assert!(err.to_string().contains("already taken"), "{err}");
    }
    user(store, "alice2");
}

pub fn names_are_checked_against_the_limits(f: &dyn Fixture) {
    let store = f.store();
    for bad in ["", "ab", "bob smith", "9lives", "x'; DROP TABLE users; --", "zoë", &"a".repeat(33)] {
        let err = store.create_user(bad, HASH).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err:?}");
        assert_eq!(err.to_string(), limits::check_name(bad).unwrap_err().to_string());
    }
    assert_invalid(store.create_user("alice", ""));
    // None of the rejected names got in, and the table is still there.
    user(store, "alice");
    assert_not_found(store.user_by_name("ab"));
}

pub fn concurrent_registrations_of_one_name_admit_one(f: &dyn Fixture) {
    let other = f.reopen();
    let stores: [&dyn Store; 2] = [f.store(), &*other];
    let barrier = Barrier::new(6);
    let results: Vec<Result<User, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let store = stores[i % 2];
                let barrier = &barrier;
                let name = if i % 3 == 0 { "Zed" } else { "zed" };
                s.spawn(move || {
                    barrier.wait();
                    store.create_user(name, HASH)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&User> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    for result in &results {
        if let Err(e) = result {
            assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
        }
    }
}

pub fn friendship_is_symmetric(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "Carol");
    let dave = user(store, "dave");

    assert_eq!(store.add_friend(alice.id, bob.id).unwrap(), bob);
    assert_eq!(store.add_friend(dave.id, alice.id).unwrap(), alice);
    assert_eq!(store.add_friend(alice.id, carol.id).unwrap(), carol);

    assert_eq!(
        names(&store.friends(alice.id).unwrap()),
        ["bob", "Carol", "dave"],
        "ordered by name, ignoring case"
    );
    assert_eq!(names(&store.friends(bob.id).unwrap()), ["alice"]);
    assert_eq!(names(&store.friends(dave.id).unwrap()), ["alice"]);

    // Either side may end it, and it ends on both.
    store.remove_friend(bob.id, alice.id).unwrap();
    assert_eq!(names(&store.friends(alice.id).unwrap()), ["Carol", "dave"]);
    assert!(store.friends(bob.id).unwrap().is_empty());
    store.remove_friend(alice.id, dave.id).unwrap();
    assert!(store.friends(dave.id).unwrap().is_empty());

    // And it can start again.
    store.add_friend(bob.id, alice.id).unwrap();
    assert_eq!(names(&store.friends(alice.id).unwrap()), ["bob", "Carol"]);
}

pub fn friendship_rules(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    store.add_friend(alice.id, bob.id).unwrap();

    assert_exists(store.add_friend(alice.id, bob.id));
    assert_exists(store.add_friend(bob.id, alice.id));
    assert_invalid(store.add_friend(alice.id, alice.id));
    assert_not_found(store.add_friend(alice.id, UserId(999_999)));
    assert_not_found(store.add_friend(UserId(999_999), alice.id));

    let carol = user(store, "carol");
    assert_not_found(store.remove_friend(alice.id, carol.id));
    store.remove_friend(alice.id, bob.id).unwrap();
    assert_not_found(store.remove_friend(alice.id, bob.id));
    // A failed add left nothing half-done.
    assert!(store.friends(alice.id).unwrap().is_empty());
}

pub fn groups_create_join_list_and_members(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");

    let rust = store.create_group(alice.id, "Rust fans 🦀").unwrap();
    assert_eq!(rust.owner, alice.id);
    assert_eq!(rust.name, "Rust fans 🦀");
    assert_eq!(store.group(rust.id).unwrap(), rust);
    let tea = store.create_group(bob.id, "tea").unwrap();
    assert_ne!(rust.id, tea.id);

    assert_eq!(store.join_group(carol.id, rust.id).unwrap(), rust);
    assert_eq!(store.join_group(bob.id, rust.id).unwrap(), rust);
    assert_eq!(names(&store.group_members(rust.id).unwrap()), ["alice", "carol", "bob"], "in joining order");

    assert_eq!(store.groups_of(bob.id).unwrap(), [rust.clone(), tea.clone()]);
    assert_eq!(store.groups_of(alice.id).unwrap(), std::slice::from_ref(&rust));
    assert!(store.groups_of(UserId(999_999)).unwrap().is_empty());

    store.leave_group(carol.id, rust.id).unwrap();
    assert_eq!(names(&store.group_members(rust.id).unwrap()), ["alice", "bob"]);
    assert!(store.groups_of(carol.id).unwrap().is_empty());
    // Rejoining puts the member at the end.
    store.join_group(carol.id, rust.id).unwrap();
    assert_eq!(names(&store.group_members(rust.id).unwrap()), ["alice", "bob", "carol"]);
}

pub fn group_rules(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let group = store.create_group(alice.id, "g").unwrap();

    assert_exists(store.join_group(alice.id, group.id));
    assert_not_found(store.join_group(bob.id, GroupId(999_999)));
    assert_not_found(store.join_group(UserId(999_999), group.id));
    assert_not_found(store.leave_group(bob.id, group.id));
    assert_not_found(store.leave_group(bob.id, GroupId(999_999)));
    assert_not_found(store.group(GroupId(999_999)));
    assert_not_found(store.group_members(GroupId(999_999)));
    assert_not_found(store.create_group(UserId(999_999), "nobody's"));
    for bad in ["", "   ", "tab\there", &"g".repeat(65)] {
        let err = store.create_group(alice.id, bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(store.groups_of(alice.id).unwrap(), [group]);
}

pub fn owner_leaving_hands_the_group_on(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store.create_group(alice.id, "g").unwrap();
    store.join_group(bob.id, group.id).unwrap();
    store.join_group(carol.id, group.id).unwrap();

    store.leave_group(alice.id, group.id).unwrap();
    assert_eq!(store.group(group.id).unwrap().owner, bob.id, "the longest-standing member");
    store.leave_group(carol.id, group.id).unwrap();
    assert_eq!(store.group(group.id).unwrap().owner, bob.id, "a member leaving changes nothing");
    store.leave_group(bob.id, group.id).unwrap();
    assert_eq!(store.group(group.id).unwrap().owner, bob.id, "the last owner stays recorded");
    assert!(store.group_members(group.id).unwrap().is_empty());
    // An empty group can still be joined.
    store.join_group(alice.id, group.id).unwrap();
}

pub fn direct_messages_are_numbered_per_conversation(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");

    assert_eq!(send(store, &alice, direct(&alice, &bob), "a1", "hi bob"), 1);
    assert_eq!(send(store, &alice, direct(&alice, &bob), "a2", "you there?"), 2);
    // The other side writes into the same conversation, whichever order it names it in.
    let reversed = ConversationId::Direct { low: bob.id.max(alice.id), high: bob.id.min(alice.id) };
    let sent = store
        .send(&NewMessage { sender: bob.id, conversation: reversed, client_msg_id: "b1", body: "yes" })
        .unwrap();
    assert_eq!(sent.message.seq, 3);
    assert_eq!(sent.message.conversation, direct(&alice, &bob), "answered normalised");
    assert_eq!(sent.message.sender, bob.id);
    assert_eq!(sent.message.client_msg_id, "b1");
    assert_eq!(sent.message.body, "yes");
    assert!(sent.message.sent_at_ms > 1_600_000_000_000);

    assert_eq!(
        send(store, &alice, direct(&alice, &carol), "a3", "hi carol"),
        1,
        "each conversation counts alone"
    );
    let group = store.create_group(alice.id, "g").unwrap();
    assert_eq!(send(store, &alice, group_of(&group), "a4", "hi group"), 1);
    assert_eq!(send(store, &alice, direct(&alice, &bob), "a5", "back"), 4);

    let page = store.history(bob.id, direct(&alice, &bob), Anchor::After(0), 10).unwrap();
    assert_eq!(seqs(&page), [1, 2, 3, 4]);
    let bodies: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["hi bob", "you there?", "yes", "back"]);
    assert_eq!(page.messages[2], sent.message, "history returns what send returned");
}

pub fn send_rules(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store.create_group(bob.id, "g").unwrap();
    let msg = |sender: &User, conversation, id: &'static str, body: &'static str| {
        store.send(&NewMessage { sender: sender.id, conversation, client_msg_id: id, body })
    };

    assert_invalid(msg(&alice, direct(&alice, &alice), "x1", "me"));
    assert_denied(msg(&carol, direct(&alice, &bob), "x2", "not my conversation"));
    assert_not_found(msg(&alice, ConversationId::direct(alice.id, UserId(999_999)), "x3", "nobody"));
    assert_denied(msg(&alice, group_of(&group), "x4", "not a member"));
    assert_not_found(msg(&alice, ConversationId::Group(GroupId(999_999)), "x5", "no group"));
    let too_long = "x".repeat(limits::BODY_MAX_BYTES + 1);
    let err = store
        .send(&NewMessage {
            sender: alice.id,
            conversation: direct(&alice, &bob),
            client_msg_id: "x6",
            body: &too_long,
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("at most 4096 bytes"), "{err}");
    assert_invalid(msg(&alice, direct(&alice, &bob), "x7", "  \n "));
    assert_invalid(msg(&alice, direct(&alice, &bob), "", "no id"));
    assert_invalid(msg(&alice, direct(&alice, &bob), "has space", "bad id"));

    // None of that stored anything: the first real message is number 1.
    assert_eq!(send(store, &alice, direct(&alice, &bob), "ok", "hello"), 1);
    assert!(store.history(bob.id, group_of(&group), Anchor::Latest, 10).unwrap().messages.is_empty());
}

pub fn bodies_are_stored_exactly(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let max = "é".repeat(limits::BODY_MAX_BYTES / 2);
    let bodies =
        ["plain", "línea uno\nline two\ttabbed 🦀", "'; DROP TABLE messages; --", "\"quoted\" \\ back", &max];
    for (i, body) in bodies.iter().enumerate() {
        send(store, &alice, direct(&alice, &bob), &format!("m{i}"), body);
    }
    let page = store.history(alice.id, direct(&alice, &bob), Anchor::After(0), 50).unwrap();
    let stored: Vec<&str> = page.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(stored, bodies);
}

pub fn retry_returns_the_original_message(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let first = store
        .send(&NewMessage {
            sender: alice.id,
            conversation: direct(&alice, &bob),
            client_msg_id: "m-1",
            body: "hi",
        })
        .unwrap();
    assert!(!first.duplicate);

    // The client did not hear the answer and sends again, even with an edited body.
    for body in ["hi", "hi (edited)"] {
        let retry = store
            .send(&NewMessage {
                sender: alice.id,
                conversation: direct(&bob, &alice),
                client_msg_id: "m-1",
                body,
            })
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.message, first.message, "the original, unchanged");
    }
    // A restarted service answers the same.
    let again = f
        .reopen()
        .send(&NewMessage {
            sender: alice.id,
            conversation: direct(&alice, &bob),
            client_msg_id: "m-1",
            body: "hi",
        })
        .unwrap();
    assert_eq!((again.duplicate, again.message.seq), (true, 1));

    // No number was used up by the retries.
    assert_eq!(send(store, &alice, direct(&alice, &bob), "m-2", "next"), 2);
    // The same id for another conversation is a client bug, not a retry.
    assert_exists(store.send(&NewMessage {
        sender: alice.id,
        conversation: direct(&alice, &carol),
        client_msg_id: "m-1",
        body: "hi",
    }));
    // Ids are per sender: bob may use "m-1" too.
    assert_eq!(send(store, &bob, direct(&alice, &bob), "m-1", "hello alice"), 3);
    assert_eq!(unread(store, &bob, direct(&alice, &bob)), 0);
    assert_eq!(store.history(alice.id, direct(&alice, &bob), Anchor::Latest, 10).unwrap().messages.len(), 3);
}

pub fn concurrent_retries_store_the_message_once(f: &dyn Fixture) {
    let other = f.reopen();
    let stores: [&dyn Store; 2] = [f.store(), &*other];
    let alice = user(f.store(), "alice");
    let bob = user(f.store(), "bob");
    const THREADS: usize = 6;
    let barrier = Barrier::new(THREADS);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (store, barrier) = (stores[i % 2], &barrier);
                let conversation = direct(&alice, &bob);
                let alice = alice.id;
                s.spawn(move || {
                    barrier.wait();
                    store
                        .send(&NewMessage {
                            sender: alice,
                            conversation,
                            client_msg_id: "once",
                            body: "hello",
                        })
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.message.seq == 1));
    let page = f.store().history(bob.id, direct(&alice, &bob), Anchor::Latest, 10).unwrap();
    assert_eq!(seqs(&page), [1]);
}

pub fn concurrent_senders_get_distinct_gap_free_seqs(f: &dyn Fixture) {
    let other = f.reopen();
    let stores: [&dyn Store; 2] = [f.store(), &*other];
    let store = f.store();
    let owner = user(store, "owner");
    let group = store.create_group(owner.id, "busy").unwrap();
    const THREADS: usize = 6;
    const EACH: usize = 20;
    let senders: Vec<User> = (0..THREADS)
        .map(|i| {
            let u = user(store, &format!("sender{i}"));
            store.join_group(u.id, group.id).unwrap();
            u
        })
        .collect();
    let barrier = Barrier::new(THREADS);
    let assigned: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(i, sender)| {
                // Half the threads go through a second handle, as a second service would.
                let (store, barrier) = (stores[i % 2], &barrier);
                let conversation = group_of(&group);
                s.spawn(move || {
                    barrier.wait();
                    (0..EACH)
                        .map(|n| {
                            send(
                                store,
                                sender,
                                conversation,
                                &format!("{i}-{n}"),
                                &format!("message {n} from {i}"),
                            )
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let total = (THREADS * EACH) as u64;
    let distinct: BTreeSet<u64> = assigned.iter().copied().collect();
    assert_eq!(distinct.len(), assigned.len(), "no sequence number given twice");
    assert_eq!(distinct, (1..=total).collect(), "1..={total} without gaps");

    let page = store.history(owner.id, group_of(&group), Anchor::After(0), 200).unwrap();
    assert_eq!(seqs(&page), (1..=total).collect::<Vec<_>>());
    assert!(!page.has_more);
    // Each sender's own messages are stored in the order it sent them.
    for (i, sender) in senders.iter().enumerate() {
        let ids: Vec<&str> = page
            .messages
            .iter()
            .filter(|m| m.sender == sender.id)
            .map(|m| m.client_msg_id.as_str())
            .collect();
        let expected: Vec<String> = (0..EACH).map(|n| format!("{i}-{n}")).collect();
        assert_eq!(ids, expected);
    }
    assert_eq!(unread(store, &owner, group_of(&group)), total);
}

pub fn concurrent_first_messages_open_one_conversation(f: &dyn Fixture) {
    // Both sides write first at the same moment, through two handles: the pair's row is
    // created once and numbering is shared.
    let other = f.reopen();
    let stores: [&dyn Store; 2] = [f.store(), &*other];
    let alice = user(f.store(), "alice");
    let bob = user(f.store(), "bob");
    const THREADS: usize = 4;
    const EACH: usize = 10;
    let barrier = Barrier::new(THREADS);
    let assigned: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (store, barrier) = (stores[i % 2], &barrier);
                let sender = if i < THREADS / 2 { &alice } else { &bob };
                let conversation = direct(&alice, &bob);
                s.spawn(move || {
                    barrier.wait();
                    (0..EACH)
                        .map(|n| send(store, sender, conversation, &format!("{i}-{n}"), "hi"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<u64> = assigned.iter().copied().collect();
    assert_eq!(distinct, (1..=(THREADS * EACH) as u64).collect());
    for u in [&alice, &bob] {
        let states = f.store().conversations(u.id).unwrap();
        assert_eq!(states.len(), 1, "{states:?}");
        assert_eq!(states[0].last_seq, (THREADS * EACH) as u64);
    }
}

pub fn history_pages_backwards_and_forwards(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let c = direct(&alice, &bob);
    assert_eq!(store.history(alice.id, c, Anchor::Latest, 10).unwrap(), Page::default(), "nothing yet");
    for n in 1..=25 {
        let sender = if n % 2 == 0 { &alice } else { &bob };
        send(store, sender, c, &format!("m{n}"), &format!("body {n}"));
    }

    let latest = store.history(alice.id, c, Anchor::Latest, 10).unwrap();
    assert_eq!(seqs(&latest), (16..=25).collect::<Vec<_>>());
    assert!(latest.has_more);
    let earlier = store.history(alice.id, c, Anchor::Before(16), 10).unwrap();
    assert_eq!(seqs(&earlier), (6..=15).collect::<Vec<_>>());
    assert!(earlier.has_more);
    let earliest = store.history(alice.id, c, Anchor::Before(6), 10).unwrap();
    assert_eq!(seqs(&earliest), [1, 2, 3, 4, 5]);
    assert!(!earliest.has_more);
    assert_eq!(store.history(alice.id, c, Anchor::Before(1), 10).unwrap(), Page::default());

    let first = store.history(bob.id, c, Anchor::After(0), 10).unwrap();
    assert_eq!(seqs(&first), (1..=10).collect::<Vec<_>>());
    assert!(first.has_more);
    let last = store.history(bob.id, c, Anchor::After(20), 10).unwrap();
    assert_eq!(seqs(&last), [21, 22, 23, 24, 25]);
    assert!(!last.has_more);
    let exact = store.history(bob.id, c, Anchor::After(15), 10).unwrap();
    assert_eq!(seqs(&exact), (16..=25).collect::<Vec<_>>());
    assert!(!exact.has_more, "exactly the rest is not 'more'");
    assert_eq!(store.history(bob.id, c, Anchor::After(25), 10).unwrap(), Page::default());

    // 0 means the default page size, and too large is cut to the maximum.
    let default = store.history(bob.id, c, Anchor::Latest, 0).unwrap();
    assert_eq!(default.messages.len(), 25);
    assert!(!default.has_more);
    assert_eq!(store.history(bob.id, c, Anchor::Latest, 1_000_000).unwrap().messages.len(), 25);
}

pub fn history_is_for_participants_only(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let eve = user(store, "eve");
    send(store, &alice, direct(&alice, &bob), "d1", "private");
    let group = store.create_group(alice.id, "g").unwrap();
    store.join_group(bob.id, group.id).unwrap();
    send(store, &bob, group_of(&group), "g1", "members only");

    assert_denied(store.history(eve.id, direct(&alice, &bob), Anchor::Latest, 10));
    assert_denied(store.history(eve.id, group_of(&group), Anchor::Latest, 10));
    assert_not_found(store.history(eve.id, ConversationId::Group(GroupId(999_999)), Anchor::Latest, 10));
    assert_denied(store.ack(eve.id, group_of(&group), 1));
    assert_denied(store.ack(eve.id, direct(&alice, &bob), 1));

    // A member who leaves loses access, for reading and for sending.
    store.leave_group(bob.id, group.id).unwrap();
    assert_denied(store.history(bob.id, group_of(&group), Anchor::Latest, 10));
    assert_denied(store.send(&NewMessage {
        sender: bob.id,
        conversation: group_of(&group),
        client_msg_id: "g2",
        body: "still here?",
    }));
    assert!(store.conversations(bob.id).unwrap().iter().all(|s| s.conversation != group_of(&group)));
    // ... while a retry of what they sent as a member still gets its answer.
    let retry = store
        .send(&NewMessage {
            sender: bob.id,
            conversation: group_of(&group),
            client_msg_id: "g1",
            body: "members only",
        })
        .unwrap();
    assert_eq!((retry.duplicate, retry.message.seq), (true, 1));
}

pub fn unread_counts_follow_ack_and_send(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let c = direct(&alice, &bob);
    assert_eq!(store.ack(bob.id, c, 5).unwrap(), 0, "acking an empty conversation is harmless");
    for n in 1..=3 {
        send(store, &alice, c, &format!("m{n}"), "hi");
    }
    assert_eq!(unread(store, &bob, c), 3);
    assert_eq!(unread(store, &alice, c), 0, "one's own messages are not unread");
    let state = store.conversations(bob.id).unwrap()[0];
    assert_eq!((state.conversation, state.last_seq, state.read_seq), (c, 3, 0));

    assert_eq!(store.ack(bob.id, c, 2).unwrap(), 2);
    assert_eq!(unread(store, &bob, c), 1);
    assert_eq!(store.ack(bob.id, c, 1).unwrap(), 2, "never backwards");
    assert_eq!(store.ack(bob.id, c, 100).unwrap(), 3, "never past the newest");
    assert_eq!(unread(store, &bob, c), 0);

    send(store, &alice, c, "m4", "more");
    send(store, &alice, c, "m5", "more");
    assert_eq!(unread(store, &bob, c), 2);
    // Replying marks what came before as read.
    send(store, &bob, c, "b1", "ok");
    assert_eq!(unread(store, &bob, c), 0);
    assert_eq!(unread(store, &alice, c), 1);
}

pub fn sync_returns_missed_messages_across_conversations(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store.create_group(carol.id, "g").unwrap();
    store.join_group(bob.id, group.id).unwrap();
    assert_eq!(store.sync(bob.id, &[], 0).unwrap(), Page::default(), "nothing to sync");

    // Bob is away while three conversations fill up.
    send(store, &alice, direct(&alice, &bob), "a1", "from alice 1");
    send(store, &carol, group_of(&group), "c1", "group 1");
    send(store, &carol, direct(&bob, &carol), "c2", "from carol");
    send(store, &alice, direct(&alice, &bob), "a2", "from alice 2");
    send(store, &carol, group_of(&group), "c3", "group 2");
    send(store, &alice, direct(&alice, &carol), "a3", "not for bob");

    let states = store.conversations(bob.id).unwrap();
    let listed: Vec<(ConversationId, u64)> = states.iter().map(|s| (s.conversation, s.unread())).collect();
    assert_eq!(
        listed,
        [(direct(&alice, &bob), 2), (direct(&bob, &carol), 1), (group_of(&group), 2)],
        "one-to-one conversations in order of creation, then groups"
    );

    let page = store.sync(bob.id, &[], 0).unwrap();
    assert!(!page.has_more);
    let got: Vec<(ConversationId, u64, &str)> =
        page.messages.iter().map(|m| (m.conversation, m.seq, m.body.as_str())).collect();
    assert_eq!(
        got,
        [
            (direct(&alice, &bob), 1, "from alice 1"),
            (direct(&alice, &bob), 2, "from alice 2"),
            (direct(&bob, &carol), 1, "from carol"),
            (group_of(&group), 1, "group 1"),
            (group_of(&group), 2, "group 2"),
        ]
    );

    // The client already had the first message from alice (in either pair order).
    let cursor = Cursor { conversation: ConversationId::Direct { low: bob.id, high: alice.id }, seq: 1 };
    let page = store.sync(bob.id, &[cursor], 0).unwrap();
    assert_eq!(page.messages.len(), 4);
    assert_eq!(page.messages[0].body, "from alice 2");

    // Cursors for conversations bob is not in change nothing.
    let foreign = Cursor { conversation: direct(&alice, &carol), seq: 0 };
    assert_eq!(store.sync(bob.id, &[foreign], 0).unwrap().messages.len(), 5);

    // Once acknowledged, nothing is missed any more; new messages are.
    for state in &states {
        store.ack(bob.id, state.conversation, state.last_seq).unwrap();
    }
    assert_eq!(store.sync(bob.id, &[], 0).unwrap(), Page::default());
    send(store, &carol, group_of(&group), "c4", "group 3");
    let page = store.sync(bob.id, &[], 0).unwrap();
    assert_eq!(seqs(&page), [3]);
}

pub fn sync_pages_with_cursors(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    for n in 1..=7 {
        send(store, &alice, direct(&alice, &bob), &format!("a{n}"), "x");
    }
    for n in 1..=5 {
        send(store, &carol, direct(&bob, &carol), &format!("c{n}"), "y");
    }

    // A client pulls in pages of 4, moving its cursors by what it received.
    let mut cursors: Vec<Cursor> = Vec::new();
    let mut received: Vec<(ConversationId, u64)> = Vec::new();
    for round in 1.. {
        assert!(round <= 10, "sync does not finish");
        let page = store.sync(bob.id, &cursors, 4).unwrap();
        assert!(page.messages.len() <= 4);
        for m in &page.messages {
            received.push((m.conversation, m.seq));
            match cursors.iter_mut().find(|c| c.conversation == m.conversation) {
                Some(c) => c.seq = m.seq,
                None => cursors.push(Cursor { conversation: m.conversation, seq: m.seq }),
            }
        }
        if !page.has_more {
            break;
        }
    }
    let mut expected: Vec<(ConversationId, u64)> = (1..=7).map(|s| (direct(&alice, &bob), s)).collect();
    expected.extend((1..=5).map(|s| (direct(&bob, &carol), s)));
    assert_eq!(received, expected, "everything, once, in order");
    // Sync does not move the read cursor; only ack does.
    assert_eq!(unread(store, &bob, direct(&alice, &bob)), 7);
}

pub fn joining_a_group_starts_with_nothing_unread(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let dave = user(store, "dave");
    let group = store.create_group(alice.id, "g").unwrap();
    for n in 1..=5 {
        send(store, &alice, group_of(&group), &format!("m{n}"), "before dave");
    }
    store.join_group(dave.id, group.id).unwrap();
    let state = store.conversations(dave.id).unwrap()[0];
    assert_eq!((state.conversation, state.last_seq, state.read_seq), (group_of(&group), 5, 5));
    assert_eq!(store.sync(dave.id, &[], 0).unwrap(), Page::default());
    // The history is there to read all the same.
    assert_eq!(store.history(dave.id, group_of(&group), Anchor::Latest, 10).unwrap().messages.len(), 5);
    send(store, &alice, group_of(&group), "m6", "welcome dave");
    assert_eq!(unread(store, &dave, group_of(&group)), 1);
    assert_eq!(seqs(&store.sync(dave.id, &[], 0).unwrap()), [6]);
}

pub fn out_of_range_ids_and_seqs_are_answered_not_failed(f: &dyn Fixture) {
    // Clients send ids and sequence numbers as uint64; values no database assigns must
    // get ordinary answers.
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let c = direct(&alice, &bob);
    let huge = UserId(u64::MAX);
    assert_not_found(store.user(huge));
    assert_not_found(store.add_friend(alice.id, huge));
    assert_not_found(store.remove_friend(alice.id, huge));
    assert_not_found(store.join_group(alice.id, GroupId(u64::MAX)));
    assert_not_found(store.group(GroupId(u64::MAX)));
    assert_not_found(store.send(&NewMessage {
        sender: alice.id,
        conversation: ConversationId::direct(alice.id, huge),
        client_msg_id: "h0",
        body: "hello?",
    }));
    assert!(store.friends(huge).unwrap().is_empty());
    assert!(store.conversations(huge).unwrap().is_empty());

    for n in 1..=3 {
        send(store, &alice, c, &format!("h{n}"), "x");
    }
    assert_eq!(seqs(&store.history(bob.id, c, Anchor::Before(u64::MAX), 10).unwrap()), [1, 2, 3]);
    assert_eq!(store.history(bob.id, c, Anchor::After(u64::MAX), 10).unwrap(), Page::default());
    let cursor = Cursor { conversation: c, seq: u64::MAX };
    assert_eq!(store.sync(bob.id, &[cursor], 0).unwrap(), Page::default());
    assert_eq!(store.ack(bob.id, c, u64::MAX).unwrap(), 3);
}

pub fn data_survives_reopening(f: &dyn Fixture) {
    let (alice, bob, group) = {
        let store = f.store();
        let alice = user(store, "alice");
        let bob = user(store, "bob");
        store.add_friend(alice.id, bob.id).unwrap();
        let group = store.create_group(alice.id, "g").unwrap();
        store.join_group(bob.id, group.id).unwrap();
        send(store, &alice, direct(&alice, &bob), "a1", "kept");
        send(store, &bob, group_of(&group), "b1", "kept too");
        store.ack(bob.id, direct(&alice, &bob), 1).unwrap();
        (alice, bob, group)
    };
    let reopened = f.reopen();
    let store = &*reopened;
    assert_eq!(store.user_by_name("alice").unwrap(), alice);
    assert_eq!(store.credentials("bob").unwrap().password_hash, HASH);
    assert_eq!(store.friends(alice.id).unwrap(), std::slice::from_ref(&bob));
    assert_eq!(store.groups_of(bob.id).unwrap(), std::slice::from_ref(&group));
    assert_eq!(
        store.history(bob.id, direct(&alice, &bob), Anchor::Latest, 10).unwrap().messages[0].body,
        "kept"
    );
    assert_eq!(unread(store, &bob, direct(&alice, &bob)), 0);
    assert_eq!(unread(store, &alice, group_of(&group)), 1);
    // Numbering continues where it stopped.
    assert_eq!(send(store, &alice, group_of(&group), "a2", "after reopening"), 2);
}

pub fn concurrent_opens_migrate_once(f: &dyn Fixture) {
    let alice = user(f.store(), "alice");
    let stores: Vec<Box<dyn Store>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| f.reopen())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for store in &stores {
        assert_eq!(store.user(alice.id).unwrap(), alice);
    }
}
