//! The end-to-end chat scenarios, written against any running chat system reachable at
//! one client address: [`Standalone`](services::standalone::Standalone) over SQLite and
//! over MySQL in `chat_standalone`, the real cluster behind nginx in `chatroom`'s
//! `chat_nginx` (which includes this file by path), with the private-group scenarios of
//! `chat_groups`.
//!
//! Scenarios never assume that two users share a proxy (behind nginx they rarely do), and
//! every user name goes through [`System::name`], so that scenarios sharing one system
//! never meet.

use rpc_core::Code;
use services::api;

use crate::chat_client::{code, direct, group, login_with, public_group, resume, System, PASSWORD, PATIENCE};

pub fn accounts_and_sessions_answer_with_clear_errors(system: &System) {
    let client = system.connect();
    assert_eq!(
        code(client.gateway.list_friends(&api::ListFriendsRequest {})),
        Code::Unauthenticated,
        "calls before login are refused"
    );
    let alice = system.register(&client, "alice");
    assert_eq!(alice.name, system.name("alice"));
    let taken = api::RegisterRequest {
        name: system.name("alice").to_uppercase(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    assert_eq!(code(client.gateway.register(&taken)), Code::AlreadyExists);
    let bad_name = api::RegisterRequest { name: "a".into(), password: PASSWORD.into(), ..Default::default() };
    assert_eq!(code(client.gateway.register(&bad_name)), Code::InvalidArgument);
    let short_password =
        api::RegisterRequest { name: system.name("bob"), password: "short".into(), ..Default::default() };
    assert_eq!(code(client.gateway.register(&short_password)), Code::InvalidArgument);
    let wrong = api::LoginRequest {
        name: system.name("alice"),
        password: "not the password".into(),
        ..Default::default()
    };
    assert_eq!(code(client.gateway.login(&wrong)), Code::Unauthenticated);

    let login = client.login(&system.name("Alice"));
    assert_eq!(login.user.unwrap().id, alice.id);
    assert!(!login.replaced_session);
    assert!(client.gateway.list_friends(&api::ListFriendsRequest {}).unwrap().friends.is_empty());
    client.gateway.logout(&api::LogoutRequest {}).unwrap();
    assert_eq!(code(client.gateway.list_groups(&api::ListGroupsRequest {})), Code::Unauthenticated);
}

pub fn calls_before_login_get_unauthenticated(system: &System) {
    let client = system.connect();
    let gateway = &client.gateway;
    let unauthenticated = Code::Unauthenticated;
    assert_eq!(code(gateway.logout(&api::LogoutRequest {})), unauthenticated, "logout");
    let find = api::FindUserRequest { name: system.name("anyone"), ..Default::default() };
    assert_eq!(code(gateway.find_user(&find)), unauthenticated, "find_user");
    let add = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(1)) };
    assert_eq!(code(gateway.add_friend(&add)), unauthenticated, "add_friend");
    assert_eq!(code(gateway.list_friends(&api::ListFriendsRequest {})), unauthenticated, "list_friends");
    let create = api::CreateGroupRequest { name: "g".into(), ..Default::default() };
    assert_eq!(code(gateway.create_group(&create)), unauthenticated, "create_group");
    assert_eq!(code(gateway.join_group(&api::JoinGroupRequest { group_id: 1 })), unauthenticated);
    assert_eq!(code(gateway.list_groups(&api::ListGroupsRequest {})), unauthenticated, "list_groups");
    assert_eq!(code(client.send(group(1), "x-1", "hi")), unauthenticated, "send_message");
    let history = api::HistoryRequest { conversation: Some(group(1)), ..Default::default() };
    assert_eq!(code(gateway.history(&history)), unauthenticated, "history");
    assert_eq!(code(gateway.sync(&api::SyncRequest::default())), unauthenticated, "sync");
    let ack = api::AckRequest { conversation: Some(group(1)), seq: 1 };
    assert_eq!(code(gateway.ack(&ack)), unauthenticated, "ack");

    // A failed login leaves the connection without a session; the connection still works.
    let wrong =
        api::LoginRequest { name: system.name("anyone"), password: PASSWORD.into(), ..Default::default() };
    assert_eq!(code(gateway.login(&wrong)), unauthenticated, "login as nobody");
    assert_eq!(code(gateway.sync(&api::SyncRequest::default())), unauthenticated, "sync after it");
    let me = system.register(&client, "anyone");
    client.login(&me.name);
    assert!(gateway.sync(&api::SyncRequest::default()).unwrap().messages.is_empty());
}

