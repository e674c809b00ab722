//! The cluster secret: what the processes of one chat system prove to each other
//! before any of them takes a call on an internal port.
//!
//! The user service, the chat service and each proxy's `Delivery` listener serve only
//! peers that prove they hold the secret, and every channel a process opens to them
//! proves it (rpc-core's shared-secret handshake: an HMAC over a nonce from each side,
//! so the secret never crosses the wire, and each side checks the other). The proxies'
//! client port stays open to clients.
//!
//! The secret is 32 random bytes, kept as 64 hex digits in a file only its owner may
//! read (mode 0600): `chatroom cluster up` makes `cluster.secret` in the cluster's state
//! directory and `chatroom standalone` in its data directory, each reusing the file it
//! finds there. A process takes it from a file (`--cluster-secret-file`,
//! `CHATROOM_CLUSTER_SECRET_FILE`) or, in hex, from `--cluster-secret` or
//! `CHATROOM_CLUSTER_SECRET`.
//!
//! The same secret closes the cluster's ZooKeeper root to everyone else: every
//! process that joins the cluster proves a ZooKeeper `digest` identity derived from it
//! ([`ClusterSecret::registry_config`]), and the registry's znodes admit only that
//! identity, for reading as much as for changing. No second secret is handed out, and
//! the secret itself never reaches ZooKeeper.

use std::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{Hmac, Mac as _};
use rpc_core::auth::{Authenticator, Credential};
use rpc_core::registry::{self, Access, Identity};
use sha2::Sha256;

/// The file name of the secret in a cluster's state directory or a standalone data directory.
pub const FILE: &str = "cluster.secret";
/// The user of the cluster's ZooKeeper `digest` identity.
pub const ZOOKEEPER_USER: &str = "chatroom";
/// What the HMAC that makes the identity's password is taken over.
const ZOOKEEPER_LABEL: &[u8] = b"chatroom zookeeper-digest";

/// Bytes of a generated secret.
pub const LEN: usize = 32;
/// The fewest bytes a secret given by hand may have.
pub const MIN_LEN: usize = 16;

/// Reading, parsing or writing the secret failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read, created or written.
    #[error("cannot use the cluster secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The file can be read by other users than its owner.
    #[error("the cluster secret file {path} is readable by others (mode {mode:o}); `chmod 600` it")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file belongs to another user, who could change it.
    #[error("the cluster secret file {path} belongs to user {owner}, not to this process's user")]
    ForeignOwner {
        /// The file.
        path: PathBuf,
        /// Its owner's user id.
        owner: u32,
    },
    /// The text is not a secret: not hex, or too short.
    #[error("the cluster secret from {from} is not valid: {why}")]
    Invalid {
        /// Where it came from (a file, a flag).
        from: String,
        /// What is wrong with it.
        why: String,
    },
}

/// A cluster's shared secret. Cheap to clone; its `Debug` form never shows it.
#[derive(Clone)]
pub struct ClusterSecret {
    /// The secret's bytes.
    bytes: Arc<[u8]>,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterSecret").finish_non_exhaustive()
    }
}

impl ClusterSecret {
    /// A new random secret of [`LEN`] bytes.
    pub fn generate() -> ClusterSecret {
        let bytes: [u8; LEN] = rand::random();
        ClusterSecret { bytes: bytes.into() }
    }

