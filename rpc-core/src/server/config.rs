//! The server's settings: [`Config`], its defaults, and what they resolve to.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::frame;

/// Settings of a server. Start from `Config::default()` and change what you need.
///
/// Later versions may add fields, each with a default, so build one as
/// `Config { workers: 8, ..Config::default() }`: a struct literal naming every
/// field stops compiling when one is added.
///
/// The limits bound what one peer can make the server hold or do, so that no
/// connection can hurt another (`docs/PROTOCOL.md`, "Limits and errors"):
///
/// | field | default |
/// |---|---|
/// | `workers` | one per core, at least 4 |
/// | `max_running_per_connection` | `None`: all but a quarter of `workers` |
/// | `heavy_workers` | one per core |
/// | `max_heavy_queued` | 256 |
/// | `max_heavy_queued_per_connection` | `None`: an eighth of `max_heavy_queued` |
/// | `lanes` | none: every other lane gets [`Lane::default`] |
/// | `event_loops` | 1 |
/// | `listen_backlog` | 4096 |
/// | `max_frame_size` | 16 MiB |
/// | `max_in_flight_per_connection` | 1024 |
/// | `connection_budget` | 1 MiB |
/// | `connection_hard_limit` | 8 MiB |
/// | `stalled_reader_timeout` | 10 s |
/// | `server_budget` | 512 MiB |
/// | `frame_timeout` | 30 s |
/// | `idle_timeout` | 90 s |
/// | `shutdown_grace` | 10 s |
/// | `proxy_protocol_from` | none |
/// | `max_connections_per_address` | 0: no limit |
/// | `authenticator` | `None`: every peer may call |
#[derive(Debug, Clone)]
pub struct Config {
    /// Threads that run handlers.
    pub workers: usize,
    /// Calls of one connection that may run on `workers` at once; its other
    /// calls wait in its own queue, and the workers serve the connections with
    /// calls waiting in turn. `None` means all but a quarter of `workers`
    /// (rounded down), so that with four workers or more a connection with a
    /// burst of slow calls always leaves workers for the others.
    pub max_running_per_connection: Option<usize>,
    /// Threads of the lane named `"heavy"` ([`Service::lanes`](super::Service::lanes),
    /// rpc-codegen's `Builder::heavy`): methods such as password hashing, run apart
    /// from `workers`.
    pub heavy_workers: usize,
    /// Heavy calls that may wait for `heavy_workers`, over all connections. More
    /// are refused at once with `ResourceExhausted`, marked not run.
    pub max_heavy_queued: usize,
    /// Heavy calls one connection may have waiting; more are refused as above.
    /// `None` means an eighth of `max_heavy_queued` (at least one). Where each
    /// peer is one client that has no reason to queue more than one or two (a
    /// login), a small number keeps a few connections from filling the lane for
    /// everyone: filling it then takes `max_heavy_queued` divided by this many
    /// connections.
    pub max_heavy_queued_per_connection: Option<usize>,
    /// The size of each named lane other than `"heavy"`, by name. A lane a service
    /// declares ([`Service::lanes`](super::Service::lanes)) that is not named here
    /// gets [`Lane::default`], the heavy lane's defaults. `"heavy"` itself is sized
    /// by the three fields above; naming it here fails [`bind`](super::Builder::bind),
    /// as does naming a lane no service of the server declares (a misspelt name).
    pub lanes: BTreeMap<String, Lane>,
    /// Event-loop threads that own the sockets. One is plenty for most loads;
    /// more help only with many cores.
    pub event_loops: usize,
    /// Connections the kernel may hold for the listener before the event loop
    /// accepts them (capped by the system's `net.core.somaxconn`). Past it the
    /// kernel drops new connection attempts, and each waits a second or more to
    /// send its SYN again: when thousands of clients come back at once after a
    /// crash, a short backlog turns into seconds of waiting for all of them.
    pub listen_backlog: u32,
    /// Largest frame accepted, in bytes after the length prefix. A larger
    /// request is answered with `ResourceExhausted` and skipped.
    pub max_frame_size: usize,
    /// Calls one connection may have waiting or running at once; more are
    /// answered with `ResourceExhausted` right away, marked not run.
    pub max_in_flight_per_connection: usize,
    /// Bytes the server may hold for one connection: requests read and not yet
    /// answered, replies and pushes not yet written. Past it the server reads no
    /// more of that connection's requests, runs none of its waiting calls (they
    /// wait, flow control, until its answers drain under half the budget), and
    /// refuses pushes to it with [`Error::Backpressure`](crate::Error::Backpressure).
    pub connection_budget: usize,
    /// Unwritten replies and pushes past which a connection whose output has not
    /// drained at all for a second is closed, with a go-away naming the limit. A
    /// peer that reads is never closed for it, however large its answers.
    pub connection_hard_limit: usize,
    /// A connection held back by its budget whose peer reads nothing for this long
    /// is closed with a go-away. `Duration::ZERO` turns this off.
    pub stalled_reader_timeout: Duration,
    /// Bytes the server may hold for all connections together. Past it, a
    /// connection holding more than its fair share (`server_budget` divided by
    /// the connections open) reads nothing more, and one holding more than both
    /// its share and its own budget is closed with a go-away at the next check
    /// (once a second).
    pub server_budget: usize,
    /// A frame must arrive whole within this time of its first byte; a peer
    /// that trickles it slower is closed with a go-away.
    pub frame_timeout: Duration,
    /// A connection that sends nothing (not even a ping) for this long is
    /// closed. `Duration::ZERO` keeps idle connections forever.
    pub idle_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    /// Peers (load balancers such as nginx with `proxy_protocol on;`) whose connections
    /// may start with a PROXY protocol v1 header naming the client's address, which
    /// [`Connection::client_addr`](super::Connection::client_addr) then returns. A connection from one of them that
    /// starts with `P` and not a well-formed header (at most 107 bytes) is closed with
    /// a go-away naming the fault; one that starts with a frame is its own client, and
    /// so is every connection from other peers, whose headers are not read. Empty (the
    /// default): no header is read from anyone. Any process that can connect from a
    /// listed address can name any client (with a loopback address, every local
    /// process), and addresses match exactly (`::ffff:127.0.0.1` is not `127.0.0.1`).
    pub proxy_protocol_from: Vec<std::net::IpAddr>,
    /// Connections one client address may hold open at once; 0 (the default) sets no
    /// limit. One more is refused: the server writes it a go-away, "too many
    /// connections from ADDRESS (limit N)", and closes it before reading anything, so
    /// it costs the server little more than the accept and that write. An IPv6 client counts by its /64
    /// (what one subscriber is given), an IPv4-mapped IPv6 address as the IPv4 one.
    /// A connection from a peer in `proxy_protocol_from` counts against the client
    /// its PROXY header names, from when the header is read; until then, and when
    /// it has no header or names no client (`UNKNOWN`), it counts against nobody, so
    /// the balancer itself is never limited. Refusals are counted
    /// ([`Handle::refused_per_address`](super::Handle::refused_per_address)) and
    /// logged at most once every few seconds.
    pub max_connections_per_address: usize,
    /// Who may call: with one, a connection's calls are answered
    /// `Unauthenticated` (not run) until the peer has passed its handshake
    /// ([`crate::auth`]), and a peer that has not passed within its timeout is
    /// closed. `None` admits every peer, with no handshake.
    pub authenticator: Option<crate::auth::Authenticator>,
}

