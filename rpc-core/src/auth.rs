//! Authentication in the connection handshake: who may call a listener.
//!
//! A server whose `server::Config::authenticator` is set runs no handler for a
//! connection until the peer has passed a handshake; a channel whose
//! `client::Config::credential` is set runs that handshake on every connection
//! it opens, before its first call. Until a connection has passed, the server
//! answers each of its requests with `Unauthenticated`, marked not run, and
//! counts and logs the attempt ([`Authenticator::refused_connections`]); a peer
//! that has not passed within [`Authenticator::timeout`] is closed. A listener
//! without an authenticator speaks the protocol as before, at no cost.
//!
//! The handshake travels in `Auth` frames (kind 7): the service field names the
//! mechanism, the method field the step, the body carries the step's bytes. The
//! client speaks first; the two sides trade steps until the server sends `ok`
//! (passed) or `refused` (failed, for good on this connection). A mechanism is
//! a pair of traits, [`Verify`] on the server and [`Prove`] on the client,
//! whose handshakes exchange [`Message`]s; the framing, the bounds (time,
//! steps, bytes), the refusals and the counting are rpc-core's. One mechanism
//! comes with the crate: [`SharedSecret`], which proves that both sides know
//! the same secret without sending it. A mechanism that authenticates the peer
//! by other means (a TLS certificate checked below the frames) plugs in at the
//! same place and accepts at its first step.
//!
//! `docs/PROTOCOL.md`, "Authentication", has the exchange byte by byte.
//!
//! ```
//! use rpc_core::auth::{Authenticator, Credential};
//! use rpc_core::client::{self, Channel};
//! use rpc_core::server::{self, Builder};
//! use rpc_core::Code;
//! # fn main() -> Result<(), rpc_core::Error> {
//! let secret = b"32 random bytes the cluster shares";
//! let authenticator = Authenticator::shared_secret(secret);
//! let config = server::Config { authenticator: Some(authenticator.clone()), ..server::Config::default() };
//! # let my_service = rpc_core::server::tests_support::Echo;
//! let server = Builder::new(config).service(my_service).bind("127.0.0.1:0")?;
//!
//! let credential = Credential::shared_secret(secret);
//! let member = Channel::connect(
//!     server.local_addr(),
//!     client::Config { credential: Some(credential), ..client::Config::default() },
//! )?;
//! assert_eq!(&member.call_raw("test.Echo", "Say", b"hi", None)?[..], b"hi");
//!
//! let stranger = Channel::connect(server.local_addr(), client::Config::default())?;
//! let refused = stranger.call_raw("test.Echo", "Say", b"hi", None).unwrap_err();
//! assert_eq!(refused.code(), Code::Unauthenticated);
//! assert_eq!(authenticator.refused_connections(), 1);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod gate;
mod handshake;
mod shared_secret;

pub(crate) use gate::{Gate, Gated};
pub(crate) use handshake::run as client_handshake;
pub use shared_secret::SharedSecret;

/// The step the server sends when the client has passed.
pub const STEP_OK: &str = "ok";
/// The step the server sends when the client has failed; its body says why.
pub const STEP_REFUSED: &str = "refused";
/// Largest body of one handshake step, in bytes: a peer that has not proved
/// anything yet can make the server hold no more.
pub const MAX_STEP_BODY: usize = 1024;
/// Most handshake steps a client may send on one connection.
pub const MAX_STEPS: usize = 8;
/// Largest frame read from a connection that has not passed yet; a larger one
/// is refused as too large and skipped, so a stranger cannot make the server
/// buffer a maximum-size frame.
pub const MAX_UNAUTHENTICATED_FRAME: usize = 64 * 1024;
/// How long a peer has to pass the handshake by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Refusals are logged at most once per this interval (the others are counted
/// and summed into the next line), so a flood of strangers cannot flood the log.
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// One step of a handshake, as carried by an `Auth` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The step's name (the frame's method field), at most 255 bytes.
    pub step: String,
    /// The step's bytes, at most [`MAX_STEP_BODY`].
    pub body: Vec<u8>,
}

impl Message {
    /// A step named `step` carrying `body`.
    pub fn new(step: impl Into<String>, body: Vec<u8>) -> Message {
        Message { step: step.into(), body }
    }
}

/// What the server's side of a handshake says after a client's step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send this step to the client and wait for its next one.
    Continue(Message),
    /// The client has proved itself; the server sends `ok`.
    Accept,
    /// The client failed; the reason goes to the server's log, and the client
    /// is only told `refused`.
    Refuse(String),
}

/// A mechanism's server side: starts the handshake of each new connection.
pub trait Verify: Send + Sync + fmt::Debug + 'static {
    /// The mechanism's name, sent in the service field of every `Auth` frame.
    fn mechanism(&self) -> &str;

    /// Begins the handshake of a connection from `peer`.
    fn start(&self, peer: SocketAddr) -> Box<dyn ServerHandshake>;
}

/// The server's side of one connection's handshake.
pub trait ServerHandshake: Send {
    /// Takes the client's next step and says what follows.
    fn step(&mut self, message: &Message) -> Verdict;
}

