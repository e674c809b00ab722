//! Named lanes: threads of their own, with a bounded queue, for the methods a
//! service declares in them ([`Service::lanes`]), so that a burst of one kind of
//! call (password hashes, session openings) waits apart from everything else.
//!
//! The lanes are settled when the server binds: each service's declarations are
//! read once into a table of its own ([`Served`]), and every lane named there gets
//! a queue and threads sized by [`Config::lane`]. A call then finds its lane by
//! its service's table alone, and a service that declares none pays nothing for
//! the lanes at all. Each event loop holds a [`Queue`] per lane: the lane's
//! shared queue, its bounds, and the calls of the current read bound for it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;

use super::pool::{self, Call, Jobs};
use super::{config, Config, ConnectionId, Service};
use crate::fast_hash::FastMap;

/// A service as the event loops see it: the service, and which of its methods run
/// in which lane.
pub(crate) struct Served {
    /// The service.
    pub(crate) service: Arc<dyn Service>,
    /// Each method declared in a lane, with the lane's index in the server's lanes.
    /// A service declares a few at most, so a scan beats hashing the method name.
    lanes: Box<[(Box<str>, usize)]>,
}

impl Served {
    /// The index of the lane `method` runs in; `None` for the workers.
    #[inline]
    pub(crate) fn lane_of(&self, method: &str) -> Option<usize> {
        self.lanes.iter().find(|(m, _)| &**m == method).map(|&(_, lane)| lane)
    }
}

/// Services by name (as bytes, so a lookup needs no UTF-8 check).
pub(crate) type Services = FastMap<Box<[u8]>, Served>;

/// One lane the server runs: its name and size.
pub(crate) struct Planned {
    /// The name services declare it by.
    pub(crate) name: String,
    /// Its threads and bounds.
    pub(crate) size: config::Lane,
}

/// Reads every service's lane declarations once: the services with their lane
/// tables, and the lanes to start (every lane some service declares, by name).
///
/// # Errors
///
/// `InvalidInput` when `config.lanes` names the heavy lane, which the `heavy_*`
/// fields size, or when a service declares one method in two lanes.
pub(crate) fn plan(
    services: HashMap<String, Arc<dyn Service>>,
    config: &Config,
) -> io::Result<(Services, Vec<Planned>)> {
    if config.lanes.contains_key(config::HEAVY) {
        return Err(invalid(format!(
            "Config::lanes names \"{}\": size that lane with heavy_workers, max_heavy_queued and \
             max_heavy_queued_per_connection",
            config::HEAVY
        )));
    }
    let mut names: Vec<String> = Vec::new();
    let mut served = Services::default();
    for (name, service) in services {
        let mut table: Vec<(Box<str>, usize)> = Vec::new();
        for &(method, lane) in service.lanes() {
            if let Some((_, other)) = table.iter().find(|(m, _)| &**m == method) {
                if names[*other] != lane {
                    return Err(invalid(format!(
                        "{name}/{method} is declared in two lanes, \"{}\" and \"{lane}\"",
                        names[*other]
                    )));
                }
                continue;
            }
            if service.runs_inline(method) {
                return Err(invalid(format!(
                    "{name}/{method} is declared both inline and in the lane \"{lane}\""
                )));
            }
            let index = names.iter().position(|n| n == lane).unwrap_or_else(|| {
                names.push(lane.to_owned());
                names.len() - 1
            });
            table.push((method.into(), index));
        }
        served.insert(name.into_bytes().into_boxed_slice(), Served { service, lanes: table.into() });
    }
    // A size for a lane nobody declares is most likely a misspelt name, whose lane
    // would otherwise run silently with the defaults.
    if let Some(unused) = config.lanes.keys().find(|lane| !names.contains(lane)) {
        return Err(invalid(format!(
            "Config::lanes sizes the lane \"{unused}\", which no service of this server declares"
        )));
    }
    let planned = names.into_iter().map(|name| Planned { size: config.lane(&name), name }).collect();
    Ok((served, planned))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// One lane as an event loop sees it.
pub(crate) struct Queue {
    /// The lane's name, for refusals.
    name: Arc<str>,
    /// The lane's queue, shared with its threads and the other loops.
    pub(crate) jobs: Jobs,
    /// Calls decoded from the current read, queued together once it is handled.
    pub(crate) batch: VecDeque<Call>,
    /// Calls that may wait over all connections.
    max_queued: usize,
    /// Calls one connection may have waiting.
    per_connection: usize,
}

impl Queue {
    /// The queue of `lane` for one loop, sending to `jobs`.
    pub(crate) fn new(lane: &Planned, jobs: Jobs) -> Queue {
        Queue {
            name: lane.name.as_str().into(),
            jobs,
            batch: VecDeque::new(),
            max_queued: lane.size.max_queued,
            per_connection: lane.size.queued_per_connection(),
        }
    }

    /// Why a call of connection `id` may not wait in the lane now (it is full, or
    /// the connection has its share waiting); `None` when it may.
    pub(crate) fn refusal(&self, id: ConnectionId) -> Option<String> {
        let name = &self.name;
        let mine = self.jobs.waiting_for(id) + self.batch.len();
        if mine >= self.per_connection {
            Some(format!("{} calls of this connection already wait in the {name} lane", self.per_connection))
        } else if self.jobs.waiting() + self.batch.len() >= self.max_queued {
            Some(format!("{} calls already wait in the {name} lane", self.max_queued))
        } else {
            None
        }
    }
}

/// The lanes of a server: one shared queue per planned lane, started with its
/// threads (named `rpc-<lane>-N`), and the threads.
///
/// # Errors
///
/// When a thread cannot be started.
pub(crate) fn start(planned: &[Planned]) -> io::Result<(Vec<Jobs>, Vec<std::thread::JoinHandle<()>>)> {
    let mut queues = Vec::with_capacity(planned.len());
    let mut threads = Vec::new();
    for lane in planned {
        let jobs = pool::queue(lane.size.running_per_connection());
        threads.extend(pool::start(&format!("rpc-{}", lane.name), lane.size.workers.max(1), &jobs, None)?);
        queues.push(jobs);
    }
    Ok((queues, threads))
}
