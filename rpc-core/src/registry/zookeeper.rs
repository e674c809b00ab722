//! The ZooKeeper registry: one ephemeral znode per instance, and a supervisor
//! thread that owns the session and brings everything back when it is lost.
//!
//! Layout (`docs/PROTOCOL.md`, "Registry"): instance `id` of `service` is the
//! ephemeral sequential znode `{root}/services/{service}/instances/{id}-{seq}`
//! whose data is `{"id":…,"addr":"host:port","metadata":{…}}`.
//!
//! The `zookeeper` crate's client holds one session. It reconnects while the
//! session lasts but never re-sends watches, and once it gives up it stays
//! closed. So one supervisor thread owns the client, every registration and
//! every watch, and works through a closed set of [`Event`]s: callers' requests,
//! client state changes and fired watches. Each time the client (re)connects
//! the supervisor re-arms every watch and checks every registration's znode;
//! when the client closes, or has not reached ZooKeeper for longer than a
//! session, it builds a new one and re-creates the registrations in the new
//! session (deleting the old session's znodes rather than waiting for them to
//! expire). While ZooKeeper is away, watch callbacks are simply not called.
//!
//! - this file: the public [`ZooKeeper`] and [`Config`], and the [`Event`]s;
//! - `zookeeper/supervisor.rs`: the supervisor's state, its thread and how it
//!   handles each event, postponing what waits for a connection;
//! - `zookeeper/session.rs`: its client, built when a server serves, checked
//!   for health and rebuilt when the session is lost;
//! - `zookeeper/nodes.rs`: its znodes, each registration's and each watched
//!   service's children;
//! - `zookeeper/access.rs`: the [`Identity`]s it proves to ZooKeeper and the
//!   [`Access`] its znodes give.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use zookeeper::ZkState;

use super::{check_name, Instance, OnChange, Registration, Registry, Watch};
use crate::Error;

mod access;
mod nodes;
mod session;
mod supervisor;

pub use self::access::{Access, Identity};

/// Settings of a [`ZooKeeper`] registry. Start from `Config::default()`.
///
/// Later versions may add fields, each with a default, so build one as
/// `Config { root: "/myapp".into(), ..Config::default() }`: a struct literal
/// naming every field stops compiling when one is added.
#[derive(Debug, Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub struct Config {
    /// Path under which every service lives, `/rpc-core` by default.
    /// Deployments, and tests, that share one ZooKeeper each take their own
    /// to stay apart. Absolute, without a trailing `/`.
    pub root: String,
    /// Session timeout asked of ZooKeeper (the server clamps it to its own
    /// limits). An instance whose process dies without deregistering leaves
    /// consumers' sets this long after; losing ZooKeeper for longer than this
    /// costs the session, which the registry then re-creates.
    pub session_timeout: Duration,
    /// How long `connect` and each registry call wait for ZooKeeper.
    pub operation_timeout: Duration,
    /// Identities proved to ZooKeeper on every connection (`addauth`); none
    /// by default.
    pub identities: Vec<Identity>,
    /// Who may read and change the znodes the registry creates;
    /// [`Access::Open`] by default. [`Access::Creator`] needs an identity.
    pub access: Access,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            root: "/rpc-core".to_owned(),
            session_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            identities: Vec::new(),
            access: Access::Open,
        }
    }
}

/// A registry kept in ZooKeeper (with the `zookeeper` feature, on by default).
///
/// Dropping it closes the session: every instance it registered disappears
/// from ZooKeeper at once.
///
/// ```no_run
/// use rpc_core::registry::{self, Instance, Registry};
/// # fn main() -> Result<(), rpc_core::Error> {
/// let zk = registry::ZooKeeper::connect("127.0.0.1:2181", registry::Config::default())?;
/// let me = Instance::new("echo-1", "127.0.0.1:7000".parse().unwrap());
/// let _registration = zk.register("echo.Echo", &me)?;
/// println!("{:?}", zk.instances("echo.Echo")?);
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub struct ZooKeeper {
    /// Requests to the supervisor.
    events: Sender<Event>,
    /// The supervisor thread, joined on drop.
    supervisor: Option<JoinHandle<()>>,
    /// How long callers wait for the supervisor.
    operation_timeout: Duration,
    /// The servers, for messages.
    connect_string: String,
}