/// A mechanism's client side: starts the handshake of each new connection.
pub trait Prove: Send + Sync + fmt::Debug + 'static {
    /// The mechanism's name, sent in the service field of every `Auth` frame.
    fn mechanism(&self) -> &str;

    /// Begins a handshake: its state, and the first step to send.
    fn start(&self) -> (Box<dyn ClientHandshake>, Message);
}

/// The client's side of one connection's handshake.
pub trait ClientHandshake: Send {
    /// Takes the server's next step (never `ok` or `refused`, which rpc-core
    /// handles): the step to send back, or `None` to wait for the server's
    /// verdict.
    ///
    /// # Errors
    ///
    /// Why the server is not trusted (it failed to prove itself, or broke the
    /// mechanism); the connection is then closed.
    fn step(&mut self, message: &Message) -> Result<Option<Message>, String>;

    /// Asked when the server says `ok`: whether the server has proved itself by
    /// now. rpc-core sends no call on the connection unless this is `Ok`, so a
    /// server that answers `ok` before (or without) proving itself is refused.
    ///
    /// # Errors
    ///
    /// Why the server is not trusted yet.
    fn finish(&self) -> Result<(), String>;
}

/// A listener's authentication: the mechanism it requires, how long a peer has
/// to pass it, and what it refused. Cheap to clone; clones share the counts.
#[derive(Clone)]
pub struct Authenticator {
    /// The server side of the mechanism.
    verify: Arc<dyn Verify>,
    /// How long a new connection has to pass.
    timeout: Duration,
    /// Passes and refusals, shared by clones and every event loop.
    counts: Arc<Counts>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mechanism", &self.verify.mechanism())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Requires every connection to pass `verify`'s handshake within
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(verify: impl Verify) -> Authenticator {
        Authenticator { verify: Arc::new(verify), timeout: DEFAULT_TIMEOUT, counts: Arc::default() }
    }

    /// Requires every connection to prove that it knows `secret` (see [`SharedSecret`]).
    pub fn shared_secret(secret: &[u8]) -> Authenticator {
        Authenticator::new(SharedSecret::new(secret))
    }

    /// The same, with `timeout` to pass instead of the default.
    pub fn with_timeout(mut self, timeout: Duration) -> Authenticator {
        self.timeout = timeout;
        self
    }

    /// How long a new connection has to pass before it is closed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connections that passed.
    pub fn passed(&self) -> u64 {
        self.counts.passed.load(Ordering::Relaxed)
    }

    /// Connections refused: failed the handshake, called before passing it, or
    /// did not pass in time. Each connection counts once.
    pub fn refused_connections(&self) -> u64 {
        self.counts.refused_connections.load(Ordering::Relaxed)
    }

    /// Calls answered `Unauthenticated` because their connection had not passed.
    pub fn refused_calls(&self) -> u64 {
        self.counts.refused_calls.load(Ordering::Relaxed)
    }

    /// A gate for a connection from `peer` accepted at `now`.
    pub(crate) fn gate(&self, peer: SocketAddr, now: Instant) -> Gate {
        let handshake = self.verify.start(peer);
        Gate::new(self.verify.mechanism(), handshake, peer, now + self.timeout, self.counts.clone())
    }
}

/// A channel's credential: the mechanism it proves itself with.
#[derive(Clone)]
pub struct Credential {
    /// The client side of the mechanism.
    prove: Arc<dyn Prove>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("mechanism", &self.prove.mechanism()).finish_non_exhaustive()
    }
}

impl Credential {
    /// Proves itself with `prove`'s handshake on every connection.
    pub fn new(prove: impl Prove) -> Credential {
        Credential { prove: Arc::new(prove) }
    }

    /// Proves that it knows `secret`, and requires the server to prove it too
    /// (see [`SharedSecret`]).
    pub fn shared_secret(secret: &[u8]) -> Credential {
        Credential::new(SharedSecret::new(secret))
    }

    /// The mechanism, for the handshake.
    pub(crate) fn prove(&self) -> &dyn Prove {
        self.prove.as_ref()
    }
}

/// What a listener counted, and when it last logged a refusal.
#[derive(Default)]
pub(crate) struct Counts {
    /// Connections that passed.
    passed: AtomicU64,
    /// Connections refused, each once.
    refused_connections: AtomicU64,
    /// Calls refused on connections that had not passed.
    refused_calls: AtomicU64,
    /// Limits the log lines about refusals.
    log: crate::log_limit::LogLimit,
}

impl Counts {
    /// Counts a refused connection and logs it, unless a line was logged less
    /// than [`LOG_INTERVAL`] ago: then it is summed into the next line.
    fn refuse(&self, peer: SocketAddr, mechanism: &str, why: &str) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
        let Some(also) = self.log.due(LOG_INTERVAL) else { return };
        tracing::warn!(
            %peer,
            mechanism,
            why,
            also_refused = also,
            total_refused = self.refused_connections.load(Ordering::Relaxed),
            "connection refused: it did not authenticate"
        );
    }
}
