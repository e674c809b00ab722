//! Reading messages: history pages, permissions, unread counts and sync.

use super::*;

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
    let group = store.create_group(alice.id, "g", OPEN).unwrap();
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
    let group = store.create_group(carol.id, "g", OPEN).unwrap();
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
    let group = store.create_group(alice.id, "g", OPEN).unwrap();
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
