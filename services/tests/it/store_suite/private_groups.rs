//! Private groups, invitations, removal by the owner, and history visibility.

use super::*;

/// A private group whose members read from their join on: what `create_group` makes
/// unless told otherwise.
const PRIVATE: GroupSettings = GroupSettings { public: false, history: HistoryVisibility::Joined };

fn msg(sender: &User, group: &Group, id: &'static str) -> NewMessage<'static> {
    NewMessage { sender: sender.id, conversation: group_of(group), client_msg_id: id, body: "text" }
}

fn bodies(page: &Page) -> Vec<&str> {
    page.messages.iter().map(|m| m.body.as_str()).collect()
}

fn say(store: &dyn Store, sender: &User, group: &Group, body: &str) -> u64 {
    let id = format!("{}-{body}", sender.name);
    send(store, sender, group_of(group), &id, body)
}

pub fn a_private_group_takes_an_invitation(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");

    assert_eq!(GroupSettings::default(), PRIVATE, "private, joined history, unless asked");
    let group = store.create_group(alice.id, "secret", GroupSettings::default()).unwrap();
    assert!(!group.public);
    assert_eq!(group.history, HistoryVisibility::Joined);
    assert_eq!(store.group(group.id).unwrap(), group);

    assert_not_found(store.join_group(bob.id, group.id));
    let invitation = store.invite(alice.id, group.id, bob.id).unwrap();
    assert_eq!((invitation.group, invitation.user, invitation.inviter), (group.id, bob.id, alice.id));
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    assert!(invitation.expires_at_ms as u128 > now_ms + 60_000, "good for more than a minute");
    assert_not_found(store.join_group(carol.id, group.id));
    assert_eq!(store.join_group(bob.id, group.id).unwrap(), group);
    assert_eq!(names(&store.group_members(group.id).unwrap()), ["alice", "bob"]);
    store.send(&msg(&bob, &group, "b-1")).unwrap();

    // Any member invites; the invitation is used up by joining.
    store.invite(bob.id, group.id, carol.id).unwrap();
    store.join_group(carol.id, group.id).unwrap();
    store.leave_group(carol.id, group.id).unwrap();
    assert_not_found(store.join_group(carol.id, group.id));

    assert_exists(store.invite(alice.id, group.id, bob.id));
    assert_exists(store.join_group(bob.id, group.id));
    assert_not_found(store.invite(alice.id, group.id, UserId(999_999)));
    assert_not_found(store.invite(alice.id, GroupId(999_999), carol.id));

    // A public group needs no invitation.
    let open = store.create_group(alice.id, "open", GroupSettings { public: true, ..PRIVATE }).unwrap();
    assert!(open.public);
    store.join_group(carol.id, open.id).unwrap();
}

pub fn non_members_cannot_tell_a_private_group_from_a_missing_one(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let eve = user(store, "eve");
    let bob = user(store, "bob");
    let group = store.create_group(alice.id, "secret", PRIVATE).unwrap();
    say(store, &alice, &group, "hello");
    let missing = GroupId(group.id.0 + 1_000);

    // Every call a non-member makes about the private group answers as for a missing
    // one, with the same text apart from the id.
    let text = |e: Error, id: GroupId| e.to_string().replace(&id.to_string(), "N");
    let pairs: Vec<(Error, Error)> = vec![
        (store.join_group(eve.id, group.id).unwrap_err(), store.join_group(eve.id, missing).unwrap_err()),
        (store.leave_group(eve.id, group.id).unwrap_err(), store.leave_group(eve.id, missing).unwrap_err()),
        (
            store.invite(eve.id, group.id, bob.id).unwrap_err(),
            store.invite(eve.id, missing, bob.id).unwrap_err(),
        ),
        (
            store.remove_member(eve.id, group.id, alice.id).unwrap_err(),
            store.remove_member(eve.id, missing, alice.id).unwrap_err(),
        ),
        (
            store.send(&msg(&eve, &group, "e-1")).unwrap_err(),
            store
                .send(&NewMessage {
                    conversation: ConversationId::Group(missing),
                    ..msg(&eve, &group, "e-2")
                })
                .unwrap_err(),
        ),
        (
            store.history(eve.id, group_of(&group), Anchor::Latest, 10).unwrap_err(),
            store.history(eve.id, ConversationId::Group(missing), Anchor::Latest, 10).unwrap_err(),
        ),
        (
            store.ack(eve.id, group_of(&group), 1).unwrap_err(),
            store.ack(eve.id, ConversationId::Group(missing), 1).unwrap_err(),
        ),
    ];
    for (private, absent) in pairs {
        assert!(matches!(private, Error::NotFound(_)), "{private:?}");
        assert!(matches!(absent, Error::NotFound(_)), "{absent:?}");
        assert_eq!(text(private, group.id), text(absent, missing));
    }
    // Nothing leaks through sync either.
    let cursor = Cursor { conversation: group_of(&group), seq: 0 };
    assert!(store.sync(eve.id, &[cursor], 100).unwrap().messages.is_empty());

    // A public group's existence is no secret: its non-members are told they are not
    // members.
    let open = store.create_group(alice.id, "open", GroupSettings { public: true, ..PRIVATE }).unwrap();
    assert_denied(store.history(eve.id, group_of(&open), Anchor::Latest, 10));
    assert_denied(store.send(&msg(&eve, &open, "e-3")));
    assert_denied(store.invite(eve.id, open.id, bob.id));
}

pub fn invitations_are_bounded_renewed_expired_and_withdrawn(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let group = store.create_group(alice.id, "popular", PRIVATE).unwrap();
    store.invite(alice.id, group.id, bob.id).unwrap();
    store.join_group(bob.id, group.id).unwrap();

    let guests: Vec<User> =
        (0..limits::GROUP_INVITATIONS_MAX).map(|i| user(store, &format!("guest{i}"))).collect();
    for guest in &guests {
        store.invite(alice.id, group.id, guest.id).unwrap();
    }
    let late = user(store, "late");
    assert_exhausted(store.invite(alice.id, group.id, late.id));
    // Renewing one that stands is no new invitation, whoever renews it.
    let renewed = store.invite(bob.id, group.id, guests[0].id).unwrap();
    assert_eq!(renewed.inviter, bob.id);
    // A join uses one up and frees its place.
    store.join_group(guests[1].id, group.id).unwrap();
    store.invite(alice.id, group.id, late.id).unwrap();
    assert_exhausted(store.invite(alice.id, group.id, user(store, "later").id));

    // An expired invitation lets nobody in, and no longer counts against the bound.
    f.execute(&format!("UPDATE group_invitations SET expires_at_ms = 1 WHERE user_id = {}", guests[2].id.0));
    assert_not_found(store.join_group(guests[2].id, group.id));
    store.invite(alice.id, group.id, user(store, "latest").id).unwrap();

    // Invitations are withdrawn when their inviter leaves: bob renewed guest 0's.
    store.leave_group(bob.id, group.id).unwrap();
    assert_not_found(store.join_group(guests[0].id, group.id));
    store.join_group(guests[3].id, group.id).unwrap();
}

pub fn the_owner_removes_members_who_then_cannot_read_or_send(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let dave = user(store, "dave");
    let group = store.create_group(alice.id, "club", PRIVATE).unwrap();
    for member in [&bob, &carol] {
        store.invite(alice.id, group.id, member.id).unwrap();
        store.join_group(member.id, group.id).unwrap();
    }
    store.invite(bob.id, group.id, dave.id).unwrap();
    say(store, &alice, &group, "before");

    assert_denied(store.remove_member(bob.id, group.id, carol.id));
    assert_invalid(store.remove_member(alice.id, group.id, alice.id));
    assert_not_found(store.remove_member(alice.id, group.id, dave.id));
    store.remove_member(alice.id, group.id, bob.id).unwrap();
    assert_eq!(names(&store.group_members(group.id).unwrap()), ["alice", "carol"]);
    assert_not_found(store.remove_member(alice.id, group.id, bob.id));

    say(store, &alice, &group, "after");
    assert_not_found(store.send(&msg(&bob, &group, "b-1")));
    assert_not_found(store.history(bob.id, group_of(&group), Anchor::Latest, 10));
    let cursor = Cursor { conversation: group_of(&group), seq: 0 };
    assert!(store.sync(bob.id, &[cursor], 100).unwrap().messages.is_empty());
    assert!(store.groups_of(bob.id).unwrap().is_empty());
    // The removed member's invitation of dave went with them, and they need a new one.
    assert_not_found(store.join_group(dave.id, group.id));
    assert_not_found(store.join_group(bob.id, group.id));

    // When the owner leaves, the longest-standing member owns the group and removes.
    store.invite(alice.id, group.id, dave.id).unwrap();
    store.join_group(dave.id, group.id).unwrap();
    store.leave_group(alice.id, group.id).unwrap();
    assert_eq!(store.group(group.id).unwrap().owner, carol.id);
    store.remove_member(carol.id, group.id, dave.id).unwrap();
    assert_eq!(names(&store.group_members(group.id).unwrap()), ["carol"]);
}

pub fn joined_history_starts_at_the_latest_join(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let group = store.create_group(alice.id, "news", PRIVATE).unwrap();
    say(store, &alice, &group, "one");
    say(store, &alice, &group, "two");
    store.invite(alice.id, group.id, bob.id).unwrap();
    store.join_group(bob.id, group.id).unwrap();
    say(store, &alice, &group, "three");

    let history = |anchor| store.history(bob.id, group_of(&group), anchor, 10).unwrap();
    assert_eq!(bodies(&history(Anchor::Latest)), ["three"]);
    assert!(!history(Anchor::Latest).has_more, "nothing readable lies further back");
    assert_eq!(bodies(&history(Anchor::After(0))), ["three"]);
    assert!(history(Anchor::Before(3)).messages.is_empty());
    let from_zero = [Cursor { conversation: group_of(&group), seq: 0 }];
    assert_eq!(bodies(&store.sync(bob.id, &from_zero, 100).unwrap()), ["three"]);
    assert_eq!(bodies(&store.sync(bob.id, &[], 100).unwrap()), ["three"]);
    assert_eq!(unread(store, &bob, group_of(&group)), 1);
    // The owner, there from the start, reads everything.
    let all = store.history(alice.id, group_of(&group), Anchor::Latest, 10).unwrap();
    assert_eq!(bodies(&all), ["one", "two", "three"]);

    // Leaving and rejoining starts again from the new join.
    store.leave_group(bob.id, group.id).unwrap();
    say(store, &alice, &group, "four");
    store.invite(alice.id, group.id, bob.id).unwrap();
    store.join_group(bob.id, group.id).unwrap();
    say(store, &alice, &group, "five");
    assert_eq!(bodies(&history(Anchor::Latest)), ["five"]);
    assert_eq!(bodies(&store.sync(bob.id, &from_zero, 100).unwrap()), ["five"]);
    // The same on a public group.
    let open = store.create_group(alice.id, "open", GroupSettings { public: true, ..PRIVATE }).unwrap();
    say(store, &alice, &open, "early");
    store.join_group(bob.id, open.id).unwrap();
    assert!(store.history(bob.id, group_of(&open), Anchor::Latest, 10).unwrap().messages.is_empty());
}

pub fn shared_history_shows_everything(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let settings = GroupSettings { history: HistoryVisibility::Shared, ..PRIVATE };
    let group = store.create_group(alice.id, "archive", settings).unwrap();
    assert_eq!(group.history, HistoryVisibility::Shared);
    say(store, &alice, &group, "one");
    say(store, &alice, &group, "two");
    store.invite(alice.id, group.id, bob.id).unwrap();
    store.join_group(bob.id, group.id).unwrap();
    say(store, &alice, &group, "three");

    let page = store.history(bob.id, group_of(&group), Anchor::Latest, 10).unwrap();
    assert_eq!(bodies(&page), ["one", "two", "three"]);
    let from_zero = [Cursor { conversation: group_of(&group), seq: 0 }];
    assert_eq!(bodies(&store.sync(bob.id, &from_zero, 100).unwrap()), ["one", "two", "three"]);
    // Joining still counts what came before as read.
    assert_eq!(bodies(&store.sync(bob.id, &[], 100).unwrap()), ["three"]);
}
