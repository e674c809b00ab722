//! The supervisor's client: built when ZooKeeper serves, watched for health,
//! and replaced (with every registration re-created) when its session is lost.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zookeeper::{WatchedEvent, ZkError};

use super::supervisor::{client, request_deadline, zk_error, Supervisor, ZkResult};
use super::Event;
use crate::Error;

/// How long after a client was last healthy a new one is built, beyond the
/// session timeout: the crate tries each server for up to 2 s.
pub(super) const REBUILD_GRACE: Duration = Duration::from_secs(3);
/// How long a new client may take to connect before a fresh one is tried.
/// A ZooKeeper 3.8 server that is still starting can leave a connection open
/// and unanswered; the crate sets no timeout on a client's first connection.
pub(super) const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// Longest pause between attempts to reach an unreachable ZooKeeper: short,
/// so registrations are back before the sessions lost in a restart expire.
const REBUILD_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// One `zookeeper::ZooKeeper` and its generation.
pub(super) struct Client {
    /// The crate's client: one session. Shared with the liveness probe's thread.
    pub(super) zk: Arc<zookeeper::ZooKeeper>,
    /// Tells its events apart from older clients'.
    pub(super) generation: u64,
    /// Whether it said it is connected. The crate queues requests while it
    /// is not and, on a first connection the server never answers, waits for
    /// them forever; so nothing is asked of a client that is not connected.
    pub(super) connected: bool,
    /// Whether it ever connected.
    pub(super) ever_connected: bool,
    /// When it was created, to give up on one that never connects.
    pub(super) created: Instant,
}

/// Asks `zk` whether `root` exists, on a thread of its own; `None` if no answer came
/// within `timeout` (the thread is left to finish by itself).
fn probe(zk: &Arc<zookeeper::ZooKeeper>, root: &str, timeout: Duration) -> Option<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (zk, root) = (zk.clone(), root.to_owned());
    let spawned = std::thread::Builder::new().name("zk-probe".to_owned()).spawn(move || {
        let _ = tx.send(zk.exists(&root, false).is_ok());
    });
    if spawned.is_err() {
        return Some(false);
    }
    rx.recv_timeout(timeout).ok()
}

impl Supervisor {
    /// Proves every identity on the client's connection, which has just been
    /// made: ZooKeeper forgets a connection's identities when it closes, and
    /// the crate does not prove them again when it reconnects.
    pub(super) fn authenticate(&self) -> ZkResult<()> {
        let Some(client) = &self.client else { return Err(ZkError::ConnectionLoss) };
        for identity in &self.config.identities {
            client.zk.add_auth(identity.scheme(), identity.auth().to_vec())?;
        }
        Ok(())
    }

    pub(super) fn set_connected(&mut self, connected: bool) {
        if let Some(client) = &mut self.client {
            client.connected = connected;
            client.ever_connected |= connected;
        }
    }

