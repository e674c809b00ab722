//! The ZooKeeper registry with its znodes closed to all but its members
//! (`Access::Creator` and a digest identity), against the real ZooKeeper: a
//! client without the identity, or with a wrong password, can neither change
//! nor read them; a registry under the same root without the identity is
//! refused at once; a root left open is closed; and the members keep working
//! after a new connection and after a new session, when ZooKeeper has forgotten
//! their identity.

use std::net::ToSocketAddrs;
use std::time::Duration;

use rpc_core::registry::{self, Access, Discovery, Identity, Instance, Registry};
use zookeeper::{Acl, CreateMode, Permission, ZkError};

use crate::registry::{addr, znodes, Freezer, PROPAGATION};
use crate::support::{ids, shared_zk, unique_root, wait_until, zk_config, Cleanup, CleanupAs, Raw};

/// The members' identity, as `user:password`.
const MEMBER: &str = "member:the-right-password";

/// A closed registry's settings under `root`, proving the digest `user:password`.
fn closed(root: &str, digest: &str) -> registry::Config {
    let (user, password) = digest.split_once(':').unwrap();
    registry::Config {
        identities: vec![Identity::digest(user, password)],
        access: Access::Creator,
        ..zk_config(root)
    }
}

/// A member's registry under `root`.
fn member(zk: &str, root: &str) -> registry::ZooKeeper {
    registry::ZooKeeper::connect(zk, closed(root, MEMBER)).expect("a member connects")
}

#[test]
fn strangers_can_neither_change_nor_read_a_closed_registry() {
    let zk = shared_zk();
    let root = unique_root("closed");
    let _cleanup = CleanupAs { zk: zk.clone(), root: root.clone(), digest: MEMBER.to_owned() };
    let provider = member(&zk, &root);
    let _a = provider.register("svc", &Instance::new("a", addr(7301))).unwrap();
    let dir = format!("{root}/services/svc/instances");
    let insider = Raw::connect_as(&zk, MEMBER);
    let children = insider.children(&dir);
    assert_eq!(children.len(), 1, "{children:?}");
    let znode = format!("{dir}/{}", children[0].0);

    let fake = br#"{"id":"fake","addr":"127.0.0.1:9"}"#.to_vec();
    let strangers =
        [("no identity", Raw::connect(&zk)), ("a wrong password", Raw::connect_as(&zk, "member:wrong"))];
    for (who, stranger) in strangers {
        let z = &stranger.0;
        let open = || Acl::open_unsafe().clone();
        let refused = |what: &str, result: Result<(), ZkError>| {
            assert_eq!(result, Err(ZkError::NoAuth), "{who}: {what}");
        };
        refused("delete an instance", z.delete(&znode, None));
        refused("rewrite an instance", z.set_data(&znode, fake.clone(), None).map(drop));
        refused("reopen an instance", z.set_acl(&znode, open(), None).map(drop));
        refused(
            "add a fake instance",
            z.create(&format!("{dir}/fake-"), fake.clone(), open(), CreateMode::EphemeralSequential)
                .map(drop),
        );
        refused(
            "create under the root",
            z.create(&format!("{root}/x"), vec![], open(), CreateMode::Persistent).map(drop),
        );
        refused("reopen the root", z.set_acl(&root, open(), None).map(drop));
        refused("list the instances", z.get_children(&dir, false).map(drop));
        refused("read an instance", z.get_data(&znode, false).map(drop));
    }

    // A registry under the root without the identity, or with a wrong one, is
    // refused when it connects, and says why.
    for config in [zk_config(&root), closed(&root, "member:wrong")] {
        let err = registry::ZooKeeper::connect(&zk, config).unwrap_err();
        assert!(err.to_string().contains("NoAuth"), "{err}");
    }

    // Closing without an identity to prove is a mistake, said at once.
    let unproved = registry::Config { access: Access::Creator, ..zk_config(&root) };
    let err = registry::ZooKeeper::connect(&zk, unproved).unwrap_err();
    assert!(err.to_string().contains("needs an identity"), "{err}");

    // Members read it, and the instance is as it was.
    let consumer = member(&zk, &root);
    assert_eq!(ids(&consumer.instances("svc").unwrap()), ["a"]);
    assert_eq!(insider.children(&dir), children);
}

