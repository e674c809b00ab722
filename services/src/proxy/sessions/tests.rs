//! [`Sessions`] on the in-memory presence table, with stand-in connections and an
//! announcer that records. Each interleaving is forced with gates in the presence table
//! (an operation stops there until the test lets it go) and by waiting until an operation
//! waits for a lane, never with sleeps. The operations that start and end sessions, each
//! on its own, are here; renewal, kicks, sweeps and retries in `tests/upkeep.rs`; the
//! interleavings of two operations in `tests/interleavings.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::presence::{Lapsed, Memory};

mod interleavings;
mod upkeep;

const ME: &str = "proxy-a";
const OTHER: &str = "proxy-b";
const TTL: Duration = Duration::from_secs(30);
const ALICE: UserId = UserId(1);
const BOB: UserId = UserId(2);
/// Long enough that only a deadlock reaches it.
const STUCK: Duration = Duration::from_secs(20);

/// A stand-in connection: open until closed, and remembers why it was kicked.
#[derive(Clone)]
struct Conn {
    id: ConnectionId,
    open: Arc<AtomicBool>,
    kicked: Arc<Mutex<Option<String>>>,
}

impl Conn {
    fn new(id: u64) -> Conn {
        Conn { id: ConnectionId(id), open: Arc::new(AtomicBool::new(true)), kicked: Arc::default() }
    }

    /// Closes the connection, as a reset would.
    fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    fn kicked(&self) -> Option<String> {
        self.kicked.lock().unwrap().clone()
    }
}

impl Link for Conn {
    fn id(&self) -> ConnectionId {
        self.id
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn kick(&self, reason: &str) {
        *self.kicked.lock().unwrap() = Some(reason.to_owned());
        self.close();
    }
}

/// Records every announcement and settles it at once: taken, or failed while `failing`.
#[derive(Clone, Default)]
struct Recorder {
    made: Arc<Mutex<Vec<(UserId, bool)>>>,
    failing: Arc<AtomicBool>,
}

impl Recorder {
    fn made(&self) -> Vec<(UserId, bool)> {
        self.made.lock().unwrap().clone()
    }
}

impl Announcer for Recorder {
    fn announce(&self, announcement: Announcement, settle: Settle) {
        self.made.lock().unwrap().push((announcement.user, announcement.online));
        settle.done(self.failing.load(Ordering::SeqCst));
    }
}

/// The presence operations a test can stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Claim,
    Release,
    Lookup,
    RenewAll,
    Reclaim,
}

/// The next call of an operation stops at the gate, says so, and waits to be let go.
struct Gate {
    /// Stop after the memory table ran the operation, rather than before.
    after: bool,
    /// Told when a call stopped here.
    reached: Sender<()>,
    /// The call goes on when this gets a message.
    go: Receiver<()>,
}

/// The test's side of a gate.
struct Held {
    reached: Receiver<()>,
    go: Sender<()>,
}

impl Held {
    /// Waits until a call stopped at the gate.
    fn reached(&self) {
        self.reached.recv_timeout(STUCK).expect("the operation reaches its gate");
    }

    /// Lets the call go on.
    fn release(&self) {
        self.go.send(()).unwrap();
    }
}

/// The in-memory presence table with gates, and the users each renewal renewed.
#[derive(Default)]
struct Gated {
    memory: Memory,
    gates: Mutex<HashMap<Op, Gate>>,
    renewed: Mutex<Vec<Vec<UserId>>>,
}

impl Gated {
    /// Stops the next call of `op`, before the table runs it or `after`.
    fn hold(&self, op: Op, after: bool) -> Held {
        let (reached, reached_rx) = mpsc::channel();
        let (go_tx, go) = mpsc::channel();
        self.gates.lock().unwrap().insert(op, Gate { after, reached, go });
        Held { reached: reached_rx, go: go_tx }
    }

    fn run<T>(&self, op: Op, call: impl FnOnce() -> T) -> T {
        let gate = self.gates.lock().unwrap().remove(&op);
        let stop = |gate: &Gate| {
            gate.reached.send(()).unwrap();
            gate.go.recv_timeout(STUCK).expect("the test lets the operation go");
        };
        if let Some(gate) = gate.as_ref().filter(|g| !g.after) {
            stop(gate);
        }
        let result = call();
        if let Some(gate) = gate.as_ref().filter(|g| g.after) {
            stop(gate);
        }
        result
    }
}