pub fn a_duplicate_name_is_refused_whatever_the_case_and_the_connection(system: &System) {
    let first = system.connect();
    let original = system.register(&first, "dup");
    for taken in [system.name("dup"), system.name("DUP"), system.name("Dup").to_uppercase()] {
        // From another connection, which behind nginx is often another proxy.
        let request =
            api::RegisterRequest { name: taken.clone(), password: PASSWORD.into(), ..Default::default() };
        let refused = system.connect().gateway.register(&request).expect_err("a taken name is refused");
        assert_eq!(refused.code(), Code::AlreadyExists, "{taken}");
    }
    // The account is untouched: the first password still logs in, as the same user.
    assert_eq!(first.login(&original.name).user.unwrap().id, original.id);
}

pub fn two_users_chat_with_pushes_carrying_the_sequence(system: &System) {
    let (alice_client, alice) = system.user("alice");
    let (bob_client, bob) = system.user("bob");
    let to_bob = direct(&alice, &bob);

    let sent = alice_client.send(to_bob, "a-1", "hi bob").unwrap().message.unwrap();
    assert_eq!(sent.seq, 1);
    assert_eq!(sent.sender_id, alice.id);
    let got = bob_client.wait_messages(1);
    assert_eq!((got[0].seq, got[0].sender_id, got[0].body.as_str()), (1, alice.id, "hi bob"));

    let reply = bob_client.send(to_bob, "b-1", "hi alice").unwrap().message.unwrap();
    assert_eq!(reply.seq, 2);
    let got = alice_client.wait_messages(1);
    assert_eq!((got[0].seq, got[0].sender_id, got[0].body.as_str()), (2, bob.id, "hi alice"));
    assert!(alice_client.pushed_messages().iter().all(|m| m.sender_id != alice.id), "no echo to the sender");
}

pub fn an_offline_user_gets_everything_at_login_in_order(system: &System) {
    let (alice_client, alice) = system.user("alice");
    let bob_client = system.connect();
    let bob = system.register(&bob_client, "bob");
    for i in 1..=3 {
        alice_client.send(direct(&alice, &bob), &format!("m-{i}"), &format!("message {i}")).unwrap();
    }

    let login = bob_client.login(&bob.name);
    let state = login.conversations.iter().find(|c| c.conversation == Some(direct(&alice, &bob))).unwrap();
    assert_eq!((state.last_seq, state.unread), (3, 3));
    let synced = bob_client.gateway.sync(&api::SyncRequest::default()).unwrap();
    let seen: Vec<(u64, &str)> = synced.messages.iter().map(|m| (m.seq, m.body.as_str())).collect();
    assert_eq!(seen, [(1, "message 1"), (2, "message 2"), (3, "message 3")]);
    assert!(!synced.has_more);

    let ack = api::AckRequest { conversation: Some(direct(&alice, &bob)), seq: 3 };
    assert_eq!(bob_client.gateway.ack(&ack).unwrap().read_seq, 3);
    assert!(bob_client.gateway.sync(&api::SyncRequest::default()).unwrap().messages.is_empty());
}

pub fn only_members_send_to_a_group_and_members_get_it_pushed(system: &System) {
    let (alice_client, _alice) = system.user("alice");
    let (bob_client, _bob) = system.user("bob");
    let (carol_client, _carol) = system.user("carol");
    let created = alice_client.gateway.create_group(&public_group("team")).unwrap();
    let id = created.group.unwrap().id;
    bob_client.gateway.join_group(&api::JoinGroupRequest { group_id: id }).unwrap();

    assert_eq!(code(carol_client.send(group(id), "c-1", "let me in")), Code::PermissionDenied);
    let history = api::HistoryRequest { conversation: Some(group(id)), ..Default::default() };
    assert_eq!(code(carol_client.gateway.history(&history)), Code::PermissionDenied);

    let sent = alice_client.send(group(id), "a-1", "hello team").unwrap().message.unwrap();
    assert_eq!(sent.seq, 1);
    let got = bob_client.wait_messages(1);
    assert_eq!((got[0].seq, got[0].body.as_str()), (1, "hello team"));
    assert!(carol_client.pushed_messages().is_empty());
    let members =
        bob_client.gateway.group_members(&api::GroupMembersRequest { group_id: id }).unwrap().members;
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m.online));
}