#[test]
fn a_root_left_open_is_closed_when_a_closed_registry_meets_it() {
    let zk = shared_zk();
    let root = unique_root("reclosed");
    let _cleanup = CleanupAs { zk: zk.clone(), root: root.clone(), digest: MEMBER.to_owned() };
    // An earlier, open, registry made the path.
    let open = registry::ZooKeeper::connect(&zk, zk_config(&root)).unwrap();
    open.register("svc", &Instance::new("old", addr(7311))).unwrap().deregister().unwrap();
    drop(open);

    let closed = member(&zk, &root);
    let _a = closed.register("svc", &Instance::new("a", addr(7312))).unwrap();
    let insider = Raw::connect_as(&zk, MEMBER);
    for node in [root.clone(), format!("{root}/services"), format!("{root}/services/svc/instances")] {
        let (acl, _) = insider.0.get_acl(&node).unwrap();
        assert!(acl.iter().all(|entry| entry.scheme == "digest"), "{node}: {acl:?}");
    }
    let stranger = Raw::connect(&zk);
    let dir = format!("{root}/services/svc/instances");
    let created =
        stranger.0.create(&format!("{dir}/fake-"), vec![], Acl::open_unsafe().clone(), CreateMode::Ephemeral);
    assert_eq!(created.map(drop), Err(ZkError::NoAuth));
    let victim = format!("{dir}/{}", insider.children(&dir)[0].0);
    assert_eq!(stranger.0.delete(&victim, None), Err(ZkError::NoAuth));
}

#[test]
fn a_root_made_open_by_address_is_closed_too_or_refused_when_it_cannot_be() {
    let zk = shared_zk();
    let anyone = || vec![Acl::new(Permission::ALL, "ip", "0.0.0.0/0")];
    // Made ahead of the cluster by someone without its secret, open to every IPv4
    // address: the first member closes it.
    let root = unique_root("squatted");
    let _cleanup = CleanupAs { zk: zk.clone(), root: root.clone(), digest: MEMBER.to_owned() };
    let squatter = Raw::connect(&zk);
    squatter.0.create(&root, vec![], anyone(), CreateMode::Persistent).unwrap();
    let first = member(&zk, &root);
    let _a = first.register("svc", &Instance::new("a", addr(7331))).unwrap();
    assert_eq!(squatter.0.get_children(&root, false).map(drop), Err(ZkError::NoAuth), "closed by the member");
    let fake = squatter.0.create(&format!("{root}/fake"), vec![], anyone(), CreateMode::Persistent);
    assert_eq!(fake.map(drop), Err(ZkError::NoAuth));

    // Open by address but without the right to change its ACL: it cannot be
    // closed, so no member registers under it.
    let root = unique_root("squatted-for-good");
    let _cleanup = Cleanup { zk: zk.clone(), root: root.clone() };
    let kept = vec![Acl::new(
        Permission::READ | Permission::WRITE | Permission::CREATE | Permission::DELETE,
        "ip",
        "0.0.0.0/0",
    )];
    squatter.0.create(&root, vec![], kept, CreateMode::Persistent).unwrap();
    let refused = registry::ZooKeeper::connect(&zk, closed(&root, MEMBER));
    assert!(refused.is_err(), "a member connected under a root it cannot close");
}

#[test]
fn members_prove_their_identity_again_on_a_new_connection_and_in_a_new_session() {
    let zk = shared_zk();
    let root = unique_root("reproved");
    let _cleanup = CleanupAs { zk: zk.clone(), root: root.clone(), digest: MEMBER.to_owned() };
    let freezer = Freezer::start(zk.to_socket_addrs().unwrap().next().unwrap());
    let _thaw = freezer.thaw_on_drop();
    let config = registry::Config {
        session_timeout: Duration::from_secs(4),
        operation_timeout: Duration::from_secs(5),
        ..closed(&root, MEMBER)
    };
    // One registry both provides and consumes, through the forwarder.
    let registry = registry::ZooKeeper::connect(&freezer.addr.to_string(), config).unwrap();
    let _a = registry.register("svc", &Instance::new("a", addr(7321))).unwrap();
    let discovery = Discovery::new(&registry, "svc").unwrap();
    assert_eq!(ids(&discovery.instances()), ["a"]);
    let insider = Raw::connect_as(&zk, MEMBER);
    let before = znodes(&insider, &root, "svc");

    // The connection closes; the client reconnects in the same session, on a
    // connection where ZooKeeper knows no identity until the registry proves it
    // again. Registering and watching need it.
    let made = freezer.connections();
    freezer.cut();
    wait_until(Duration::from_secs(10), "a new connection", || freezer.connections() > made);
    let _b = registry.register("svc", &Instance::new("b", addr(7322))).unwrap();
    assert!(discovery.wait_until(PROPAGATION, |set| ids(set) == ["a", "b"]), "{:?}", discovery.instances());
    let now = znodes(&insider, &root, "svc");
    assert_eq!(now[0], before[0], "the same session holds the first instance");

    // The connection freezes until the session expires: a new session, where the
    // registrations are made again and the watch armed again.
    freezer.freeze();
    wait_until(Duration::from_secs(30), "re-registration in a new session", || {
        let now = znodes(&insider, &root, "svc");
        now.len() == 2 && now.iter().all(|(_, owner)| *owner != before[0].1)
    });
    let _c = registry.register("svc", &Instance::new("c", addr(7323))).unwrap();
    assert!(
        discovery.wait_until(PROPAGATION, |set| ids(set) == ["a", "b", "c"]),
        "{:?}",
        discovery.instances()
    );
}
