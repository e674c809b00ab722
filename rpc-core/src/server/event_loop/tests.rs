//! One connection's state machine, driven by hand: a real loopback socket adopted
//! by an `EventLoop` that is not running, whose reads, commands, writes and
//! once-a-second checks each test calls in the loop's order, on a clock it
//! chooses. No worker runs: a call waits in the queue until the test answers it
//! with the `Command::Reply` a worker would send.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener as StdListener, TcpStream as StdStream};

use super::*;
use crate::auth::{Authenticator, Credential};
use crate::Code;

/// Longest a test waits for the loop to get somewhere; generous for a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// Accepts every call; never runs, as no worker is started.
struct Sink;

impl Service for Sink {
    fn name(&self) -> &str {
        "test.Sink"
    }
    fn call(&self, _ctx: &Context, _method: &str, body: Bytes) -> Result<Bytes, Status> {
        Ok(body)
    }
}

/// A loop that owns one server connection, and the client's end of it.
struct Harness {
    lp: EventLoop,
    token: Token,
    client: std::net::TcpStream,
}

impl Harness {
    fn new(config: Config) -> Harness {
        let sink: Arc<dyn Service> = Arc::new(Sink);
        let (services, _) = lanes::plan([("test.Sink".to_owned(), sink)].into(), &config).unwrap();
        let queues = (pool::queue(4), Vec::new());
        let shared =
            (Arc::new(Memory::default()), Arc::new(PerAddress::new(config.max_connections_per_address)));
        let mut lp = EventLoop::new(0, &config, Arc::new(services), queues, shared).unwrap();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let client = StdStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(PATIENCE)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        lp.adopt(TcpStream::from_std(server), peer);
        let token = *lp.conns.keys().next().expect("the socket was adopted");
        Harness { lp, token, client }
    }

    /// The connection's state; panics once it is closed.
    fn conn(&self) -> &Conn {
        self.lp.conns.get(&self.token).expect("the connection is open")
    }