impl Presence for Gated {
    fn claim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, presence::Error> {
        self.run(Op::Claim, || self.memory.claim(user, owner, ttl))
    }

    fn renew(&self, user: UserId, owner: &str, ttl: Duration) -> Result<bool, presence::Error> {
        self.memory.renew(user, owner, ttl)
    }

    fn renew_all(
        &self,
        users: &[UserId],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<UserId>, presence::Error> {
        let mut sorted = users.to_vec();
        sorted.sort_by_key(|u| u.0);
        self.renewed.lock().unwrap().push(sorted);
        self.run(Op::RenewAll, || self.memory.renew_all(users, owner, ttl))
    }

    fn reclaim(&self, user: UserId, owner: &str, ttl: Duration) -> Result<Option<String>, presence::Error> {
        self.run(Op::Reclaim, || self.memory.reclaim(user, owner, ttl))
    }

    fn release(&self, user: UserId, owner: &str) -> Result<bool, presence::Error> {
        self.run(Op::Release, || self.memory.release(user, owner))
    }

    fn lookup(&self, users: &[UserId]) -> Result<Vec<Option<String>>, presence::Error> {
        self.run(Op::Lookup, || self.memory.lookup(users))
    }

    fn sweep_lapsed(&self, limit: usize) -> Result<Vec<Lapsed>, presence::Error> {
        self.memory.sweep_lapsed(limit)
    }
}

/// One proxy's sessions over a gated presence table, with what it announced.
struct Rig {
    sessions: Arc<Sessions<Conn>>,
    presence: Arc<Gated>,
    announced: Recorder,
}

impl Rig {
    fn new() -> Rig {
        Rig::with_ttl(TTL)
    }

    /// A rig whose leases last `lease_ttl`.
    fn with_ttl(lease_ttl: Duration) -> Rig {
        let presence = Arc::new(Gated::default());
        let announced = Recorder::default();
        let config = Config { owner: ME.into(), lease_ttl };
        let sessions = Sessions::new(config, presence.clone(), Box::new(announced.clone()));
        Rig { sessions: Arc::new(sessions), presence, announced }
    }

    /// Who holds `user`'s lease.
    fn holder(&self, user: UserId) -> Option<String> {
        self.presence.memory.lookup(&[user]).unwrap().pop().flatten()
    }

    /// Another proxy logs `user` in.
    fn claim_elsewhere(&self, user: UserId) {
        self.presence.memory.claim(user, OTHER, TTL).unwrap();
    }

    /// Runs `op` on a thread of its own.
    fn spawn<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Sessions<Conn>) -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let sessions = self.sessions.clone();
        thread::spawn(move || op(&sessions))
    }

    /// Waits until `n` operations wait for a lane.
    fn until_waiting(&self, n: usize) {
        let start = Instant::now();
        while self.sessions.waiting() != n {
            assert!(start.elapsed() < STUCK, "{n} operations never waited for a lane");
            thread::yield_now();
        }
    }
}

/// Joins `op`, failing rather than hanging when it never ends.
fn finishes<T: Send + 'static>(op: thread::JoinHandle<T>) -> T {
    let start = Instant::now();
    while !op.is_finished() {
        assert!(start.elapsed() < STUCK, "the operation is stuck");
        thread::yield_now();
    }
    op.join().unwrap()
}

// Each operation on its own.

#[test]
fn a_login_claims_the_lease_binds_the_session_and_announces_online_when_asked() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let login = rig.sessions.login(ALICE, &c1).unwrap();
    assert_eq!(login, Login { epoch: login.epoch, user: ALICE, replaced: false, elsewhere: None });
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
    assert_eq!(rig.sessions.user_of(c1.id), Some(ALICE));
    assert_eq!(rig.sessions.connection_of(ALICE).map(|c| c.id), Some(c1.id));
    assert!(rig.announced.made().is_empty(), "nothing before the caller asks");
    rig.sessions.announce_online(&login);
    assert_eq!(rig.announced.made(), [(ALICE, true)]);
}

#[test]
fn a_second_login_replaces_and_kicks_the_first_which_cannot_log_it_out() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let login = rig.sessions.login(ALICE, &c2).unwrap();
    assert_eq!(login, Login { epoch: login.epoch, user: ALICE, replaced: true, elsewhere: None });
    rig.sessions.announce_online(&login);
    assert!(rig.announced.made().is_empty(), "alice was online already");
    assert_eq!(c1.kicked().as_deref(), Some(REPLACED));

    assert_eq!(rig.sessions.end(c1.id), None, "the replaced connection has no session left");
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
    assert_eq!(rig.sessions.end(c2.id), Some(ALICE));
    assert_eq!(rig.holder(ALICE), None);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
    assert!(rig.sessions.is_empty());
}