    /// Parses a secret written in hex, as the file holds it, naming `from` in errors.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the text is not hex or holds fewer than [`MIN_LEN`] bytes.
    pub fn from_hex(text: &str, from: &str) -> Result<ClusterSecret, Error> {
        let invalid = |why: &str| Error::Invalid { from: from.to_owned(), why: why.to_owned() };
        let text = text.trim();
        if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("expected hex digits, two per byte"));
        }
        if text.len() / 2 < MIN_LEN {
            return Err(invalid(&format!("expected at least {MIN_LEN} bytes ({} hex digits)", 2 * MIN_LEN)));
        }
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("checked to be hex"))
            .collect();
        Ok(ClusterSecret { bytes: bytes.into() })
    }

    /// Reads the secret from `path`, a file (not a symbolic link) of this process's
    /// user that only its owner may read. The checks and the read are made on one open
    /// handle, so the file cannot be swapped between them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when it cannot be read (a symbolic link included),
    /// [`Error::Exposed`] when others may read it, [`Error::ForeignOwner`] when another
    /// user owns it, [`Error::Invalid`] when it does not hold a secret.
    pub fn read(path: &Path) -> Result<ClusterSecret, Error> {
        let io = |source| Error::Io { path: path.to_owned(), source };
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
        let mut file = fs::OpenOptions::new().read(true).custom_flags(nofollow).open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Exposed { path: path.to_owned(), mode });
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            return Err(Error::ForeignOwner { path: path.to_owned(), owner: meta.uid() });
        }
        let mut text = String::new();
        io::Read::by_ref(&mut file).take(4096).read_to_string(&mut text).map_err(io)?;
        ClusterSecret::from_hex(&text, &path.display().to_string())
    }

    /// Reads the secret from `path`, or makes a new one there (mode 0600) when there is
    /// no file yet.
    ///
    /// # Errors
    ///
    /// As [`ClusterSecret::read`], and [`Error::Io`] when the file cannot be created.
    ///
    /// A new secret is written whole to a file of its own first and then linked in
    /// place, so no process ever reads a half-written secret, and a crash leaves either
    /// no file or a whole one.
    pub fn load_or_create(path: &Path) -> Result<ClusterSecret, Error> {
        let io = |source| Error::Io { path: path.to_owned(), source };
        if path.exists() {
            return ClusterSecret::read(path);
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let draft = path.with_file_name(format!(".{name}.{:016x}", rand::random::<u64>()));
        let secret = ClusterSecret::generate();
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&draft)
            .and_then(|mut file| writeln!(file, "{}", secret.to_hex()).and_then(|()| file.sync_all()));
        let linked = written.and_then(|()| fs::hard_link(&draft, path));
        let _ = fs::remove_file(&draft);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated a new cluster secret");
                Ok(secret)
            }
            // Made by another process just now: use that one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => ClusterSecret::read(path),
            Err(e) => Err(io(e)),
        }
    }

    /// The secret in hex, as the file holds it.
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A listener's authenticator that admits only peers proving this secret. Each call
    /// makes a new one, with counts of its own.
    pub fn authenticator(&self) -> Authenticator {
        Authenticator::shared_secret(&self.bytes)
    }

    /// A channel's credential proving this secret (and requiring the server to prove it).
    pub fn credential(&self) -> Credential {
        Credential::shared_secret(&self.bytes)
    }

    /// The ZooKeeper identity of the cluster's members: the `digest` user
    /// [`ZOOKEEPER_USER`] whose password is HMAC-SHA256(secret, "chatroom
    /// zookeeper-digest") in hex. ZooKeeper keeps only a hash of it; a process without
    /// the secret cannot make it.
    pub fn zookeeper_identity(&self) -> Identity {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.bytes).expect("HMAC takes a key of any length");
        mac.update(ZOOKEEPER_LABEL);
        let password: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        Identity::digest(ZOOKEEPER_USER, &password)
    }

    /// Registry settings for the cluster under `root`: its processes prove
    /// [`ClusterSecret::zookeeper_identity`], and the znodes they create admit only
    /// that identity ([`Access::Creator`]), for reading too: instance addresses are
    /// not secret, but nobody outside the cluster needs them.
    pub fn registry_config(&self, root: &str) -> registry::Config {
        registry::Config {
            root: root.to_owned(),
            identities: vec![self.zookeeper_identity()],
            access: Access::Creator,
            ..registry::Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let made = ClusterSecret::load_or_create(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = ClusterSecret::load_or_create(&path).unwrap();
        assert_eq!(made.to_hex(), again.to_hex(), "an existing file is reused");
        assert_eq!(made.to_hex().len(), 2 * LEN);
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        fs::write(&path, ClusterSecret::generate().to_hex()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(ClusterSecret::read(&path), Err(Error::Exposed { mode: 0o644, .. })));
    }

    #[test]
    fn a_symbolic_link_is_refused_and_creation_leaves_no_draft() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("elsewhere");
        ClusterSecret::load_or_create(&real).unwrap();
        let link = dir.path().join(FILE);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(ClusterSecret::read(&link), Err(Error::Io { .. })), "a link is not followed");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "only the secret and the link, no draft: {names:?}");
    }

    #[test]
    fn the_zookeeper_identity_is_derived_from_the_secret_and_differs_per_secret() {
        let secret = ClusterSecret::from_hex(&"ab".repeat(LEN), "a test").unwrap();
        let again = ClusterSecret::from_hex(&"ab".repeat(LEN), "a test").unwrap();
        assert_eq!(secret.zookeeper_identity(), again.zookeeper_identity());
        assert_ne!(secret.zookeeper_identity(), ClusterSecret::generate().zookeeper_identity());
        assert_eq!(secret.zookeeper_identity().scheme(), "digest");
        let config = secret.registry_config("/chatroom");
        assert_eq!((config.root.as_str(), config.access), ("/chatroom", Access::Creator));
    }

    #[test]
    fn text_that_is_not_a_secret_is_refused() {
        assert!(ClusterSecret::from_hex("zz", "a test").is_err());
        assert!(ClusterSecret::from_hex("abcd", "a test").is_err(), "too short");
        let secret = ClusterSecret::generate();
        let parsed = ClusterSecret::from_hex(&format!(" {}\n", secret.to_hex()), "a test").unwrap();
        assert_eq!(parsed.to_hex(), secret.to_hex());
        assert_eq!(format!("{secret:?}"), "ClusterSecret { .. }");
    }
}