pub fn a_resend_with_the_same_client_message_id_stores_nothing_new(system: &System) {
    let (alice_client, alice) = system.user("alice");
    let (bob_client, bob) = system.user("bob");
    let first = alice_client.send(direct(&alice, &bob), "same", "once").unwrap();
    let again = alice_client.send(direct(&alice, &bob), "same", "once").unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(first.message.unwrap().seq, again.message.unwrap().seq);

    let history = api::HistoryRequest { conversation: Some(direct(&alice, &bob)), ..Default::default() };
    assert_eq!(bob_client.gateway.history(&history).unwrap().messages.len(), 1);
    // The retry is pushed again (its first attempt may have died before pushing), with the
    // same sequence, which a client that tracks sequences shows once.
    let pushed = bob_client.wait_messages(2);
    assert_eq!(pushed.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 1]);
}

pub fn a_second_login_kicks_the_first_session(system: &System) {
    let (first, bob) = system.user("bob");
    let second = system.connect();
    let login = second.login(&bob.name);
    assert!(login.replaced_session);
    first.wait_push("the first session is kicked", |e| matches!(e, api::push::Event::Kicked(_)));
    assert!(first.gateway.list_friends(&api::ListFriendsRequest {}).is_err());

    let (alice_client, alice) = system.user("alice");
    alice_client.send(direct(&alice, &bob), "a-1", "which bob?").unwrap();
    assert_eq!(second.wait_messages(1)[0].body, "which bob?");
}

pub fn a_session_token_resumes_the_session_until_logout(system: &System) {
    let first = system.connect();
    let bob = system.register(&first, "bob");
    let token = login_with(&first, &bob.name, PASSWORD);
    assert_eq!(token.token.len(), 64);
    let in_a_day = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        as i64
        + 24 * 3_600_000;
    assert!(token.expires_at_ms > in_a_day, "a token lasts more than a day: {token:?}");

    // Another connection resumes the session without the password, replacing the first.
    let second = system.connect();
    let resumed = resume(&second, &token).expect("the token resumes the session");
    assert_eq!(resumed.user.as_ref().map(|u| u.id), Some(bob.id));
    assert!(resumed.replaced_session);
    assert_eq!(resumed.session_token, None, "a resume keeps the token it was given");
    first.wait_push("the older session is kicked", |e| matches!(e, api::push::Event::Kicked(_)));
    let (alice_client, alice) = system.user("alice");
    alice_client.send(direct(&alice, &bob), "a-1", "still there?").unwrap();
    assert_eq!(second.wait_messages(1)[0].body, "still there?");

    // Logging out revokes the token; closing a connection does not.
    let third = system.connect();
    resume(&third, &token).expect("the token still works after the second connection was replaced");
    // A refused resume or login on a connection with a session leaves that session.
    let unknown = api::SessionToken { token: token.token.chars().rev().collect(), ..token.clone() };
    assert_eq!(code(resume(&third, &unknown)), Code::Unauthenticated, "an unknown token");
    let wrong =
        api::LoginRequest { name: bob.name.clone(), password: "not it at all".into(), ..Default::default() };
    assert_eq!(code(third.gateway.login(&wrong)), Code::Unauthenticated, "a wrong password");
    third.gateway.list_friends(&api::ListFriendsRequest {}).expect("the session is still open");
    third.gateway.logout(&api::LogoutRequest {}).unwrap();
    let fourth = system.connect();
    assert_eq!(code(resume(&fourth, &token)), Code::Unauthenticated, "a logged-out token is revoked");
    for malformed in ["", "abc", &"G".repeat(64), &token.token.to_uppercase()] {
        let request = api::ResumeRequest { session_token: malformed.into() };
        assert_eq!(code(fourth.gateway.resume(&request)), Code::Unauthenticated, "{malformed:?}");
    }
    assert_eq!(code(fourth.gateway.list_friends(&api::ListFriendsRequest {})), Code::Unauthenticated);
}

