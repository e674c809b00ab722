//! The server: event loops that own the sockets, and a worker pool that runs handlers.
//!
//! [`Builder::bind`] starts `Config::event_loops` loop threads and
//! `Config::workers` worker threads. Loop 0 owns the listener and hands each
//! accepted socket to a loop in turn; from then on that loop alone reads and
//! writes it. A request is decoded on its loop and queued for the pool, every
//! request of one read under one lock and with at most one wake-up (or run
//! right there when the service says the method is cheap, see
//! [`Service::runs_inline`]); the worker sends the reply back over
//! the loop's channel and wakes it with its `mio::Waker`, and the loop writes
//! every reply that is ready before it polls again, so many replies share a
//! syscall. Methods a service declares in a named lane ([`Service::lanes`]) go
//! to that lane's own small pool instead, sized by [`Config::lane`] (the lane
//! named `"heavy"` by `Config::heavy_workers` and its neighbours).
//!
//! No connection can hurt another. The pools keep each connection's calls in a
//! queue of its own and serve the connections in turn, with a cap on the calls
//! of one connection running at once. The loop counts what it holds for each
//! connection (requests running, answers unwritten) against
//! `Config::connection_budget`: past it, it stops reading the connection and
//! the workers hold its calls back until its answers drain. It evicts, with a
//! go-away naming the limit, a connection that stays held back without
//! reading, that trickles a frame, or that holds more than its share of an
//! exhausted `Config::server_budget`. Refusals say the call did not run
//! ([`crate::Outcome`]).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{Error, Status};

mod config;
mod connection;
mod event_loop;
mod lanes;
mod per_address;
mod pool;
mod proxy_header;

use event_loop::{Command, LoopShared};

pub use config::{Config, Lane, HEAVY};
pub(crate) use connection::{answer_len, ConnShared};
pub use connection::{Connection, ConnectionId};
pub use pool::current_deadline;

/// After the loops stop, how long shutdown waits for the workers to finish the jobs left
/// (disconnect hooks; handlers that outran the grace) before leaving them to it.
const WORKER_EXIT_WAIT: Duration = Duration::from_secs(2);

/// A set of methods served under one name, such as `chatroom.Gateway`.
///
/// `rpc-codegen` writes the implementation that decodes the request, calls
/// your typed trait and encodes the reply; implement it by hand only for
/// untyped services.
pub trait Service: Send + Sync + 'static {
    /// The service name clients call, e.g. `"echo.Echo"`.
    fn name(&self) -> &str;

    /// Runs `method` on the protobuf-encoded `body`, returning the encoded reply.
    ///
    /// An unknown method should return `Code::Unimplemented`, an undecodable
    /// body `Code::InvalidArgument`. A panic is caught and answered with
    /// `Code::Internal`; the server keeps serving.
    fn call(&self, ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status>;

    /// Whether `method` is cheap and never blocks, so the event loop may run it
    /// itself instead of handing it to a worker. Saves two thread hops per
    /// call; a slow inline method stalls every connection on its loop.
    fn runs_inline(&self, _method: &str) -> bool {
        false
    }

    /// The methods that run in a named lane instead of on the workers, as
    /// `(method, lane)` pairs: expensive ones (a password hash, in the lane
    /// [`HEAVY`]), or ones that must not wait behind each other (session openings
    /// apart from logins). Each lane has threads and a bounded queue of its own
    /// ([`Config::lane`]), so a burst of one lane's calls waits there, refused with
    /// `ResourceExhausted` past its bounds, and never delays calls outside it.
    ///
    /// Read once, when the server binds; methods not named run on the workers. A
    /// method named in two lanes fails [`Builder::bind`].
    fn lanes(&self) -> &[(&'static str, &'static str)] {
        &[]
    }
}

/// What a handler knows about the call it is running.
pub struct Context {
    /// The connection the request came in on.
    connection: Connection,
    /// The caller's call id, unique on that connection.
    call_id: u64,
    /// When the caller stops waiting, if it said.
    deadline: Option<Instant>,
}

impl Context {
    /// The connection the request came in on; keep a clone to push to it later.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// The caller's id for this call.
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// When the caller stops waiting for the answer, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The client's address: the one a trusted load balancer named in its PROXY
    /// header (`Config::proxy_protocol_from`), else the connection's peer.
    pub fn client_addr(&self) -> SocketAddr {
        self.connection.client_addr()
    }

    /// Time left before the deadline; `None` when the caller set none.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// Called with the id of each connection that closes, on a worker thread.
pub type DisconnectHook = Arc<dyn Fn(ConnectionId) + Send + Sync>;

/// Collects services and settings, then binds a server.
///
/// ```no_run
/// use rpc_core::server::{Builder, Config};
/// # fn main() -> Result<(), rpc_core::Error> {
/// # let my_service = rpc_core::server::tests_support::Echo;
/// let server = Builder::new(Config::default())
///     .service(my_service)
///     .bind("127.0.0.1:0")?;
/// println!("listening on {}", server.local_addr());
/// server.wait();
/// # Ok(())
/// # }
/// ```
pub struct Builder {
    /// Settings for the server.
    config: Config,
    /// Services by name.
    services: HashMap<String, Arc<dyn Service>>,
    /// Told about every closed connection.
    on_disconnect: Option<DisconnectHook>,
}

impl Builder {
    /// A builder with `config` and no services.
    pub fn new(config: Config) -> Builder {
        Builder { config, services: HashMap::new(), on_disconnect: None }
    }

