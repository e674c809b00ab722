//! Serving a proxy: its client and delivery listeners, its registration and renewal
//! thread, and the order in which they stop.

use rpc_core::registry::{Instance, Registration, Registry};
use rpc_core::server::{self, Builder, Handle};

use super::{Proxy, Renewal};
use crate::api::{self, delivery_rpc};
use crate::served::Traced;

/// A running proxy: the client listener, the internal delivery listener registered in
/// the registry, and the lease renewal (and sweeping) thread. Dropping it deregisters, then stops.
pub struct Running {
    /// Dropped first, so the chat service stops pushing here before the servers stop.
    registration: Registration,
    /// Renews leases and sweeps lapsed ones.
    renewal: Renewal,
    /// Where clients connect.
    client: Handle,
    /// Where the chat service delivers.
    delivery: Handle,
    /// The proxy itself.
    proxy: Proxy,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("proxy", &self.proxy)
            .field("client", &self.client.local_addr())
            .field("delivery", &self.delivery.local_addr())
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address clients connect to.
    pub fn client_addr(&self) -> std::net::SocketAddr {
        self.client.local_addr()
    }

    /// The address of the internal delivery service.
    pub fn delivery_addr(&self) -> std::net::SocketAddr {
        self.delivery.local_addr()
    }

    /// The proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Blocks until the client server stops.
    pub fn wait(self) {
        let Running { registration, renewal, client, delivery, proxy } = self;
        client.wait();
        drop((registration, renewal, delivery, proxy));
    }

    /// Stops the proxy gracefully, in an order that leaves nobody looking online:
    ///
    /// 1. leaves the registry, so the chat services stop delivering here;
    /// 2. refuses every new call with Unavailable and stops renewing leases;
    /// 3. ends every session: releases its lease and tells the user's friends at once
    ///    (see [`Proxy::end_all_sessions`]);
    /// 4. shuts the client server down (clients are told to go away; calls in flight
    ///    finish), ends any session a login in flight opened meanwhile, then shuts the
    ///    delivery server down.
    pub fn shutdown(self) {
        let Running { registration, renewal, client, delivery, proxy } = self;
        let id = proxy.instance_id().to_owned();
        if let Err(error) = registration.deregister() {
            tracing::warn!(%id, %error, "cannot leave the registry; the entry goes with the session");
        }
        proxy.close();
        drop(renewal);
        let ended = proxy.end_all_sessions();
        client.shutdown();
        let late = proxy.end_all_sessions();
        delivery.shutdown();
        tracing::info!(%id, sessions = ended + late, "proxy stopped");
    }
}

/// The largest request a client may send a proxy (rpc-core's default is 16 MiB). The
/// largest honest one is a `Sync` naming every conversation of its user, about 25 bytes
/// each: this is some 40,000 conversations. A larger one is refused unread
/// (ResourceExhausted, not run) and the connection stays usable.
pub const GATEWAY_MAX_REQUEST: usize = 1 << 20;

/// How many times the process's workers a proxy's client listener runs. A gateway handler
/// only waits on the service doing the work (a send waits for its commit, 20-50 ms while
/// MariaDB is busy, and 500 sends a second then keep 15 handlers waiting), and a proxy
/// holds thousands of clients: with as few workers as the services have, its sends queue
/// behind each other whenever the database slows down. One client may still run no more
/// of them at once than it could with the process's workers.
pub const GATEWAY_WORKER_FACTOR: usize = 4;

/// The lane of the gateway's Register and Login (declared in `build.rs`): the calls that
/// wait for a password hash. Each holds its thread while the user service hashes (tens of
/// milliseconds, longer while the user service's own hash queue is long), so a flood of
/// logins fills this lane and no other: Resume has a lane of its own ([`RESUMES_LANE`]),
/// and the users of a crashed proxy come back while someone floods logins.
pub const LOGINS_LANE: &str = "logins";

/// Threads of [`LOGINS_LANE`] on one proxy. The user service hashes on one thread per
/// core (two on the machines we measure on); more logins at once from one proxy would
/// only wait in its hash queue, where they hold a thread here and delay the other
/// proxies' logins.
pub const LOGIN_THREADS: usize = 2;

/// Registrations and logins that may wait for [`LOGIN_THREADS`] on one proxy. At the
/// 70-100 full-cost hashes a second two cores do, 4,096 is about a minute of hashing:
/// more would only wait past any client's deadline (a call whose deadline passes while
/// it waits is answered DeadlineExceeded, not run, when its turn comes). Past it a client
/// is answered `ResourceExhausted`, not run.
pub const MAX_LOGINS_WAITING: usize = 4_096;