impl ZooKeeper {
    /// Connects to the ZooKeeper servers in `connect_string`
    /// (`"host:port,host:port"`, optionally followed by a chroot path that
    /// must exist) and starts the supervisor thread.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] if the connect string or root is invalid,
    /// [`Access::Creator`] comes without an identity, ZooKeeper refuses the
    /// identities the root was made with (`NoAuth`), or no session could be
    /// established within `config.operation_timeout`.
    pub fn connect(connect_string: &str, config: Config) -> Result<ZooKeeper, Error> {
        let root_ok = config.root.starts_with('/')
            && config.root.len() > 1
            && !config.root.ends_with('/')
            && config.root.split('/').skip(1).all(|part| check_name("root", part).is_ok());
        if !root_ok {
            return Err(Error::Registry(format!(
                "invalid root '{}': it must be an absolute path like /rpc-core",
                config.root
            )));
        }
        if config.access == Access::Creator && config.identities.is_empty() {
            return Err(Error::Registry(
                "access for the registry's creator only needs an identity to prove (Config::identities)"
                    .to_owned(),
            ));
        }
        let operation_timeout = config.operation_timeout;
        let (tx, thread) = supervisor::start(connect_string, config)?;
        Ok(ZooKeeper {
            events: tx,
            supervisor: Some(thread),
            operation_timeout,
            connect_string: connect_string.to_owned(),
        })
    }

    /// Sends `event` built around a reply channel and waits for the answer.
    fn ask<T>(
        &self,
        what: &str,
        event: impl FnOnce(Sender<Result<T, Error>>, Instant) -> Event,
    ) -> Result<T, Error> {
        ask(&self.events, self.operation_timeout, what, event)
    }
}

/// Sends the event `event` builds from a reply channel and a deadline, and
/// waits for the reply until then.
fn ask<T>(
    events: &Sender<Event>,
    timeout: Duration,
    what: &str,
    event: impl FnOnce(Sender<Result<T, Error>>, Instant) -> Event,
) -> Result<T, Error> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let event = event(tx, Instant::now() + timeout);
    events.send(event).map_err(|_| Error::Registry(format!("{what}: the registry is closed")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(Error::Registry(format!(
            "{what}: ZooKeeper did not answer within {} ms",
            timeout.as_millis()
        ))),
        Err(RecvTimeoutError::Disconnected) => {
            Err(Error::Registry(format!("{what}: the registry is closed")))
        }
    }
}

impl Registry for ZooKeeper {
    fn register(&self, service: &str, instance: &Instance) -> Result<Registration, Error> {
        check_name("service", service)?;
        check_name("instance id", &instance.id)?;
        let what = format!("cannot register {}/{}", service, instance.id);
        let key = self.ask(&what, |reply, deadline| Event::Register {
            service: service.to_owned(),
            instance: instance.clone(),
            reply,
            deadline,
        })?;
        let events = self.events.clone();
        let timeout = self.operation_timeout;
        let what = format!("cannot deregister {}/{}", service, instance.id);
        Ok(Registration::new(service, instance.id.clone(), move || {
            match ask(&events, timeout, &what, |reply, _| Event::Deregister { key, reply }) {
                // A closed registry has closed its session, which took the znode.
                Err(Error::Registry(msg)) if msg.ends_with("the registry is closed") => Ok(()),
                other => other,
            }
        }))
    }

    fn instances(&self, service: &str) -> Result<Vec<Instance>, Error> {
        check_name("service", service)?;
        let what = format!("cannot list {service}");
        self.ask(&what, |reply, deadline| Event::List { service: service.to_owned(), reply, deadline })
    }

    fn watch(&self, service: &str, on_change: OnChange) -> Result<Watch, Error> {
        check_name("service", service)?;
        let what = format!("cannot watch {service}");
        let key = self.ask(&what, |reply, deadline| Event::Watch {
            service: service.to_owned(),
            on_change,
            reply,
            deadline,
        })?;
        let events = self.events.clone();
        let service = service.to_owned();
        Ok(Watch::new(move || {
            let _ = events.send(Event::Unwatch { service, key });
        }))
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Close);
        if let Some(thread) = self.supervisor.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeper").field("connect_string", &self.connect_string).finish()
    }
}

/// Everything the supervisor reacts to.
enum Event {
    /// The client of this generation changed state.
    State(u64, ZkState),
    /// The child watch on a service's instances fired: (service, watch token).
    Children(String, u64),
    /// The watch on a registration's own znode fired: (registration key, watch token).
    Node(u64, u64),
    /// Create a registration. Requests that fail for want of a connection
    /// are retried until their deadline.
    Register { service: String, instance: Instance, reply: Sender<Result<u64, Error>>, deadline: Instant },
    /// Remove a registration.
    Deregister { key: u64, reply: Sender<Result<(), Error>> },
    /// List a service once.
    List { service: String, reply: Sender<Result<Vec<Instance>, Error>>, deadline: Instant },
    /// Start calling `on_change` with a service's set.
    Watch { service: String, on_change: OnChange, reply: Sender<Result<u64, Error>>, deadline: Instant },
    /// Stop a watch callback.
    Unwatch { service: String, key: u64 },
    /// The registry was dropped: close the session and stop.
    Close,
}