    /// Adds a service; a later service with the same name replaces an earlier one.
    pub fn service(mut self, service: impl Service) -> Builder {
        self.services.insert(service.name().to_owned(), Arc::new(service));
        self
    }

    /// Runs `hook` (on a worker thread) once with the id of every connection that closes.
    ///
    /// A connection that was reset closes at once, so the hook may run while calls from
    /// that connection are still running: a handler that records something against its
    /// connection should check [`Connection::is_open`] after recording it.
    pub fn on_disconnect(mut self, hook: impl Fn(ConnectionId) + Send + Sync + 'static) -> Builder {
        self.on_disconnect = Some(Arc::new(hook));
        self
    }

    /// Binds the listener and starts the loop, worker and lane threads.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the address cannot be resolved or bound, or a thread
    /// or poller cannot be created; of kind `InvalidInput` also when
    /// `Config::lanes` names [`HEAVY`] or a service declares a method in two lanes
    /// ([`Service::lanes`]).
    pub fn bind(self, addr: impl ToSocketAddrs) -> Result<Handle, Error> {
        let addr = addr.to_socket_addrs()?.next().ok_or_else(|| {
            Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind"))
        })?;
        let config = Config {
            workers: self.config.workers.max(1),
            event_loops: self.config.event_loops.max(1),
            ..self.config
        };
        let (services, planned) = lanes::plan(self.services, &config)?;
        let services = Arc::new(services);
        let listener = listen(addr, config.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        let jobs = pool::queue(config.running_per_connection());
        let (lane_jobs, mut workers) = lanes::start(&planned)?;
        let memory = Arc::new(event_loop::Memory::default());
        let per_address = Arc::new(per_address::PerAddress::new(config.max_connections_per_address));

        let mut loops = Vec::with_capacity(config.event_loops);
        for index in 0..config.event_loops {
            let lanes =
                planned.iter().zip(&lane_jobs).map(|(l, j)| lanes::Queue::new(l, j.clone())).collect();
            let queues = (jobs.clone(), lanes);
            let shared = (memory.clone(), per_address.clone());
            loops.push(event_loop::EventLoop::new(index, &config, services.clone(), queues, shared)?);
        }
        let shared: Vec<Arc<LoopShared>> = loops.iter().map(|l| l.shared()).collect();
        let mut loop_threads = Vec::with_capacity(loops.len());
        let mut listener = Some(listener);
        for mut l in loops {
            if let Some(listener) = listener.take() {
                l.set_listener(listener, shared.clone())?;
            }
            let name = format!("rpc-loop-{}", l.index());
            loop_threads.push(std::thread::Builder::new().name(name).spawn(move || l.run())?);
        }
        workers.extend(pool::start("rpc-worker", config.workers, &jobs, self.on_disconnect)?);
        drop((jobs, lane_jobs));
        tracing::info!(%local_addr, loops = config.event_loops, workers = config.workers, "rpc server listening");
        Ok(Handle { local_addr, loops: shared, loop_threads, workers, per_address, shut: false })
    }
}

/// A non-blocking listener on `addr` with room for `backlog` connections not yet
/// accepted (mio's own `bind` allows 128).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<mio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As mio and std do: a restarted server binds its port again at once.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// A running server. Dropping it shuts the server down gracefully.
pub struct Handle {
    /// The bound address (useful after binding port 0).
    local_addr: SocketAddr,
    /// Each loop's channel and waker.
    loops: Vec<Arc<LoopShared>>,
    /// The loop threads.
    loop_threads: Vec<JoinHandle<()>>,
    /// The worker threads.
    workers: Vec<JoinHandle<()>>,
    /// Connections open per client address, and the ones refused.
    per_address: Arc<per_address::PerAddress>,
    /// Whether `shutdown` already ran.
    shut: bool,
}

impl Handle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections open from `client`'s address and counted against
    /// `Config::max_connections_per_address` (always 0 without a limit). An IPv6
    /// address counts with the rest of its /64.
    pub fn connections_from(&self, client: std::net::IpAddr) -> usize {
        self.per_address.open_from(client)
    }

    /// Connections refused so far for being over `Config::max_connections_per_address`.
    pub fn refused_per_address(&self) -> u64 {
        self.per_address.refused()
    }

    /// Stops accepting, tells clients to go away, finishes in-flight calls
    /// (up to `Config::shutdown_grace`), closes every connection and joins
    /// every thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until the server stops (it runs until shut down from elsewhere
    /// or the process ends).
    pub fn wait(mut self) {
        for t in self.loop_threads.drain(..) {
            let _ = t.join();
        }
        self.stop();
    }

    /// A handle that can shut this server down from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper { loops: self.loops.clone() }
    }