#[test]
fn a_login_over_a_session_on_another_proxy_names_that_proxy() {
    let rig = Rig::new();
    rig.claim_elsewhere(ALICE);
    let login = rig.sessions.login(ALICE, &Conn::new(1)).unwrap();
    assert_eq!(
        login,
        Login { epoch: login.epoch, user: ALICE, replaced: true, elsewhere: Some(OTHER.into()) }
    );
    assert_eq!(rig.holder(ALICE).as_deref(), Some(ME));
}

#[test]
fn a_resume_is_a_login() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let resumed = rig.sessions.resume(ALICE, &c2).unwrap();
    assert_eq!(resumed, Login { epoch: resumed.epoch, user: ALICE, replaced: true, elsewhere: None });
    assert_eq!(rig.sessions.user_of(c2.id), Some(ALICE));
    assert_eq!(c1.kicked().as_deref(), Some(REPLACED));
}

#[test]
fn a_login_on_a_connection_with_a_session_ends_that_session_as_a_logout_would() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let _ = rig.sessions.login(BOB, &c1).unwrap();
    assert_eq!(rig.sessions.user_of(c1.id), Some(BOB));
    assert!(rig.sessions.connection_of(ALICE).is_none());
    assert_eq!(rig.holder(ALICE), None);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
    assert_eq!(c1.kicked(), None, "the connection stays, with its new user");
}

#[test]
fn undoing_a_failed_login_spares_a_newer_login_on_the_connection_and_of_the_user() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let alice = rig.sessions.login(ALICE, &c1).unwrap();
    let bob = rig.sessions.login(BOB, &c1).unwrap();
    // Alice's login failed after binding, but bob has the connection now.
    assert!(!rig.sessions.end_login(&alice, c1.id));
    assert_eq!(rig.sessions.user_of(c1.id), Some(BOB));
    assert_eq!(rig.holder(BOB).as_deref(), Some(ME));
    // A newer login of the same user on another connection is spared too.
    let bob_again = rig.sessions.login(BOB, &c2).unwrap();
    assert!(!rig.sessions.end_login(&bob, c1.id));
    assert_eq!(rig.sessions.user_of(c2.id), Some(BOB));
    // Undoing the newest login ends it, as a logout would.
    assert!(rig.sessions.end_login(&bob_again, c2.id));
    assert_eq!(rig.sessions.user_of(c2.id), None);
    assert_eq!(rig.holder(BOB), None);
}

#[test]
fn ending_a_session_releases_its_lease_and_announces_offline_once() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    assert_eq!(rig.sessions.end(c1.id), Some(ALICE));
    assert_eq!(rig.sessions.end(c1.id), None);
    assert_eq!(rig.sessions.end(Conn::new(9).id), None);
    assert_eq!(rig.holder(ALICE), None);
    assert_eq!(rig.announced.made(), [(ALICE, false)]);
}

#[test]
fn a_session_whose_lease_went_elsewhere_ends_without_releasing_it() {
    let rig = Rig::new();
    let c1 = Conn::new(1);
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    rig.claim_elsewhere(ALICE);
    assert_eq!(rig.sessions.end(c1.id), Some(ALICE));
    assert_eq!(rig.holder(ALICE).as_deref(), Some(OTHER), "alice is online on the other proxy");
    assert!(rig.announced.made().is_empty());
}

#[test]
fn ending_all_sessions_releases_every_lease_and_waits_for_the_announcements() {
    let rig = Rig::new();
    let (c1, c2) = (Conn::new(1), Conn::new(2));
    let _ = rig.sessions.login(ALICE, &c1).unwrap();
    let _ = rig.sessions.login(BOB, &c2).unwrap();
    rig.claim_elsewhere(BOB);
    assert_eq!(rig.sessions.end_all(STUCK), 2);
    assert!(rig.sessions.is_empty());
    assert_eq!(rig.holder(ALICE), None);
    assert_eq!(rig.holder(BOB).as_deref(), Some(OTHER));
    assert_eq!(rig.announced.made(), [(ALICE, false)], "bob is online elsewhere");
    assert_eq!((c1.kicked(), c2.kicked()), (None, None), "connections stay open");
}
