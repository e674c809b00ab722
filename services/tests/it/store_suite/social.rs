//! Friends and groups.

use super::*;

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

    let rust = store.create_group(alice.id, "Rust fans 🦀", OPEN).unwrap();
    assert_eq!(rust.owner, alice.id);
    assert_eq!(rust.name, "Rust fans 🦀");
    assert_eq!(store.group(rust.id).unwrap(), rust);
    let tea = store.create_group(bob.id, "tea", OPEN).unwrap();
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
    let group = store.create_group(alice.id, "g", OPEN).unwrap();

    assert_exists(store.join_group(alice.id, group.id));
    assert_not_found(store.join_group(bob.id, GroupId(999_999)));
    assert_not_found(store.join_group(UserId(999_999), group.id));
    assert_not_found(store.leave_group(bob.id, group.id));
    assert_not_found(store.leave_group(bob.id, GroupId(999_999)));
    assert_not_found(store.group(GroupId(999_999)));
    assert_not_found(store.group_members(GroupId(999_999)));
    assert_not_found(store.create_group(UserId(999_999), "nobody's", OPEN));
    for bad in ["", "   ", "tab\there", &"g".repeat(65)] {
        let err = store.create_group(alice.id, bad, OPEN).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(store.groups_of(alice.id).unwrap(), [group]);
}

pub fn owner_leaving_hands_the_group_on(f: &dyn Fixture) {
    let store = f.store();
    let alice = user(store, "alice");
    let bob = user(store, "bob");
    let carol = user(store, "carol");
    let group = store.create_group(alice.id, "g", OPEN).unwrap();
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
