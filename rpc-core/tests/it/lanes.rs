//! Named lanes: each with threads and a bounded queue of its own, so that one lane
//! full and stuck delays no call outside it; refusals past a lane's bounds; the
//! defaults of a lane the config does not size; declarations the server refuses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::server::{Builder, Config, Context, Handle, Lane, Service};
use rpc_core::{Code, Error, Outcome, Status};

use crate::support::{wait_until, Gate};

const PATIENCE: Duration = Duration::from_secs(20);

/// The gates and counters the test holds.
#[derive(Default)]
struct Probe {
    /// Where `Login` calls wait.
    logins: Gate,
    /// Where `Resume` calls wait.
    resumes: Gate,
    /// Where `Spare` calls wait.
    spare: Gate,
    /// Calls that started, of any method.
    started: AtomicUsize,
}

impl Probe {
    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// `Login` runs in the lane "logins", `Resume` in "resumes", `Spare` in "spare" (which
/// the tests leave unsized); each waits at its gate. `Echo` runs on the workers.
struct Lanes(Arc<Probe>);

impl Service for Lanes {
    fn name(&self) -> &str {
        "test.Lanes"
    }

    fn lanes(&self) -> &[(&'static str, &'static str)] {
        &[("Login", "logins"), ("Resume", "resumes"), ("Spare", "spare")]
    }

    fn call(&self, _ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        self.0.started.fetch_add(1, Ordering::SeqCst);
        match method {
            "Login" => self.0.logins.wait(),
            "Resume" => self.0.resumes.wait(),
            "Spare" => self.0.spare.wait(),
            "Echo" => {}
            _ => return Err(Status::unimplemented(method.to_owned())),
        }
        Ok(body)
    }
}

/// A server with every gate closed, and a channel to it.
fn serve(config: Config) -> (Handle, Arc<Probe>, Channel) {
    let probe = Arc::new(Probe::default());
    for gate in [&probe.logins, &probe.resumes, &probe.spare] {
        gate.close();
    }
    let server = Builder::new(config).service(Lanes(probe.clone())).bind("127.0.0.1:0").unwrap();
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    (server, probe, channel)
}

type Answers = crossbeam_channel::Receiver<Result<Bytes, Error>>;

/// Sends `n` calls of `method` on `channel` without waiting; their answers come on the receiver.
fn send(channel: &Channel, method: &str, n: usize) -> Answers {
    let (tx, rx) = crossbeam_channel::unbounded();
    for _ in 0..n {
        let tx = tx.clone();
        channel.call_raw_with("test.Lanes", method, b"x", None, Box::new(move |r| drop(tx.send(r))));
    }
    rx
}

/// Asserts that `err` is the server's refusal, not run, naming `why`.
fn assert_refused(err: &Error, why: &str) {
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert_eq!(err.outcome(), Outcome::NotRun, "{err}");
    assert!(err.to_string().contains(why), "{err} should say: {why}");
}

/// Waits for `n` answers on `answers`, each the body sent.
fn expect_answers(answers: &Answers, n: usize) {
    for _ in 0..n {
        assert_eq!(&answers.recv_timeout(PATIENCE).unwrap().unwrap()[..], b"x");
    }
}

fn sized(workers: usize, max_queued: usize, per_connection: usize) -> Lane {
    Lane { workers, max_queued, max_queued_per_connection: Some(per_connection) }
}

#[test]
fn a_call_in_one_lane_is_answered_while_another_lane_is_stuck_and_full() {
    let mut config = Config::default();
    config.lanes.insert("logins".to_owned(), sized(1, 2, 2));
    config.lanes.insert("resumes".to_owned(), sized(1, 16, 2));
    let (server, probe, flooder) = serve(config);

    // The logins lane's one thread is stuck, and two more logins wait for it.
    let running = send(&flooder, "Login", 1);
    wait_until(PATIENCE, "a login to hold the lane's thread", || probe.logins.arrived() == 1);
    let waiting = send(&flooder, "Login", 2);
    // A third waiting login from the same connection is past its share.
    let err = flooder.call_raw("test.Lanes", "Login", b"x", Some(PATIENCE)).unwrap_err();
    assert_refused(&err, "2 calls of this connection already wait in the logins lane");
    // Another connection finds the lane full.
    let other = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    let err = other.call_raw("test.Lanes", "Login", b"x", Some(PATIENCE)).unwrap_err();
    assert_refused(&err, "2 calls already wait in the logins lane");

    // The resumes lane has threads of its own: a resume is answered at once.
    probe.resumes.open();
    let resumed = other.call_raw("test.Lanes", "Resume", b"r", Some(PATIENCE)).unwrap();
    assert_eq!(&resumed[..], b"r");
    // And so is a call on the workers, from the flooding connection itself.
    assert_eq!(&flooder.call_raw("test.Lanes", "Echo", b"e", Some(PATIENCE)).unwrap()[..], b"e");
    assert_eq!(probe.started(), 3, "one login, the resume and the echo ran; nothing refused did");

    // Every login admitted runs once the lane's thread is free.
    probe.logins.open();
    expect_answers(&running, 1);
    expect_answers(&waiting, 2);
    assert_eq!(probe.logins.arrived(), 3, "the three admitted logins ran");
}

#[test]
fn a_lane_the_config_does_not_size_gets_the_heavy_lanes_defaults() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let defaults = Lane::default();
    assert_eq!(defaults, Lane { workers: cores, max_queued: 256, max_queued_per_connection: None });
    assert_eq!(defaults.queued_per_connection(), 32, "an eighth of 256");
    // Sizing the heavy lane changes nothing for the others.
    let (_server, probe, channel) =
        serve(Config { heavy_workers: 1, max_heavy_queued: 4, ..Config::default() });