pub fn a_password_change_revokes_every_session_token(system: &System) {
    const NEW_PASSWORD: &str = "a much better password";
    let laptop = system.connect();
    let carol = system.register(&laptop, "carol");
    let laptop_token = login_with(&laptop, &carol.name, PASSWORD);
    let phone = system.connect();
    let phone_token = login_with(&phone, &carol.name, PASSWORD);
    laptop.wait_push("the laptop's session is replaced", |e| matches!(e, api::push::Event::Kicked(_)));

    let change = |old: &str, new: &str| {
        let request = api::ChangePasswordRequest { old_password: old.into(), new_password: new.into() };
        phone.gateway.change_password(&request)
    };
    assert_eq!(code(change("not the password", NEW_PASSWORD)), Code::Unauthenticated);
    assert_eq!(code(change(PASSWORD, "short")), Code::InvalidArgument);
    let fresh = change(PASSWORD, NEW_PASSWORD).expect("the password changes").session_token.unwrap();
    assert_ne!(fresh.token, phone_token.token);
    let unauthenticated = || Code::Unauthenticated;
    // The session that changed the password lives on.
    phone.gateway.list_friends(&api::ListFriendsRequest {}).expect("the session goes on");
    let other = system.connect();
    assert_eq!(code(resume(&other, &laptop_token)), unauthenticated(), "the other device's token is revoked");
    assert_eq!(code(resume(&other, &phone_token)), unauthenticated(), "this session's old token too");
    let old_login =
        api::LoginRequest { name: carol.name.clone(), password: PASSWORD.into(), ..Default::default() };
    assert_eq!(code(other.gateway.login(&old_login)), unauthenticated(), "the old password is refused");

    // The fresh token resumes; the new password logs in.
    let later = system.connect();
    resume(&later, &fresh).expect("the fresh token resumes");
    login_with(&system.connect(), &carol.name, NEW_PASSWORD);
    assert_eq!(
        code(system.connect().gateway.change_password(&api::ChangePasswordRequest::default())),
        unauthenticated()
    );
}

pub fn friends_see_each_other_come_online(system: &System) {
    let (alice_client, _alice) = system.user("alice");
    let bob_client = system.connect();
    let bob = system.register(&bob_client, "bob");
    let added = alice_client.gateway.add_friend(&api::AddFriendRequest {
        friend: Some(api::add_friend_request::Friend::Name(bob.name.clone())),
    });
    let friend = added.unwrap().friend.unwrap();
    assert_eq!(friend.user.unwrap().id, bob.id);
    assert!(!friend.online);

    let login = bob_client.login(&bob.name);
    assert_eq!(login.friends.len(), 1);
    assert!(login.friends[0].online, "alice is online");
    alice_client.wait_push(
        "alice hears bob came online",
        |e| matches!(e, api::push::Event::Presence(p) if p.user_id == bob.id && p.online),
    );
    drop(bob_client);
    alice_client.wait_push(
        "alice hears bob went offline",
        |e| matches!(e, api::push::Event::Presence(p) if p.user_id == bob.id && !p.online),
    );
}

pub fn bad_input_gets_clear_errors_and_the_proxy_keeps_serving(system: &System) {
    let (alice_client, alice) = system.user("alice");
    let bob = system.register(&system.connect(), "bob");

    let unknown =
        api::LoginRequest { name: system.name("nobody"), password: PASSWORD.into(), ..Default::default() };
    let refused = system.connect().gateway.login(&unknown).expect_err("an unknown user cannot log in");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let wrong = api::LoginRequest {
        name: alice.name.clone(),
        password: "not the password".into(),
        ..Default::default()
    };
    let also_refused = system.connect().gateway.login(&wrong).expect_err("a wrong password is refused");
    assert_eq!(refused.into_status().message, also_refused.into_status().message, "the same answer for both");

    let oversized = "x".repeat(4097);
    assert_eq!(code(alice_client.send(direct(&alice, &bob), "big", &oversized)), Code::InvalidArgument);
    // A request over the gateway's frame limit is refused unread, and the connection
    // stays usable (the last send below goes on it).
    let huge = "x".repeat(services::proxy::GATEWAY_MAX_REQUEST + 1);
    let refused = alice_client.send(direct(&alice, &bob), "huge", &huge).expect_err("over the frame limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.to_string().contains("maximum frame size"), "{refused}");
    assert_eq!(code(alice_client.send(direct(&alice, &alice), "me", "hi me")), Code::InvalidArgument);
    let nowhere =
        api::SendMessageRequest { conversation: None, client_msg_id: "n".into(), body: "hi".into() };
    assert_eq!(code(alice_client.gateway.send_message(&nowhere)), Code::InvalidArgument);

    // Garbage on the client port costs that connection only.
    let mut raw = std::net::TcpStream::connect(system.addr()).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\nHost: chatroom\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut sink);
    assert_eq!(alice_client.send(direct(&alice, &bob), "ok", "still here").unwrap().message.unwrap().seq, 1);
}