    /// Periodic work: rebuild a lost client, redo failed work, probe liveness.
    pub(super) fn maintain(&mut self) {
        let now = Instant::now();
        let stale = now.duration_since(self.healthy_at) > self.config.session_timeout + REBUILD_GRACE
            || self
                .client
                .as_ref()
                .is_some_and(|c| !c.ever_connected && now.duration_since(c.created) > CONNECT_WAIT);
        if self.client.is_none() || stale || self.rebuild_at.is_some_and(|t| t <= now) {
            if self.rebuild_at.is_none_or(|t| t <= now) {
                self.rebuild();
            } else if self.pending.iter().any(|r| request_deadline(r).is_some_and(|d| d <= now)) {
                // No client to retry with: answer the requests whose time is up.
                self.retry_pending();
            }
            return;
        }
        if self.dirty && self.retry_at.is_none_or(|t| t <= now) {
            self.resync();
        } else if now.duration_since(self.probed_at) >= self.config.session_timeout / 3 {
            // The crate pings by itself; this notices a client whose I/O
            // thread died without saying so, or whose connection stopped
            // answering without closing (the crate then waits forever: the
            // probe runs on a thread of its own, and is given up on in time).
            self.probed_at = now;
            if let Ok(client) = client(&self.client) {
                match probe(&client.zk, &self.config.root, self.config.operation_timeout) {
                    Some(true) => self.healthy_at = Instant::now(),
                    Some(false) => {}
                    None => {
                        tracing::warn!(
                            timeout_ms = self.config.operation_timeout.as_millis() as u64,
                            "zookeeper did not answer a probe in time; replacing the client"
                        );
                        self.rebuild_at = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Replaces the client by a new one, once a server is serving.
    pub(super) fn rebuild(&mut self) {
        self.drop_client();
        if !self.reachable() {
            self.rebuild_failures = self.rebuild_failures.saturating_add(1);
            let backoff = Duration::from_millis(50)
                .saturating_mul(1 << self.rebuild_failures.min(8))
                .min(REBUILD_BACKOFF_MAX);
            self.rebuild_at = Some(Instant::now() + backoff);
            return;
        }
        if let Err(error) = self.new_client() {
            tracing::warn!(%error, "cannot create a zookeeper client");
            self.rebuild_at = Some(Instant::now() + REBUILD_BACKOFF_MAX);
            return;
        }
        tracing::info!(
            generation = self.generation,
            "new zookeeper client; re-registering and re-watching once connected"
        );
        self.rebuild_failures = 0;
        self.rebuild_at = None;
        // Give the new client a whole session to connect; the work is redone
        // when it says it is connected.
        self.healthy_at = Instant::now();
        self.services.values_mut().for_each(|w| w.armed = None);
        self.dirty = true;
    }

    /// Whether any server is serving.
    pub(super) fn reachable(&self) -> bool {
        self.hosts.iter().any(|addr| serving(*addr))
    }

    /// Creates a client of the next generation and listens to its state.
    pub(super) fn new_client(&mut self) -> Result<(), Error> {
        self.generation += 1;
        let generation = self.generation;
        let connect_string = self.connect_string.clone();
        let timeout = self.config.session_timeout;
        // The crate panics instead of failing when its first socket cannot
        // be created; keep that from taking the registry down.
        let zk = std::panic::catch_unwind(move || {
            zookeeper::ZooKeeper::connect(&connect_string, timeout, |_: WatchedEvent| {})
        })
        .map_err(|_| Error::Registry("the zookeeper client panicked while connecting".to_owned()))?
        .map_err(|e| zk_error("connect", e))?;
        let events = self.events.clone();
        zk.add_listener(move |state| {
            let _ = events.send(Event::State(generation, state));
        });
        self.client = Some(Client {
            zk: Arc::new(zk),
            generation,
            connected: false,
            ever_connected: false,
            created: Instant::now(),
        });
        Ok(())
    }

    /// Drops the client on a helper thread: closing a session can wait for a
    /// server that is not there.
    pub(super) fn drop_client(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::Builder::new().name("zk-close".to_owned()).spawn(move || drop(client));
        }
    }
}

/// Whether the ZooKeeper server at `addr` serves clients. Asks `srvr`: a
/// server that is still starting says it is not serving (and may wedge a
/// client that connects then). If `srvr` is not allowed, or the server does
/// not answer it, accepting the connection has to do.
fn serving(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(500);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"srvr").is_err() {
        return true;
    }
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    !String::from_utf8_lossy(&answer).contains("not currently serving")
}

/// The servers of a connect string, resolved, for reachability probes.
pub(super) fn parse_hosts(connect_string: &str) -> Result<Vec<SocketAddr>, Error> {
    let servers = connect_string.split('/').next().unwrap_or_default();
    let hosts: Vec<SocketAddr> = servers
        .split(',')
        .filter_map(|host| host.trim().to_socket_addrs().ok().and_then(|mut addrs| addrs.next()))
        .collect();
    if hosts.is_empty() {
        return Err(Error::Registry(format!(
            "no server address in ZooKeeper connect string '{connect_string}' (expected host:port[,host:port][/chroot])"
        )));
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_strings_are_parsed() {
        assert_eq!(parse_hosts("127.0.0.1:2181,127.0.0.1:2182/app").unwrap().len(), 2);
        assert!(parse_hosts("/only-a-chroot").is_err());
    }
}