    fn stop(&mut self) {
        if self.shut {
            return;
        }
        self.shut = true;
        self.stopper().stop();
        for t in self.loop_threads.drain(..) {
            let _ = t.join();
        }
        // The loops held the last job senders; workers finish their calls and exit. A
        // handler still running after the loops gave up on it is not waited for: its
        // thread is left to end by itself.
        let deadline = Instant::now() + WORKER_EXIT_WAIT;
        for t in self.workers.drain(..) {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(thread = ?t.thread().name(), "a handler is still running; not waiting for it");
            }
        }
        tracing::info!(local_addr = %self.local_addr, "rpc server stopped");
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks a server to shut down gracefully, from any thread.
#[derive(Clone)]
pub struct Stopper {
    /// Each loop's channel and waker.
    loops: Vec<Arc<LoopShared>>,
}

impl Stopper {
    /// Starts the graceful shutdown; [`Handle::wait`] returns once it is done.
    pub fn stop(&self) {
        for l in &self.loops {
            l.send(Command::Shutdown);
        }
    }
}

#[doc(hidden)]
pub mod tests_support {
    //! A tiny untyped service for doc examples and tests.
    use super::*;

    /// Answers every method with the request body.
    pub struct Echo;

    impl Service for Echo {
        fn name(&self) -> &str {
            "test.Echo"
        }
        fn call(&self, _ctx: &Context, _method: &str, body: Bytes) -> Result<Bytes, Status> {
            Ok(body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Channel, Config as ClientConfig};
    use crate::Code;

    /// Sleeps for `body[0]` ms; tells `started` when it begins.
    struct Slow(Option<crossbeam_channel::Sender<()>>);

    impl Service for Slow {
        fn name(&self) -> &str {
            "test.Slow"
        }
        fn call(&self, _ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
            match method {
                "Sleep" => {
                    if let Some(started) = &self.0 {
                        let _ = started.send(());
                    }
                    std::thread::sleep(Duration::from_millis(u64::from(body[0])));
                    Ok(body)
                }
                "Panic" => panic!("boom"),
                _ => Err(Status::unimplemented(method.to_owned())),
            }
        }
    }

    fn server() -> Handle {
        server_with(Slow(None))
    }

    fn server_with(slow: Slow) -> Handle {
        Builder::new(Config { workers: 4, ..Config::default() })
            .service(tests_support::Echo)
            .service(slow)
            .bind("127.0.0.1:0")
            .unwrap()
    }

    #[test]
    fn echo_round_trip_and_unknown_service() {
        let server = server();
        let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
        assert_eq!(&ch.call_raw("test.Echo", "Say", b"hi", None).unwrap()[..], b"hi");
        let err = ch.call_raw("nope.Nope", "X", b"", None).unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err}");
        let err = ch.call_raw("test.Slow", "Panic", b"", None).unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{err}");
        assert_eq!(&ch.call_raw("test.Echo", "Say", b"again", None).unwrap()[..], b"again");
        server.shutdown();
    }

    #[test]
    fn shutdown_finishes_in_flight_calls() {
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let server = server_with(Slow(Some(started_tx)));
        let ch = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        ch.call_raw_with("test.Slow", "Sleep", &[200], None, Box::new(move |r| tx.send(r).unwrap()));
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        server.shutdown();
        // The call was running when shutdown began; it still completes.
        let reply = rx.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(&reply[..], &[200]);
    }

    #[test]
    fn push_reaches_the_client_and_closed_connections_refuse_it() {
        let (conn_tx, conn_rx) = crossbeam_channel::bounded(1);
        struct Grab(crossbeam_channel::Sender<Connection>);
        impl Service for Grab {
            fn name(&self) -> &str {
                "test.Grab"
            }
            fn call(&self, ctx: &Context, _m: &str, _b: Bytes) -> Result<Bytes, Status> {
                let _ = self.0.send(ctx.connection().clone());
                Ok(Bytes::new())
            }
        }
        let (closed_tx, closed_rx) = crossbeam_channel::bounded(1);
        let server = Builder::new(Config::default())
            .service(Grab(conn_tx))
            .on_disconnect(move |id| {
                let _ = closed_tx.send(id);
            })
            .bind("127.0.0.1:0")
            .unwrap();
        let (push_tx, push_rx) = crossbeam_channel::unbounded();
        let config = ClientConfig {
            on_push: Some(Arc::new(move |s: &str, m: &str, b: Bytes| {
                let _ = push_tx.send((s.to_owned(), m.to_owned(), b));
            })),
            ..ClientConfig::default()
        };
        let ch = Channel::connect(server.local_addr(), config).unwrap();
        ch.call_raw("test.Grab", "Me", b"", None).unwrap();
        let conn = conn_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        conn.push("chat.Delivery", "Message", b"hello").unwrap();
        let (s, m, b) = push_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!((s.as_str(), m.as_str(), &b[..]), ("chat.Delivery", "Message", &b"hello"[..]));
        ch.close();
        let closed = closed_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(closed, conn.id());
        assert!(!conn.is_open());
        assert!(matches!(conn.push("a", "b", b""), Err(Error::Closed(_))));
    }
}