/// The lane of the gateway's Resume (declared in `build.rs`): a token lookup, no password
/// hash. After a proxy crash its thousands of clients resume on the other proxies here,
/// at [`RESUME_THREADS`]' pace, while the users already there keep the workers and
/// logins keep to [`LOGINS_LANE`].
pub const RESUMES_LANE: &str = "resumes";

/// Threads of [`RESUMES_LANE`] on one proxy. More would not bring a crashed proxy's users
/// back sooner: each resume costs MariaDB a handful of queries, and on two cores four at
/// once bring 5,000 users back in about 8 s; eight doubled everyone else's median latency
/// during the storm and brought nobody back sooner (`benches/CHAT-RESULTS.md`, "Storm").
pub const RESUME_THREADS: usize = 4;

/// Resumes that may wait for [`RESUME_THREADS`] on one proxy: as many clients as a
/// crashed proxy may have held, so that a reconnect storm queues rather than being
/// refused and coming back. A waiting call holds its request (a token; like every
/// request it counts against its connection's memory budget) and no thread.
pub const MAX_RESUMES_WAITING: usize = 16_384;

/// Calls one connection may have waiting in either lane. A client opens one session at
/// a time; with a larger share a few connections could fill a lane and lock everyone
/// else out (17 connections did, with an eighth each). Filling [`MAX_RESUMES_WAITING`]
/// now takes 8,192 connections, and [`MAX_LOGINS_WAITING`] 2,048.
pub const OPENINGS_WAITING_PER_CONNECTION: usize = 2;

/// The client listener's settings, from the process's `base`: see
/// [`GATEWAY_MAX_REQUEST`], [`GATEWAY_WORKER_FACTOR`], and the lanes [`LOGINS_LANE`] and
/// [`RESUMES_LANE`].
pub fn gateway_config(base: server::Config) -> server::Config {
    let lane = |workers, max_queued| server::Lane {
        workers,
        max_queued,
        max_queued_per_connection: Some(OPENINGS_WAITING_PER_CONNECTION),
    };
    let mut lanes = base.lanes.clone();
    lanes.insert(LOGINS_LANE.to_owned(), lane(LOGIN_THREADS, MAX_LOGINS_WAITING));
    lanes.insert(RESUMES_LANE.to_owned(), lane(RESUME_THREADS, MAX_RESUMES_WAITING));
    server::Config {
        workers: base.workers.saturating_mul(GATEWAY_WORKER_FACTOR),
        max_running_per_connection: Some(base.running_per_connection()),
        lanes,
        max_frame_size: GATEWAY_MAX_REQUEST,
        ..base
    }
}

/// Starts a proxy: clients on `client_listen`, delivery on `delivery_listen` registered
/// in `registry` under the proxy's instance id. The client listener gets
/// [`GATEWAY_WORKER_FACTOR`] times `server_config`'s workers and lanes for logins and
/// for resumes ([`gateway_config`]).
///
/// # Errors
///
/// When a listener cannot be bound, the registry fails, or a thread cannot start.
pub fn serve(
    proxy: Proxy,
    registry: &dyn Registry,
    client_listen: std::net::SocketAddr,
    delivery_listen: std::net::SocketAddr,
    server_config: server::Config,
) -> Result<Running, rpc_core::Error> {
    // Only clients come through a load balancer: the chat services call the delivery
    // port directly, without a PROXY header. Only members of the cluster may deliver: the
    // listener requires the cluster secret (when the proxy has one); the client listener
    // stays open to clients.
    let delivery_config = server::Config {
        proxy_protocol_from: Vec::new(),
        // The limit per address is for clients; the chat services are few and trusted.
        max_connections_per_address: 0,
        authenticator: proxy.cluster_secret().map(|secret| secret.authenticator()),
        ..server_config.clone()
    };
    let delivery = Builder::new(delivery_config)
        .service(Traced::new(api::DeliveryServer(proxy.clone()), |_| None))
        .bind(delivery_listen)?;
    let registration = registry
        .register(delivery_rpc::SERVICE_NAME, &Instance::new(proxy.instance_id(), delivery.local_addr()))?;
    let hook = proxy.clone();
    let sessions = proxy.clone();
    let gateway = Traced::new(api::GatewayServer(proxy.clone()), move |ctx| {
        sessions.sessions().user_of(ctx.connection().id()).map(|user| user.0)
    });
    let client = Builder::new(gateway_config(server_config))
        .service(gateway)
        .on_disconnect(move |connection| hook.disconnected(connection))
        .bind(client_listen)?;
    let renewal = proxy.start_renewal()?;
    tracing::info!(id = %proxy.instance_id(), clients = %client.local_addr(), delivery = %delivery.local_addr(), "proxy started");
    Ok(Running { registration, renewal, client, delivery, proxy })
}
