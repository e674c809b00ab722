//! The generated echo service end to end, over real loopback sockets: the
//! generated adapter and client stub on top of rpc-core's server and channel.
//!
//! The test service does what a request's text says: `panic`, `block` (tell
//! the test it started, then wait until the test opens the gate) or, for any
//! other text, echo. Waits are on conditions with deadlines, not on sleeps.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use examples::echo::{echo_rpc, Echo, EchoClient, EchoReply, EchoRequest, EchoServer};
use examples::echo::{StatsReply, StatsRequest};
use prost::Message;
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Frame, Kind};
use rpc_core::server::{Builder, Config, Context, Handle};
use rpc_core::{Code, Error, Status};

/// Longest any test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);

/// What the test and its service share.
#[derive(Default)]
struct Shared {
    /// Holds `block` requests until the test opens it.
    gate: Gate,
    /// Texts of the `block` requests that started, in order.
    started: Mutex<Vec<String>>,
    /// Told when `started` grows.
    started_changed: Condvar,
    /// `Say` calls the handler ran.
    say_calls: AtomicUsize,
}

impl Shared {
    /// Waits until `n` `block` requests have started; returns their texts.
    fn wait_started(&self, n: usize) -> Vec<String> {
        let started = self.started.lock().unwrap();
        let (started, timeout) =
            self.started_changed.wait_timeout_while(started, PATIENCE, |s| s.len() < n).unwrap();
        assert!(!timeout.timed_out(), "only {} of {n} blocking calls started", started.len());
        started.clone()
    }
}

/// A latch: closed until opened, then open for good.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    /// Waits for the gate, but never past `PATIENCE`, so a failed test cannot
    /// hang the server's shutdown on a blocked worker.
    fn wait(&self) {
        let open = self.open.lock().unwrap();
        let _ = self.changed.wait_timeout_while(open, PATIENCE, |open| !*open).unwrap();
    }
}

/// The service under test, implementing the generated trait.
struct TestEcho(Arc<Shared>);

impl Echo for TestEcho {
    fn say(&self, _ctx: &Context, request: EchoRequest) -> Result<EchoReply, Status> {
        self.0.say_calls.fetch_add(1, Ordering::SeqCst);
        match request.text.as_str() {
            "panic" => panic!("the test asked for a panic"),
            "block" => {
                self.0.started.lock().unwrap().push(request.text.clone());
                self.0.started_changed.notify_all();
                self.0.gate.wait();
            }
            _ => {}
        }
        Ok(EchoReply { payload: request.payload, text: request.text })
    }

    fn stats(&self, _ctx: &Context, _request: StatsRequest) -> Result<StatsReply, Status> {
        Ok(StatsReply { say_calls: self.0.say_calls.load(Ordering::SeqCst) as u64 })
    }
}

/// A server on a free port with the test service, and what it shares.
fn serve(config: Config) -> (Handle, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let server =
        Builder::new(config).service(EchoServer(TestEcho(shared.clone()))).bind("127.0.0.1:0").unwrap();
    (server, shared)
}

fn connect(addr: SocketAddr) -> Channel {
    Channel::connect(addr, ClientConfig::default()).unwrap()
}

fn say(text: &str) -> EchoRequest {
    EchoRequest { text: text.to_owned(), payload: text.as_bytes().to_vec() }
}

fn status_code(result: Result<impl std::fmt::Debug, Error>) -> Code {
    match result {
        Err(Error::Status(status)) => status.code,
        other => panic!("expected a status from the server, got {other:?}"),
    }
}

#[test]
fn say_round_trips_blocking_and_with_a_callback() {
    let server = Builder::new(Config::default())
        .service(EchoServer(examples::EchoHandler::default()))
        .bind("127.0.0.1:0")
        .unwrap();
    let client = EchoClient::new(connect(server.local_addr()));

    let reply = client.say(&EchoRequest { payload: vec![0, 1, 255], text: "hello".into() }).unwrap();
    assert_eq!(reply, EchoReply { payload: vec![0, 1, 255], text: "hello".into() });

    let (tx, rx) = mpsc::channel();
    client.say_with(&say("called back"), move |reply| tx.send(reply).unwrap());
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap().text, "called back");

    // `Stats` runs inline on the event loop; it sees both calls.
    assert_eq!(client.stats(&StatsRequest {}).unwrap().say_calls, 2);
}

#[test]
fn an_unknown_method_or_service_is_unimplemented() {
    let (server, _) = serve(Config::default());
    let channel = connect(server.local_addr());
    let err = channel.call_raw(echo_rpc::SERVICE_NAME, "Shout", b"", None).unwrap_err();
    assert!(err.to_string().contains("Shout"), "{err}");
    assert_eq!(status_code(Err::<(), _>(err)), Code::Unimplemented);
    assert_eq!(status_code(channel.call_raw("echo.Nobody", "Say", b"", None)), Code::Unimplemented);
}