impl Default for Config {
    fn default() -> Config {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            // At least four: handlers may block, and with fewer no worker could be
            // kept from a connection bursting slow calls.
            workers: cores.max(4),
            max_running_per_connection: None,
            heavy_workers: cores,
            max_heavy_queued: 256,
            max_heavy_queued_per_connection: None,
            lanes: BTreeMap::new(),
            event_loops: 1,
            listen_backlog: 4096,
            max_frame_size: frame::DEFAULT_MAX_FRAME,
            max_in_flight_per_connection: 1024,
            connection_budget: 1024 * 1024,
            connection_hard_limit: 8 * 1024 * 1024,
            stalled_reader_timeout: Duration::from_secs(10),
            server_budget: 512 * 1024 * 1024,
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            shutdown_grace: Duration::from_secs(10),
            proxy_protocol_from: Vec::new(),
            max_connections_per_address: 0,
            authenticator: None,
        }
    }
}

impl Config {
    /// `max_heavy_queued_per_connection`, with `None` resolved.
    pub fn heavy_queued_per_connection(&self) -> usize {
        self.lane(HEAVY).queued_per_connection()
    }

    /// The size of the lane named `name`: the `heavy_*` fields for `"heavy"`, else
    /// its entry in `lanes`, else [`Lane::default`].
    pub fn lane(&self, name: &str) -> Lane {
        if name == HEAVY {
            return Lane {
                workers: self.heavy_workers,
                max_queued: self.max_heavy_queued,
                max_queued_per_connection: self.max_heavy_queued_per_connection,
            };
        }
        self.lanes.get(name).cloned().unwrap_or_default()
    }

    /// `max_running_per_connection`, with `None` resolved.
    pub fn running_per_connection(&self) -> usize {
        let workers = self.workers.max(1);
        self.max_running_per_connection.unwrap_or(workers - workers / 4).clamp(1, workers)
    }
}

/// The name of the lane the `heavy_*` fields of [`Config`] size, which rpc-codegen's
/// `Builder::heavy` declares methods in.
pub const HEAVY: &str = "heavy";

/// The size of one named lane: threads of its own that run the methods declared in
/// it ([`Service::lanes`](super::Service::lanes)), apart from the workers and the
/// other lanes, with a bounded queue. A burst of calls to a lane waits there and
/// delays nothing outside it; past its bounds a call is refused at once with
/// `ResourceExhausted`, marked not run. One connection may have at most half the
/// lane's threads (rounded up) running its calls at once.
///
/// | field | default |
/// |---|---|
/// | `workers` | one per core |
/// | `max_queued` | 256 |
/// | `max_queued_per_connection` | `None`: an eighth of `max_queued` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// Threads that run the lane's calls (at least one is started).
    pub workers: usize,
    /// Calls that may wait for the lane's threads, over all connections; more are
    /// refused.
    pub max_queued: usize,
    /// Calls of one connection that may wait; more are refused. `None` means an
    /// eighth of `max_queued` (at least one). Where each peer is one client with
    /// no reason to queue more than one or two, a small number keeps a few
    /// connections from filling the lane: filling it then takes `max_queued`
    /// divided by this many connections.
    pub max_queued_per_connection: Option<usize>,
}

impl Default for Lane {
    fn default() -> Lane {
        Lane {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_queued: 256,
            max_queued_per_connection: None,
        }
    }
}

impl Lane {
    /// `max_queued_per_connection`, with `None` resolved.
    pub fn queued_per_connection(&self) -> usize {
        self.max_queued_per_connection.unwrap_or(self.max_queued / 8).max(1)
    }

    /// Calls of one connection that may run on the lane at once: half its threads,
    /// rounded up.
    pub(crate) fn running_per_connection(&self) -> usize {
        self.workers.max(1).div_ceil(2)
    }
}
