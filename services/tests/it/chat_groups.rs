//! The private-group scenarios, end to end through a proxy: run by `chat_suite!` on the
//! standalone system (SQLite and MySQL) and on the cluster behind nginx.

use rpc_core::Code;
use services::api;

use crate::chat_client::{code, group, public_group, Client, System};

fn create(client: &Client, request: api::CreateGroupRequest) -> api::Group {
    client.gateway.create_group(&request).expect("creates the group").group.unwrap()
}

fn private(name: &str) -> api::CreateGroupRequest {
    api::CreateGroupRequest { name: name.into(), ..Default::default() }
}

fn join(client: &Client, group_id: u64) -> Result<api::JoinGroupResponse, rpc_core::Error> {
    client.gateway.join_group(&api::JoinGroupRequest { group_id })
}

fn invite(client: &Client, group_id: u64, user: &api::User) -> Result<api::InviteResponse, rpc_core::Error> {
    client.gateway.invite(&api::InviteRequest { group_id, user_id: user.id })
}

fn history(client: &Client, group_id: u64) -> Result<Vec<String>, rpc_core::Error> {
    let request = api::HistoryRequest { conversation: Some(group(group_id)), ..Default::default() };
    let page = client.gateway.history(&request)?;
    Ok(page.messages.into_iter().map(|m| m.body).collect())
}

/// What Sync returns for the group when the client says it holds nothing of it.
fn synced_from_zero(client: &Client, group_id: u64) -> Vec<String> {
    let cursors = vec![api::Cursor { conversation: Some(group(group_id)), seq: 0 }];
    let synced = client.gateway.sync(&api::SyncRequest { cursors, limit: 0 }).unwrap();
    synced.messages.into_iter().filter(|m| m.conversation == Some(group(group_id))).map(|m| m.body).collect()
}

/// The status text with the group's id taken out, to compare answers about two groups.
fn text(error: rpc_core::Error, id: u64) -> String {
    error.into_status().message.replace(&id.to_string(), "N")
}

pub fn a_private_group_is_joined_only_by_invitation(system: &System) {
    let (alice_client, _alice) = system.user("alice");
    let (bob_client, bob) = system.user("bob");
    let (eve_client, _eve) = system.user("eve");
    let secret = create(&alice_client, private("secret"));
    assert!(!secret.public, "private unless asked");
    assert_eq!(secret.history, api::HistoryVisibility::HistoryJoined as i32);
    alice_client.send(group(secret.id), "a-1", "for members").unwrap();

    // To a non-member, the private group answers as a missing one does.
    let missing = secret.id + 1_000_000;
    let refused = join(&bob_client, secret.id).expect_err("no invitation, no entry");
    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(text(refused, secret.id), text(join(&bob_client, missing).unwrap_err(), missing));
    let members =
        |client: &Client, group_id| client.gateway.group_members(&api::GroupMembersRequest { group_id });
    assert_eq!(
        text(members(&eve_client, secret.id).unwrap_err(), secret.id),
        text(members(&eve_client, missing).unwrap_err(), missing)
    );
    assert_eq!(code(history(&eve_client, secret.id)), Code::NotFound);
    assert_eq!(code(eve_client.send(group(secret.id), "e-1", "let me in")), Code::NotFound);
    assert_eq!(code(invite(&eve_client, secret.id, &bob)), Code::NotFound);

    let invitation = invite(&alice_client, secret.id, &bob).unwrap();
    assert!(invitation.expires_at_ms > secret.created_at_ms);
    assert_eq!(join(&bob_client, secret.id).unwrap().group.unwrap().id, secret.id);
    assert_eq!(code(join(&bob_client, secret.id)), Code::AlreadyExists);
    assert_eq!(code(invite(&alice_client, secret.id, &bob)), Code::AlreadyExists);
    bob_client.send(group(secret.id), "b-1", "thanks for having me").unwrap();
    alice_client.wait_push(
        "bob's message is pushed to alice",
        |event| matches!(event, api::push::Event::Message(m) if m.body == "thanks for having me"),
    );
    let nobody = api::InviteRequest { group_id: secret.id, user_id: u64::MAX };
    assert_eq!(code(alice_client.gateway.invite(&nobody)), Code::NotFound);
    // The invitation was used up: eve cannot ride on it.
    assert_eq!(code(join(&eve_client, secret.id)), Code::NotFound);
}