#[test]
fn a_malformed_body_is_invalid_argument() {
    let (server, shared) = serve(Config::default());
    let channel = connect(server.local_addr());
    // Field 1, length-delimited, announcing 5 bytes where 1 follows.
    let result = channel.call_raw(echo_rpc::SERVICE_NAME, echo_rpc::methods::SAY, &[0x0a, 0x05, 0x01], None);
    assert_eq!(status_code(result), Code::InvalidArgument);
    assert_eq!(shared.say_calls.load(Ordering::SeqCst), 0, "the handler never saw the request");
    assert_eq!(EchoClient::new(channel).say(&say("fine")).unwrap().text, "fine");
}

#[test]
fn a_handler_panic_is_internal_and_the_server_keeps_serving() {
    let (server, _) = serve(Config { workers: 2, ..Config::default() });
    let client = EchoClient::new(connect(server.local_addr()));
    // More panics than workers: a worker that died would leave none to answer.
    for _ in 0..5 {
        let err = client.say(&say("panic")).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(status_code(Err::<(), _>(err)), Code::Internal);
    }
    assert_eq!(client.say(&say("still here")).unwrap().text, "still here");
}

#[test]
fn many_threads_over_one_channel_each_get_their_own_answers() {
    let (server, shared) = serve(Config::default());
    let client = EchoClient::new(connect(server.local_addr()));
    const THREADS: usize = 8;
    const CALLS: usize = 300;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let client = &client;
            s.spawn(move || {
                for i in 0..CALLS {
                    let request = say(&format!("thread {t} call {i}"));
                    let reply = client.say(&request).unwrap();
                    assert_eq!((reply.text, reply.payload), (request.text, request.payload));
                }
            });
        }
    });
    assert_eq!(shared.say_calls.load(Ordering::SeqCst), THREADS * CALLS);
}

#[test]
fn a_fast_call_overtakes_a_slow_one_on_the_same_connection() {
    let (server, shared) = serve(Config { workers: 4, ..Config::default() });
    // One connection (the default), so both calls share a socket.
    let client = EchoClient::new(connect(server.local_addr()));

    let (slow_tx, slow_rx) = mpsc::channel();
    client.say_with(&say("block"), move |reply| slow_tx.send(reply).unwrap());
    shared.wait_started(1);

    assert_eq!(client.say(&say("fast")).unwrap().text, "fast");
    assert!(slow_rx.try_recv().is_err(), "the slow call finished before the fast one");

    shared.gate.open();
    assert_eq!(slow_rx.recv_timeout(PATIENCE).unwrap().unwrap().text, "block");
}

#[test]
fn a_handler_slower_than_the_client_timeout_gives_timeout() {
    let (server, shared) = serve(Config::default());
    let timeout = Duration::from_millis(150);
    let client = EchoClient::new(connect(server.local_addr())).with_timeout(timeout);

    let start = Instant::now();
    let err = client.say(&say("block")).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() >= timeout, "gave up after {:?}", start.elapsed());

    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    client.say_with(&say("block"), move |reply| tx.send(reply).unwrap());
    let err = rx.recv_timeout(PATIENCE).unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(start.elapsed() >= timeout, "gave up after {:?}", start.elapsed());

    shared.gate.open();
    // The late replies are dropped by the client; the channel still works.
    assert_eq!(client.say(&say("after")).unwrap().text, "after");
}

/// A callback call on a quiet connection times out at its deadline, not at
/// the reader's next periodic wake-up.
#[test]
fn a_callback_times_out_close_to_its_deadline() {
    let (server, shared) = serve(Config::default());
    let timeout = Duration::from_millis(100);
    let client = EchoClient::new(connect(server.local_addr())).with_timeout(timeout);
    // A reply has just arrived, so the reader has just started a fresh read.
    client.say(&say("warm up")).unwrap();

    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    client.say_with(&say("block"), move |reply| tx.send(reply).unwrap());
    let err = rx.recv_timeout(PATIENCE).unwrap().unwrap_err();
    let waited = start.elapsed();
    shared.gate.open();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(waited < timeout + Duration::from_millis(300), "timed out after {waited:?}, not ~{timeout:?}");
}

/// Writes one request frame with `timeout_ms` on a raw socket.
fn send_request(stream: &mut TcpStream, call_id: u64, timeout_ms: u32, request: &EchoRequest) {
    let mut buf = BytesMut::new();
    let body = request.encode_to_vec();
    frame::put_request(&mut buf, call_id, timeout_ms, echo_rpc::SERVICE_NAME, echo_rpc::methods::SAY, &body);
    stream.write_all(&buf).unwrap();
}

/// Reads frames from a raw socket until a whole one arrives; `None` at EOF.
fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    loop {
        if let Some(f) = frame::decode(buf, frame::DEFAULT_MAX_FRAME).unwrap() {
            return Some(f);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("no frame within {PATIENCE:?}: {e}"),
        }
    }
}