pub fn friends_groups_and_history_work_through_the_gateway(system: &System) {
    let (alice_client, alice) = system.user("alice");
    let (bob_client, bob) = system.user("bob");
    let by_id = api::AddFriendRequest { friend: Some(api::add_friend_request::Friend::UserId(bob.id)) };
    assert!(alice_client.gateway.add_friend(&by_id).unwrap().friend.unwrap().online);
    assert_eq!(code(alice_client.gateway.add_friend(&by_id)), Code::AlreadyExists);
    let bobs = bob_client.gateway.list_friends(&api::ListFriendsRequest {}).unwrap().friends;
    assert_eq!(bobs.iter().map(|f| f.user.as_ref().unwrap().id).collect::<Vec<_>>(), [alice.id]);
    alice_client.gateway.remove_friend(&api::RemoveFriendRequest { user_id: bob.id }).unwrap();
    assert!(bob_client.gateway.list_friends(&api::ListFriendsRequest {}).unwrap().friends.is_empty());
    let found = alice_client
        .gateway
        .find_user(&api::FindUserRequest { name: bob.name.to_uppercase(), ..Default::default() })
        .unwrap();
    assert_eq!(found.user.unwrap().user.unwrap().id, bob.id);
    let by_id = api::FindUserRequest { user_id: bob.id, ..Default::default() };
    let found = alice_client.gateway.find_user(&by_id).unwrap().user.unwrap().user.unwrap();
    assert_eq!((found.id, found.name.as_str()), (bob.id, bob.name.as_str()), "a user is found by id too");
    let no_id = api::FindUserRequest { user_id: u64::MAX, ..Default::default() };
    assert_eq!(code(alice_client.gateway.find_user(&no_id)), Code::NotFound);
    let nobody = api::FindUserRequest { name: system.name("nobody"), ..Default::default() };
    assert_eq!(code(alice_client.gateway.find_user(&nobody)), Code::NotFound);

    let id = alice_client.gateway.create_group(&public_group("g")).unwrap();
    let id = id.group.unwrap().id;
    bob_client.gateway.join_group(&api::JoinGroupRequest { group_id: id }).unwrap();
    assert_eq!(
        code(bob_client.gateway.join_group(&api::JoinGroupRequest { group_id: id })),
        Code::AlreadyExists
    );
    assert_eq!(bob_client.gateway.list_groups(&api::ListGroupsRequest {}).unwrap().groups.len(), 1);
    bob_client.gateway.leave_group(&api::LeaveGroupRequest { group_id: id }).unwrap();
    assert!(bob_client.gateway.list_groups(&api::ListGroupsRequest {}).unwrap().groups.is_empty());
    assert_eq!(
        code(bob_client.gateway.group_members(&api::GroupMembersRequest { group_id: id })),
        Code::PermissionDenied
    );

    for i in 1..=5 {
        alice_client.send(direct(&alice, &bob), &format!("h-{i}"), &format!("line {i}")).unwrap();
    }
    let page = |anchor, limit| {
        let request = api::HistoryRequest { conversation: Some(direct(&alice, &bob)), anchor, limit };
        let page = bob_client.gateway.history(&request).unwrap();
        (page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), page.has_more)
    };
    assert_eq!(page(None, 2), (vec![4, 5], true));
    assert_eq!(page(Some(api::history_request::Anchor::BeforeSeq(4)), 2), (vec![2, 3], true));
    assert_eq!(page(Some(api::history_request::Anchor::AfterSeq(3)), 10), (vec![4, 5], false));
}

/// The scenarios above as tests of the system `$start()` returns: once per store here, and
/// on the cluster behind nginx in `chat_nginx`.
macro_rules! chat_suite {
    ($start:path) => {
        chat_suite!(@tests $start; chat_scenarios;
            accounts_and_sessions_answer_with_clear_errors,
            calls_before_login_get_unauthenticated,
            a_duplicate_name_is_refused_whatever_the_case_and_the_connection,
            two_users_chat_with_pushes_carrying_the_sequence,
            an_offline_user_gets_everything_at_login_in_order,
            only_members_send_to_a_group_and_members_get_it_pushed,
            a_resend_with_the_same_client_message_id_stores_nothing_new,
            a_second_login_kicks_the_first_session,
            friends_see_each_other_come_online,
            bad_input_gets_clear_errors_and_the_proxy_keeps_serving,
            friends_groups_and_history_work_through_the_gateway,
            a_session_token_resumes_the_session_until_logout,
            a_password_change_revokes_every_session_token,
        );
        chat_suite!(@tests $start; chat_groups;
            a_private_group_is_joined_only_by_invitation,
            the_owner_removes_a_member_who_then_cannot_read_or_send,
            a_late_joiner_reads_from_their_join_on_unless_history_is_shared,
            a_public_group_is_open_to_anyone,
        );
    };
    (@tests $start:path; $module:ident; $($name:ident,)*) => {
        $(
            #[test]
            fn $name() {
                $crate::$module::$name(&$start());
            }
        )*
    };
}
