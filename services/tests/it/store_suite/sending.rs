//! Storing messages: numbering, rules, idempotent retries, concurrent writers.

use std::collections::BTreeSet;
use std::sync::Barrier;

use super::*;

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
    let group = store.create_group(alice.id, "g", OPEN).unwrap();
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
    let group = store.create_group(bob.id, "g", OPEN).unwrap();
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
    let group = store.create_group(owner.id, "busy", OPEN).unwrap();
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
