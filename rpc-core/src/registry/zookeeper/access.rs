//! Who the registry is to ZooKeeper, and who may touch the znodes it creates.
//!
//! ZooKeeper checks an access control list (ACL) on every znode: reading it and
//! listing its children take `read`, creating and deleting its children take
//! `create` and `delete` on it, changing its data takes `write`. A znode made
//! with the open ACL (`world:anyone`, every permission, ZooKeeper's default)
//! lets anyone who reaches ZooKeeper delete every instance of a service, or add
//! a fake one. [`Access::Creator`] closes the registry's znodes to all but the
//! clients that prove one of its [`Identity`]s.

use zookeeper::{Acl, Permission};

/// An identity the registry proves to ZooKeeper on every connection, as
/// ZooKeeper's `addauth` command does.
///
/// ZooKeeper forgets a connection's identities when it closes, so the
/// registry proves them again on every new connection, within a session or in
/// a new one. Its `Debug` form shows the scheme only.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub struct Identity {
    /// The authentication scheme, e.g. `digest`.
    scheme: String,
    /// What the scheme checks, e.g. `user:password`.
    auth: Vec<u8>,
}

impl Identity {
    /// The `digest` scheme's identity `user` with `password`, which ZooKeeper
    /// knows as `digest:user:base64(sha1(user:password))`. `user` must not
    /// contain `:`.
    pub fn digest(user: &str, password: &str) -> Identity {
        Identity::new("digest", format!("{user}:{password}").into_bytes())
    }

    /// An identity of any scheme the ZooKeeper servers know, with the bytes
    /// that scheme expects.
    pub fn new(scheme: impl Into<String>, auth: Vec<u8>) -> Identity {
        Identity { scheme: scheme.into(), auth }
    }

    /// The scheme.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// What the scheme checks.
    pub(super) fn auth(&self) -> &[u8] {
        &self.auth
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("scheme", &self.scheme).finish_non_exhaustive()
    }
}

/// Who may read and change the znodes a registry creates: `{root}` and
/// everything under it.
///
/// Nodes above `{root}` that the registry has to create (`/apps` for the root
/// `/apps/chat`) are always created open: they may be shared with other users
/// of ZooKeeper, and they hold nothing of the registry's but the way to its
/// root, which is never empty and so cannot be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub enum Access {
    /// Anyone who reaches ZooKeeper may read, create, change and delete
    /// (`world:anyone`, every permission). The default, for a ZooKeeper that
    /// only trusted processes reach.
    #[default]
    Open,
    /// Only clients that prove one of the registry's [`Identity`]s may do
    /// anything, reading included (ZooKeeper's `auth` scheme with every
    /// permission, its "creator all" ACL). Everyone else gets `NoAuth`.
    ///
    /// Needs at least one identity. Registries that share a root must prove
    /// the same identity; a root made with one identity refuses registries
    /// with another, so a root belongs to one set of credentials. A node at or
    /// under the root that already exists with an ACL letting the world in
    /// (made by an earlier, open, registry) is closed when the registry meets
    /// it.
    Creator,
}

impl Access {
    /// The ACL of a node this registry creates at or under its root.
    pub(super) fn acl(self) -> Vec<Acl> {
        match self {
            Access::Open => Acl::open_unsafe().clone(),
            Access::Creator => Acl::creator_all().clone(),
        }
    }

    /// Whether an existing node's ACL lets in more than this access allows,
    /// so the registry must close it: any entry that grants something without
    /// a credential, to anyone (`world`) or by network address (`ip`, which
    /// `0.0.0.0/0` makes anyone). Entries of the authenticated schemes need a
    /// credential; one naming a stranger's digest leaves the registry refused
    /// under the node, which `connect` reports.
    pub(super) fn too_open(self, acl: &[Acl]) -> bool {
        match self {
            Access::Open => false,
            Access::Creator => acl.iter().any(|entry| {
                matches!(entry.scheme.as_str(), "world" | "ip") && entry.perms != Permission::NONE
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_identity_is_user_colon_password_and_hides_it() {
        let identity = Identity::digest("chatroom", "s3cret");
        assert_eq!((identity.scheme(), identity.auth()), ("digest", &b"chatroom:s3cret"[..]));
        assert!(!format!("{identity:?}").contains("s3cret"));
    }

    #[test]
    fn entries_that_need_no_credential_are_too_open_for_creator_access() {
        assert!(Access::Creator.too_open(Acl::open_unsafe()));
        assert!(Access::Creator.too_open(Acl::read_unsafe()));
        assert!(Access::Creator.too_open(&[Acl::new(Permission::ALL, "ip", "0.0.0.0/0")]));
        assert!(Access::Creator.too_open(&[Acl::new(Permission::READ, "ip", "127.0.0.1")]));
        let digest = [Acl::new(Permission::ALL, "digest", "chatroom:abc=")];
        assert!(!Access::Creator.too_open(&digest));
        assert!(!Access::Open.too_open(Acl::open_unsafe()));
    }
}
