//! The chat scenarios (`chat_scenarios`, `chat_groups`) against [`Standalone`] over
//! SQLite and over MySQL, and what only the standalone system shows: a restart keeps
//! everything, an expired session token is refused.

use std::time::Duration;

use rpc_core::Code;
use services::api;
use services::standalone::{self, Standalone};

use crate::chat_client::{code, config, direct, login_with, resume, user_at, System, PASSWORD};
use crate::support::wait_until;

fn start() -> System {
    let dir = tempfile::tempdir().unwrap();
    let system = Standalone::start(config(dir.path())).expect("standalone starts");
    System::new(system.client_addr(), Box::new((system, dir)))
}

/// A system over the data directory under `dir`, which the caller keeps.
fn start_in(dir: &std::path::Path) -> System {
    let system = Standalone::start(config(dir)).expect("standalone starts");
    System::new(system.client_addr(), Box::new(system))
}

#[test]
fn a_restart_keeps_users_friends_groups_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let group_id = {
        let system = start_in(dir.path());
        let (alice_client, alice) = user_at(system.addr(), "alice");
        let bob = system.connect().register("bob");
        let befriend =
            api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(bob.id)) };
        alice_client.gateway.add_friend(&befriend).unwrap();
        let group = alice_client
            .gateway
            .create_group(&api::CreateGroupRequest { name: "kept".into(), ..Default::default() })
            .unwrap();
        let group_id = group.group.unwrap().id;
        alice_client.send(direct(&alice, &bob), "a-1", "still there?").unwrap();
        let to_group = api::Conversation { kind: Some(api::conversation::Kind::GroupId(group_id)) };
        alice_client.send(to_group, "a-2", "group line").unwrap();
        group_id
    };
    let system = start_in(dir.path());
    let bob_client = system.connect();
    let login = bob_client.login("bob");
    let friends: Vec<&str> = login.friends.iter().map(|f| f.user.as_ref().unwrap().name.as_str()).collect();
    assert_eq!(friends, ["alice"], "the friendship survives the restart");
    let synced = bob_client.gateway.sync(&api::SyncRequest::default()).unwrap();
    assert_eq!(synced.messages.len(), 1);
    assert_eq!(synced.messages[0].body, "still there?");

    let alice_client = system.connect();
    let login = alice_client.login("alice");
    let groups: Vec<(u64, &str)> =
        login.groups.iter().map(|g| g.group.as_ref().unwrap()).map(|g| (g.id, g.name.as_str())).collect();
    assert_eq!(groups, [(group_id, "kept")], "the group and its owner's membership survive");
    let to_group = api::Conversation { kind: Some(api::conversation::Kind::GroupId(group_id)) };
    let history = api::HistoryRequest { conversation: Some(to_group), ..Default::default() };
    let kept = alice_client.gateway.history(&history).unwrap().messages;
    assert_eq!(kept.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["group line"]);
}
mod sqlite {
    chat_suite!(super::start);
}

#[test]
fn an_expired_session_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = services::session_token::Config { ttl: Duration::ZERO, ..Default::default() };
    let system =
        Standalone::start(standalone::Config { tokens, ..config(dir.path()) }).expect("standalone starts");
    let system = System::new(system.client_addr(), Box::new((system, dir)));
    let client = system.connect();
    let dave = system.register(&client, "dave");
    let token = login_with(&client, &dave.name, PASSWORD);
    assert_eq!(code(resume(&system.connect(), &token)), Code::Unauthenticated);
}

#[test]
fn a_user_sending_or_changing_past_the_limit_is_refused_and_nothing_is_stored_while_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let writes = services::throttle::Bucket { burst: 3, every: Duration::from_millis(300) };
    let throttle = services::throttle::Config { writes, ..services::throttle::Config::unlimited() };
    let system =
        Standalone::start(standalone::Config { throttle, ..config(dir.path()) }).expect("standalone starts");
    let system = System::new(system.client_addr(), Box::new((system, dir)));
    let (alice_client, alice) = user_at(system.addr(), "alice");
    let (bob_client, bob) = user_at(system.addr(), "bob");
    let to_bob = direct(&alice, &bob);
    for n in 1..=3 {
        alice_client.send(to_bob, &format!("a-{n}"), "within the burst").expect("within the burst");
    }
    let refused = alice_client.send(to_bob, "a-4", "one too many").expect_err("past the burst");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(
        refused.to_string().contains("too many messages and changes from this user; try again in 1 s"),
        "{refused}"
    );
    // Changes to friends and groups draw on the same budget.
    let group = api::CreateGroupRequest { name: "spam".into(), ..Default::default() };
    let refused = alice_client.gateway.create_group(&group).expect_err("past the burst");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    // Bob, whose own budget is untouched, answers meanwhile.
    bob_client.send(to_bob, "b-1", "hi alice").expect("another user sends on");
    let history = api::HistoryRequest { conversation: Some(to_bob), ..Default::default() };
    let stored: Vec<String> =
        bob_client.gateway.history(&history).unwrap().messages.into_iter().map(|m| m.client_msg_id).collect();
    assert_eq!(stored, ["a-1", "a-2", "a-3", "b-1"], "the refused message was not stored");
    // The same message, sent again once the budget refilled a little, is stored once.
    wait_until(Duration::from_secs(10), "alice may send again", || {
        match alice_client.send(to_bob, "a-4", "one too many") {
            Ok(sent) => !sent.duplicate,
            Err(e) if e.code() == Code::ResourceExhausted => false,
            Err(e) => panic!("after the wait: {e}"),
        }
    });
}

mod mysql {
    use std::sync::Arc;

    use services::standalone::Standalone;
    use services::store::MySql;

    use super::System;
    use crate::support::{drop_database, mysql_url, unique_name, unreachable, with_database};

    /// Drops the test's database.
    struct DropDatabase(String);

    impl Drop for DropDatabase {
        fn drop(&mut self) {
            drop_database(&self.0);
        }
    }

    /// The standalone system over a fresh MySQL database instead of SQLite.
    fn start() -> System {
        let database = unique_name("chatroom_test");
        let url = with_database(&mysql_url(), &database);
        let guard = DropDatabase(database);
        let store = MySql::open(&url).unwrap_or_else(|e| unreachable("MariaDB", &url, &e));
        let dir = tempfile::tempdir().unwrap();
        let system =
            Standalone::with_store(super::config(dir.path()), Arc::new(store)).expect("standalone starts");
        // The system stops before its database is dropped.
        System::new(system.client_addr(), Box::new((system, guard, dir)))
    }

    chat_suite!(start);
}
