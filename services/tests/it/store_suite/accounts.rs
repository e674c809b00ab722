//! Registration, names, reopening and migration.

use std::sync::Barrier;

use super::*;

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
    // Names no one could have registered are simply not found, whatever their characters.
    for impossible in ["bób", "x😀", "ALİCE", "al ice", "", &"a".repeat(300)] {
        assert_not_found(store.user_by_name(impossible));
        assert_not_found(store.credentials(impossible));
    }
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
        let group = store.create_group(alice.id, "g", OPEN).unwrap();
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
