//! The cluster's ZooKeeper root admits only the cluster's members: a ZooKeeper client
//! without the cluster secret's identity, or with one made from a wrong secret, can
//! neither delete, rewrite nor add an instance, create anything under the root, nor list
//! the instances; a process with a wrong secret cannot join. Checked on the processes of
//! `chat_cluster` and on a cluster made by `chatroom cluster up` (`cluster_up_down`).

use std::time::Duration;

use hmac::{Hmac, Mac};
use rpc_core::registry::ZooKeeper;
use services::api::user_service_rpc;
use services::secret::ClusterSecret;
use sha2::Sha256;
use zookeeper::{Acl, CreateMode, ZkError};

use crate::support::wait_until;

/// The ZooKeeper `digest` identity `services::secret` documents for `secret`, made here
/// from that description: user `chatroom`, password HMAC-SHA256(secret, "chatroom
/// zookeeper-digest") in hex.
fn documented_identity(secret: &ClusterSecret) -> String {
    let hex = secret.to_hex();
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(&bytes).unwrap();
    mac.update(b"chatroom zookeeper-digest");
    let password: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("chatroom:{password}")
}

/// A plain ZooKeeper client at `zk`, proving the `digest` identity `user:password` if given.
fn raw(zk: &str, digest: Option<&str>) -> zookeeper::ZooKeeper {
    let client = zookeeper::ZooKeeper::connect(zk, Duration::from_secs(10), |_: zookeeper::WatchedEvent| {})
        .expect("a ZooKeeper client (`bash scripts/services.sh up` starts ZooKeeper)");
    wait_until(Duration::from_secs(10), "a ZooKeeper session", || client.exists("/", false).is_ok());
    if let Some(digest) = digest {
        client.add_auth("digest", digest.as_bytes().to_vec()).expect("addauth digest");
    }
    client
}

/// Asserts that the registry under `root`, where a cluster with `secret` has registered
/// its user service, admits only members: see the module's head.
pub fn assert_only_members_reach_the_registry(zk: &str, root: &str, secret: &ClusterSecret) {
    let dir = format!("{root}/services/{}/instances", user_service_rpc::SERVICE_NAME);
    let member = raw(zk, Some(&documented_identity(secret)));
    let names = member.get_children(&dir, false).expect("a member lists the user service's instances");
    assert!(!names.is_empty(), "the user service is registered");
    let znode = format!("{dir}/{}", names[0]);
    let (data, _) = member.get_data(&znode, false).expect("a member reads an instance");

    let wrong = documented_identity(&ClusterSecret::generate());
    for (who, stranger) in [("no secret", raw(zk, None)), ("a wrong secret", raw(zk, Some(&wrong)))] {
        let open = || Acl::open_unsafe().clone();
        let refused = |what: &str, result: Result<(), ZkError>| {
            assert_eq!(result, Err(ZkError::NoAuth), "{who}: {what}");
        };
        refused("delete an instance", stranger.delete(&znode, None));
        refused("rewrite an instance", stranger.set_data(&znode, b"{}".to_vec(), None).map(drop));
        let fake = format!("{dir}/fake-");
        refused(
            "add an instance",
            stranger.create(&fake, data.clone(), open(), CreateMode::EphemeralSequential).map(drop),
        );
        refused(
            "create under the root",
            stranger.create(&format!("{root}/x"), vec![], open(), CreateMode::Persistent).map(drop),
        );
        refused("list the instances", stranger.get_children(&dir, false).map(drop));
        refused("read an instance", stranger.get_data(&znode, false).map(drop));
    }
    let err = ZooKeeper::connect(zk, ClusterSecret::generate().registry_config(root)).unwrap_err();
    assert!(err.to_string().contains("NoAuth"), "a process with a wrong secret cannot join: {err}");
    assert_eq!(member.get_children(&dir, false).unwrap(), names, "the instances are untouched");
}