    fn is_open(&self) -> bool {
        self.lp.conns.contains_key(&self.token)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).unwrap();
    }

    /// One turn of the loop as a readable, writable socket gets it: read, then write
    /// what is dirty.
    fn turn(&mut self) {
        self.lp.now = Instant::now();
        if self.is_open() {
            self.lp.read(self.token);
            self.lp.mark_dirty(self.token);
        }
        self.lp.flush_dirty();
    }

    /// Turns the loop until `done` holds for it.
    fn turn_until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.turn();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "the loop never got to: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until at least `n` bytes wait unread in the server's socket.
    fn wait_unread(&self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        let mut buf = vec![0u8; n];
        while self.conn().stream.peek(&mut buf).unwrap_or(0) < n {
            assert!(Instant::now() < deadline, "{n} bytes never reached the server's socket");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Answers one call that held `cost` bytes, as a worker would, and lets the loop
    /// take the answer.
    fn answer(&mut self, cost: usize) {
        let id = self.conn().handle.id();
        self.lp.shared().send(Command::Reply { id, call_id: 1, result: Ok(Bytes::new()), cost });
        self.lp.now = Instant::now();
        self.lp.drain_commands();
        self.lp.flush_dirty();
    }

    /// The next frame the client reads.
    fn client_frame(&mut self) -> frame::Frame {
        read_frame(&mut self.client).expect("a frame before the end")
    }
}

/// Reads one frame from a blocking socket; `None` at its end.
fn read_frame(stream: &mut StdStream) -> Option<frame::Frame> {
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(f) = frame::decode(&mut buf, usize::MAX).unwrap() {
            assert!(buf.is_empty(), "read past one frame");
            return Some(f);
        }
        // Read no further than the frame, so the next call starts on a boundary.
        let want = if buf.len() < frame::LENGTH_LEN {
            frame::LENGTH_LEN - buf.len()
        } else {
            frame::LENGTH_LEN + u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize - buf.len()
        };
        match stream.read(&mut chunk[..want.min(4096)]).unwrap() {
            0 => {
                assert!(buf.is_empty(), "the stream ended inside a frame");
                return None;
            }
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A request for the sink, and the bytes it holds against its connection's budget.
fn request(call_id: u64, body_len: usize) -> (BytesMut, usize) {
    let mut buf = BytesMut::new();
    frame::put_request(&mut buf, call_id, 0, "test.Sink", "Put", &vec![7u8; body_len]);
    let cost = buf.len();
    (buf, cost)
}

#[test]
fn a_frame_read_in_pieces_is_handled_once_whole_and_timed_from_its_first_byte() {
    let mut h = Harness::new(Config::default());
    let mut ping = BytesMut::new();
    frame::put_control(&mut ping, Kind::Ping, 7);
    // The length prefix cut, then the header.
    h.send(&ping[..3]);
    h.turn_until("the first piece read", |h| h.conn().inbuf.len() == 3);
    let first = h.conn().partial_since.expect("a partial frame is timed");
    h.send(&ping[3..10]);
    h.turn_until("the second piece read", |h| h.conn().inbuf.len() == 10);
    assert_eq!(h.conn().partial_since, Some(first), "the clock runs from the frame's first byte");
    assert!(h.conn().out.is_empty(), "nothing is answered before the frame is whole");
    h.send(&ping[10..]);
    h.turn_until("the frame read whole", |h| h.conn().inbuf.is_empty());
    assert_eq!(h.conn().partial_since, None);
    let pong = h.client_frame();
    assert_eq!((pong.kind, pong.call_id), (Kind::Pong, 7));
}

#[test]
fn a_frame_trickled_past_the_frame_timeout_is_evicted_with_a_go_away() {
    let config = Config::default();
    let mut h = Harness::new(config.clone());
    let (req, _) = request(1, 100);
    h.send(&req[..20]);
    h.turn_until("the first bytes read", |h| h.conn().partial_since.is_some());
    let since = h.conn().partial_since.unwrap();
    h.lp.enforce_limits(since + config.frame_timeout);
    assert!(h.conn().evicted.is_none(), "evicted at the limit, not past it");
    h.lp.enforce_limits(since + config.frame_timeout + Duration::from_millis(1));
    h.turn_until("the evicted connection closed", |h| !h.is_open());
    let goaway = h.client_frame();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(&goaway.body[..], b"a frame took more than 30 s to arrive");
    assert!(read_frame(&mut h.client).is_none(), "the go-away is the last word");
}

#[test]
fn over_its_budget_a_connection_stops_reading_and_reads_on_under_half_its_budget() {
    let budget = 4096;
    let mut h = Harness::new(Config { connection_budget: budget, ..Config::default() });
    let (req, cost) = request(1, 1200);
    let batch = |n| req.repeat(n);
    // Four calls are over the budget, three are under it but over half of it, one is under half.
    assert!(4 * cost > budget && 3 * cost <= budget && 2 * cost > budget / 2 && cost <= budget / 2);
    h.send(&batch(4));
    h.turn_until("four calls read", |h| h.conn().in_flight == 4);
    assert!(h.conn().paused, "over its budget, the connection is paused");
    h.send(&batch(4));
    h.wait_unread(4 * cost);
    h.turn();
    assert_eq!(h.conn().in_flight, 4, "a paused connection reads nothing");
    h.answer(cost);
    assert!(h.conn().paused, "under its budget but over half of it, it stays paused");
    assert_eq!(h.conn().in_flight, 3);
    h.answer(cost);
    assert!(h.conn().paused);
    assert_eq!(h.conn().in_flight, 2);
    h.answer(cost);
    // Under half its budget it reads on, without a new event from the socket, up to
    // its budget again.
    assert_eq!(h.conn().in_flight, 5, "the four calls waiting in the socket are read");
    assert!(h.conn().paused);
    for _ in 0..3 {
        assert_eq!(h.client_frame().kind, Kind::Response);
    }
}

#[test]
fn a_peer_that_stops_reading_is_evicted_with_a_go_away_once_its_timeout_passes() {
    let config = Config {
        connection_budget: 64 * 1024,
        // Out of the way: this test is about the stalled reader.
        connection_hard_limit: usize::MAX,
        ..Config::default()
    };
    let mut h = Harness::new(config.clone());
    let id = h.conn().handle.id();
    let mut push = BytesMut::new();
    frame::put_push(&mut push, "test.Push", "Fill", &vec![1u8; 256 * 1024]);
    let push = push.freeze();
    // The client reads nothing: push until the socket's buffers are full and the
    // rest waits in the connection's output, over its budget.
    let mut pushed = 0;
    while h.conn().out.len() <= config.connection_budget {
        assert!(pushed < 1024, "the socket never filled");
        h.lp.shared().send(Command::Push { id, frame: push.clone() });
        h.lp.now = Instant::now();
        h.lp.drain_commands();
        h.lp.flush_dirty();
        pushed += 1;
    }
    // Two more wait whole behind the frame being written.
    for _ in 0..2 {
        h.lp.shared().send(Command::Push { id, frame: push.clone() });
        pushed += 1;
    }
    h.lp.drain_commands();
    let drained = h.conn().last_drain;
    h.lp.enforce_limits(drained + config.stalled_reader_timeout);
    assert!(h.conn().evicted.is_none(), "evicted at the timeout, not past it");
    // That check wrote what the socket took, if anything: the clock starts there.
    let drained = h.conn().last_drain;
    h.lp.enforce_limits(drained + config.stalled_reader_timeout + Duration::from_millis(1));
    assert!(h.conn().evicted.is_some());
    assert!(!h.conn().handle.is_open(), "handles see the eviction at once");
    // Now the client reads: every whole push it was sent, then the go-away.
    let mut reader = h.client.try_clone().unwrap();
    let frames =
        std::thread::spawn(move || std::iter::from_fn(|| read_frame(&mut reader)).collect::<Vec<_>>());
    h.turn_until("the go-away written and the connection closed", |h| !h.is_open());
    let frames = frames.join().unwrap();
    let (last, pushes) = frames.split_last().unwrap();
    assert!(pushes.iter().all(|f| f.kind == Kind::Push && f.body.len() == 256 * 1024));
    assert!(pushes.len() + 2 <= pushed, "what was queued past the frame being written is dropped");
    assert_eq!(last.kind, Kind::GoAway);
    let reason = String::from_utf8_lossy(&last.body);
    assert!(reason.starts_with("the peer read nothing for 10 s"), "{reason}");
}

#[test]
fn a_push_from_the_client_gets_a_go_away_and_nothing_after_it_is_acted_on() {
    let mut h = Harness::new(Config::default());
    let mut bytes = BytesMut::new();
    frame::put_push(&mut bytes, "test.Sink", "Put", b"x");
    frame::put_control(&mut bytes, Kind::Ping, 9);
    bytes.extend_from_slice(&request(2, 10).0);
    h.send(&bytes);
    h.turn_until("the connection closed", |h| !h.is_open());
    let goaway = h.client_frame();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(&goaway.body[..], b"protocol violation: clients may not send push frames");
    assert!(read_frame(&mut h.client).is_none(), "no pong, no answer after the go-away");
}

#[test]
fn a_peer_that_shut_down_its_sending_side_gets_its_answers_then_the_connection_closes() {
    let mut h = Harness::new(Config::default());
    let (req, cost) = request(5, 10);
    h.send(&req);
    h.client.shutdown(Shutdown::Write).unwrap();
    h.turn_until("the call read and the end seen", |h| h.conn().closing && h.conn().in_flight == 1);
    h.turn();
    assert!(h.is_open(), "open while its call runs");
    h.answer(cost);
    assert!(!h.is_open(), "closed once the answer is written");
    let answer = h.client_frame();
    assert_eq!(answer.kind, Kind::Response);
    assert!(read_frame(&mut h.client).is_none());
}

#[test]
fn until_the_peer_authenticates_its_calls_are_refused_and_then_they_are_queued() {
    let auth = Authenticator::shared_secret(b"secret").with_timeout(Duration::from_secs(30));
    let mut h = Harness::new(Config { authenticator: Some(auth), ..Config::default() });
    assert!(h.conn().gate.is_some());
    h.send(&request(1, 10).0);
    h.turn_until("the call answered", |h| h.conn().inbuf.is_empty() && h.conn().out.is_empty());
    let refused = h.client_frame();
    assert_eq!((refused.kind, refused.code, refused.call_id), (Kind::Response, Code::Unauthenticated, 1));
    assert_eq!(h.conn().in_flight, 0, "a refused call is not queued");
    let mut client = h.client.try_clone().unwrap();
    let handshake = std::thread::spawn(move || {
        crate::auth::client_handshake(&mut client, &Credential::shared_secret(b"secret"), PATIENCE)
    });
    h.turn_until("the handshake passed", |h| h.conn().gate.is_none());
    handshake.join().unwrap().expect("the handshake passes");
    h.send(&request(2, 10).0);
    h.turn_until("the call queued", |h| h.conn().in_flight == 1);
}

#[test]
fn a_peer_that_does_not_authenticate_in_time_is_evicted() {
    let timeout = Duration::from_secs(5);
    let auth = Authenticator::shared_secret(b"secret").with_timeout(timeout);
    let mut h = Harness::new(Config { authenticator: Some(auth), ..Config::default() });
    let opened = h.lp.now;
    h.lp.enforce_limits(opened + timeout - Duration::from_millis(1));
    assert!(h.conn().evicted.is_none());
    h.lp.enforce_limits(opened + timeout);
    h.turn_until("the evicted connection closed", |h| !h.is_open());
    let goaway = h.client_frame();
    assert_eq!(goaway.kind, Kind::GoAway);
    assert_eq!(&goaway.body[..], b"authentication did not complete in time");
}