pub fn the_owner_removes_a_member_who_then_cannot_read_or_send(system: &System) {
    let (alice_client, _alice) = system.user("alice");
    let (bob_client, bob) = system.user("bob");
    let (carol_client, carol) = system.user("carol");
    let club = create(&alice_client, private("club"));
    for (client, user) in [(&bob_client, &bob), (&carol_client, &carol)] {
        invite(&alice_client, club.id, user).unwrap();
        join(client, club.id).unwrap();
    }
    bob_client.send(group(club.id), "b-1", "hello").unwrap();

    let remove = |client: &Client, user: &api::User| {
        client.gateway.remove_member(&api::RemoveMemberRequest { group_id: club.id, user_id: user.id })
    };
    assert_eq!(code(remove(&carol_client, &bob)), Code::PermissionDenied, "only the owner removes");
    remove(&alice_client, &bob).unwrap();
    assert_eq!(code(remove(&alice_client, &bob)), Code::NotFound, "not a member any more");

    alice_client.send(group(club.id), "a-1", "bob is gone").unwrap();
    carol_client.wait_push(
        "the message after the removal reaches carol",
        |event| matches!(event, api::push::Event::Message(m) if m.body == "bob is gone"),
    );
    assert_eq!(code(bob_client.send(group(club.id), "b-2", "still here?")), Code::NotFound);
    assert_eq!(code(history(&bob_client, club.id)), Code::NotFound);
    assert!(synced_from_zero(&bob_client, club.id).is_empty());
    assert!(bob_client.pushed_messages().iter().all(|m| m.body != "bob is gone"));
    assert!(bob_client.gateway.list_groups(&api::ListGroupsRequest {}).unwrap().groups.is_empty());
    assert_eq!(code(join(&bob_client, club.id)), Code::NotFound, "a new invitation is needed");
}

pub fn a_late_joiner_reads_from_their_join_on_unless_history_is_shared(system: &System) {
    let (alice_client, _alice) = system.user("alice");
    let (bob_client, bob) = system.user("bob");
    let joined = create(&alice_client, private("joined"));
    let shared = create(
        &alice_client,
        api::CreateGroupRequest {
            name: "shared".into(),
            history: api::HistoryVisibility::HistoryShared as i32,
            ..Default::default()
        },
    );
    assert_eq!(shared.history, api::HistoryVisibility::HistoryShared as i32);
    for g in [&joined, &shared] {
        alice_client.send(group(g.id), &format!("{}-1", g.name), "before").unwrap();
        invite(&alice_client, g.id, &bob).unwrap();
        join(&bob_client, g.id).unwrap();
        alice_client.send(group(g.id), &format!("{}-2", g.name), "after").unwrap();
    }

    assert_eq!(history(&bob_client, joined.id).unwrap(), ["after"]);
    assert_eq!(synced_from_zero(&bob_client, joined.id), ["after"]);
    assert_eq!(history(&bob_client, shared.id).unwrap(), ["before", "after"]);
    assert_eq!(synced_from_zero(&bob_client, shared.id), ["before", "after"]);
    assert_eq!(history(&alice_client, joined.id).unwrap(), ["before", "after"], "the owner was there");

    // Leaving and rejoining: from the latest join on.
    bob_client.gateway.leave_group(&api::LeaveGroupRequest { group_id: joined.id }).unwrap();
    alice_client.send(group(joined.id), "joined-3", "while away").unwrap();
    invite(&alice_client, joined.id, &bob).unwrap();
    join(&bob_client, joined.id).unwrap();
    alice_client.send(group(joined.id), "joined-4", "welcome back").unwrap();
    assert_eq!(history(&bob_client, joined.id).unwrap(), ["welcome back"]);
    assert_eq!(synced_from_zero(&bob_client, joined.id), ["welcome back"]);
}

pub fn a_public_group_is_open_to_anyone(system: &System) {
    let (alice_client, _alice) = system.user("alice");
    let (bob_client, _bob) = system.user("bob");
    let (eve_client, _eve) = system.user("eve");
    let lobby = create(&alice_client, public_group("lobby"));
    assert!(lobby.public);
    alice_client.send(group(lobby.id), "a-1", "welcome").unwrap();
    join(&bob_client, lobby.id).unwrap();
    bob_client.send(group(lobby.id), "b-1", "hi all").unwrap();
    // Its history is still `joined` by default; its existence is no secret.
    assert_eq!(history(&bob_client, lobby.id).unwrap(), ["hi all"]);
    assert_eq!(code(history(&eve_client, lobby.id)), Code::PermissionDenied);
    assert_eq!(code(eve_client.send(group(lobby.id), "e-1", "hi")), Code::PermissionDenied);
}