    // One connection may have half the lane's threads (rounded up) running its calls...
    let running = cores.div_ceil(2);
    let first = send(&channel, "Spare", running);
    wait_until(PATIENCE, "the spare lane's calls to start", || probe.spare.arrived() == running);
    // ...and an eighth of 256 waiting; past that its calls are refused at once.
    let waiting = send(&channel, "Spare", 32);
    let refused = send(&channel, "Spare", 3);
    for _ in 0..3 {
        let err = refused.recv_timeout(PATIENCE).unwrap().unwrap_err();
        assert_refused(&err, "32 calls of this connection already wait in the spare lane");
    }
    probe.spare.open();
    expect_answers(&first, running);
    expect_answers(&waiting, 32);
    assert_eq!(probe.started(), running + 32, "no refused call ran");
}

/// A service whose `lanes` the test chooses.
struct Declares(&'static [(&'static str, &'static str)]);

impl Service for Declares {
    fn name(&self) -> &str {
        "test.Declares"
    }

    fn lanes(&self) -> &[(&'static str, &'static str)] {
        self.0
    }

    fn runs_inline(&self, method: &str) -> bool {
        method == "Inline"
    }

    fn call(&self, _ctx: &Context, _method: &str, body: Bytes) -> Result<Bytes, Status> {
        Ok(body)
    }
}

#[test]
fn the_server_refuses_a_method_in_two_lanes_or_inline_too_a_heavy_lane_sized_twice_and_an_undeclared_lane_sized(
) {
    let bind = |config: Config, lanes| Builder::new(config).service(Declares(lanes)).bind("127.0.0.1:0");
    let Err(Error::Io(e)) = bind(Config::default(), &[("Put", "heavy"), ("Put", "writes")]) else {
        panic!("a method in two lanes was served");
    };
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("test.Declares/Put is declared in two lanes"), "{e}");

    let mut config = Config::default();
    config.lanes.insert("heavy".to_owned(), Lane::default());
    let Err(Error::Io(e)) = bind(config, &[("Put", "heavy")]) else {
        panic!("Config::lanes sized the heavy lane");
    };
    assert!(e.to_string().contains("size that lane with heavy_workers"), "{e}");

    // A size for a lane no service declares (a misspelt name) is refused too.
    let mut config = Config::default();
    config.lanes.insert("wirtes".to_owned(), Lane::default());
    let Err(Error::Io(e)) = bind(config, &[("Put", "writes")]) else {
        panic!("Config::lanes sized a lane nobody declares");
    };
    assert!(e.to_string().contains("sizes the lane \"wirtes\", which no service"), "{e}");

    // A method the service runs inline, on the event loop, cannot be in a lane too.
    let Err(Error::Io(e)) = bind(Config::default(), &[("Inline", "writes")]) else {
        panic!("a method both inline and in a lane was served");
    };
    assert!(e.to_string().contains("test.Declares/Inline is declared both inline and in the lane"), "{e}");

    // The same declaration twice is one declaration.
    let server = bind(Config::default(), &[("Put", "writes"), ("Put", "writes")]).unwrap();
    let channel = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(&channel.call_raw("test.Declares", "Put", b"p", Some(PATIENCE)).unwrap()[..], b"p");
}
