//! `proto/chat.proto` compiles, defines what the cluster needs, and documents everything
//! (its comments become the doc comments of the generated code).

use std::path::Path;

fn proto_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/proto"))
}

#[test]
fn compiles_with_the_expected_services() {
    let files = protox::compile(["chat.proto"], [proto_dir()]).expect("chat.proto compiles");
    let file = files.file.iter().find(|f| f.name() == "chat.proto").expect("chat.proto itself");
    assert_eq!(file.package(), "chatroom");
    let services: Vec<(&str, Vec<&str>)> =
        file.service.iter().map(|s| (s.name(), s.method.iter().map(|m| m.name()).collect())).collect();
    let gateway = &services.iter().find(|(name, _)| *name == "Gateway").expect("Gateway").1;
    for rpc in [
        "Register",
        "Login",
        "Logout",
        "AddFriend",
        "RemoveFriend",
        "ListFriends",
        "CreateGroup",
        "JoinGroup",
        "LeaveGroup",
        "ListGroups",
        "GroupMembers",
        "Invite",
        "RemoveMember",
        "SendMessage",
        "History",
        "Sync",
        "Ack",
    ] {
        assert!(gateway.contains(&rpc), "Gateway.{rpc} is missing");
    }
    let names: Vec<&str> = services.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["Gateway", "UserService", "ChatService", "Delivery"]);
    let delivery = &services[3].1;
    assert!(delivery.contains(&"DeliverBatch") && delivery.contains(&"NotifyPresence"));
    for push in ["Message", "PresenceChanged", "Kicked", "Push"] {
        assert!(file.message_type.iter().any(|m| m.name() == push), "message {push} is missing");
    }
}

#[test]
fn every_definition_has_a_comment() {
    let text = std::fs::read_to_string(proto_dir().join("chat.proto")).unwrap();
    let mut previous = "";
    let mut undocumented = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let defines = line.starts_with("message ")
            || line.starts_with("service ")
            || line.starts_with("rpc ")
            || line.starts_with("oneof ")
            // A field: `type name = N;`.
            || (line.ends_with(';') && line.contains(" = ") && !line.starts_with("syntax"));
        if defines && !previous.starts_with("//") {
            undocumented.push(format!("line {}: {line}", n + 1));
        }
        if !line.is_empty() {
            previous = line;
        }
    }
    assert!(undocumented.is_empty(), "undocumented definitions:\n{}", undocumented.join("\n"));
}

/// The build script declares the user service's hashing methods heavy: they run on its
/// heavy lane, and its other methods on the workers.
#[test]
fn only_the_password_hashing_methods_are_heavy() {
    use rpc_core::server::Service;
    use services::api::{user_service_rpc, UserServiceServer};

    let dir = tempfile::tempdir().unwrap();
    let store = services::store::Sqlite::open(dir.path().join("chatroom.db")).unwrap();
    let users = UserServiceServer(services::user_service::UserService::new(std::sync::Arc::new(store)));
    let heavy = rpc_core::server::HEAVY;
    assert_eq!(users.lanes(), [("Register", heavy), ("VerifyLogin", heavy), ("ChangePassword", heavy)]);
    assert!(user_service_rpc::methods::ALL.iter().all(|m| !users.runs_inline(m)));
}

/// Register and Login (a password hash each) share the proxy's logins lane, Resume (a
/// token lookup) has a lane of its own, so a flood of logins never holds up a resume;
/// every other Gateway method runs on the workers.
#[test]
fn the_gateways_logins_and_resumes_run_in_lanes_of_their_own() {
    use rpc_core::server::{Lane, Service};
    use services::api::GatewayServer;
    use services::proxy::{LOGINS_LANE, RESUMES_LANE};

    let registry = rpc_core::registry::Memory::new();
    let presence = std::sync::Arc::new(services::presence::Memory::new());
    let proxy = services::proxy::Proxy::new(services::proxy::Config::default(), &registry, presence).unwrap();
    let gateway = GatewayServer(proxy);
    assert_eq!(
        gateway.lanes(),
        [("Register", LOGINS_LANE), ("Login", LOGINS_LANE), ("Resume", RESUMES_LANE)]
    );
    assert_ne!(LOGINS_LANE, RESUMES_LANE);
    // The lanes are the proxy's own, sized for calls that wait on services.
    let config =
        services::proxy::gateway_config(rpc_core::server::Config { workers: 16, ..Default::default() });
    assert_eq!(config.workers, 16 * services::proxy::GATEWAY_WORKER_FACTOR);
    let per_connection = Some(services::proxy::OPENINGS_WAITING_PER_CONNECTION);
    let logins = Lane {
        workers: services::proxy::LOGIN_THREADS,
        max_queued: services::proxy::MAX_LOGINS_WAITING,
        max_queued_per_connection: per_connection,
    };
    assert_eq!(config.lane(LOGINS_LANE), logins);
    let resumes = Lane {
        workers: services::proxy::RESUME_THREADS,
        max_queued: services::proxy::MAX_RESUMES_WAITING,
        max_queued_per_connection: per_connection,
    };
    assert_eq!(config.lane(RESUMES_LANE), resumes);
    // One client runs no more calls at once than with the process's own workers.
    assert_eq!(config.running_per_connection(), 12);
}