#[test]
fn a_request_queued_past_its_deadline_gets_deadline_exceeded() {
    // One worker, held by a blocked call, so the next request waits in the queue.
    let (server, shared) = serve(Config { workers: 1, ..Config::default() });
    let client = EchoClient::new(connect(server.local_addr()));
    let (tx, rx) = mpsc::channel();
    client.say_with(&say("block"), move |reply| tx.send(reply).unwrap());
    shared.wait_started(1);

    // A raw socket, so nothing on the client side gives up before the server answers.
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    let deadline = Duration::from_millis(50);
    send_request(&mut raw, 7, deadline.as_millis() as u32, &say("late"));
    // The scenario itself: the deadline has to pass while the request is queued.
    std::thread::sleep(deadline * 2);
    shared.gate.open();

    let reply = read_frame(&mut raw, &mut BytesMut::new()).expect("an answer");
    assert_eq!((reply.kind, reply.call_id), (Kind::Response, 7));
    let status = reply.into_result().unwrap_err();
    assert_eq!(status.code, Code::DeadlineExceeded, "{status}");
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap().text, "block");
    assert_eq!(shared.say_calls.load(Ordering::SeqCst), 1, "the expired request never ran");
}

#[test]
fn garbage_and_oversized_frames_do_not_disturb_other_clients() {
    let (server, _) = serve(Config::default());
    let addr = server.local_addr();
    let client = EchoClient::new(connect(addr));
    let stop = std::sync::atomic::AtomicBool::new(false);

    std::thread::scope(|s| {
        // A well-behaved client calls throughout.
        let good = s.spawn(|| {
            let mut calls = 0;
            while !stop.load(Ordering::SeqCst) || calls < 100 {
                let text = format!("good {calls}");
                assert_eq!(client.say(&say(&text)).unwrap().text, text);
                calls += 1;
            }
            calls
        });

        // Text where a frame should be: refused by its version byte and closed.
        let mut http = TcpStream::connect(addr).unwrap();
        http.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").unwrap();

        // A frame of an unknown protocol version: told to go away, then closed.
        let mut wrong_version = TcpStream::connect(addr).unwrap();
        let mut buf = BytesMut::new();
        frame::put_request(&mut buf, 1, 0, echo_rpc::SERVICE_NAME, "Say", b"");
        buf[4] = 99;
        wrong_version.write_all(&buf).unwrap();
        let mut inbuf = BytesMut::new();
        let goaway = read_frame(&mut wrong_version, &mut inbuf).expect("a go-away frame");
        assert_eq!(goaway.kind, Kind::GoAway);
        assert!(read_frame(&mut wrong_version, &mut inbuf).is_none(), "the server closes the connection");

        // A request announcing 2 GiB: refused by its header, then its bytes are skipped.
        let mut huge = TcpStream::connect(addr).unwrap();
        let mut header = BytesMut::new();
        header.put_u32(0x7fff_ffff);
        header.put_slice(&[frame::VERSION, Kind::Request as u8, 0, 0]);
        header.put_u64(42);
        header.put_u32(0);
        header.put_slice(&[0, 0]);
        huge.write_all(&header).unwrap();
        huge.write_all(&[0xab; 64 * 1024]).unwrap();
        let refused = read_frame(&mut huge, &mut BytesMut::new()).expect("an answer to the huge request");
        assert_eq!((refused.kind, refused.call_id), (Kind::Response, 42));
        assert_eq!(refused.into_result().unwrap_err().code, Code::ResourceExhausted);

        // Half a frame, then gone.
        let mut quitter = TcpStream::connect(addr).unwrap();
        quitter.write_all(&buf[..10]).unwrap();
        drop(quitter);

        stop.store(true, Ordering::SeqCst);
        assert!(good.join().unwrap() >= 100);
    });

    // Still serving new connections too.
    assert_eq!(EchoClient::new(connect(addr)).say(&say("new")).unwrap().text, "new");
}

#[test]
fn an_oversized_request_is_resource_exhausted_and_the_connection_keeps_working() {
    let disconnects = Arc::new(AtomicUsize::new(0));
    let counted = disconnects.clone();
    let server = Builder::new(Config { max_frame_size: 64 * 1024, ..Config::default() })
        .service(EchoServer(TestEcho(Arc::default())))
        .on_disconnect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        })
        .bind("127.0.0.1:0")
        .unwrap();
    let client = EchoClient::new(connect(server.local_addr()));

    let big = EchoRequest { payload: vec![7; 100 * 1024], text: "big".into() };
    let err = client.say(&big).unwrap_err();
    assert!(err.to_string().contains("maximum frame size"), "{err}");
    assert_eq!(status_code(Err::<(), _>(err)), Code::ResourceExhausted);

    for i in 0..10 {
        let text = format!("small {i}");
        assert_eq!(client.say(&say(&text)).unwrap().text, text);
    }
    assert_eq!(disconnects.load(Ordering::SeqCst), 0, "the connection was never dropped");
}
