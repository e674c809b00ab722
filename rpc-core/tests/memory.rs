//! A peer that never reads its answers cannot grow the server's memory.
//!
//! A test binary of its own: it reads the process's resident memory from
//! `/proc/self/status`, which other tests running beside it would disturb.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rpc_core::client::{Channel, Config as ClientConfig};
use rpc_core::frame::{self, Kind};
use rpc_core::server::{Builder, Config, Context, Service};
use rpc_core::Status;

/// `Big` answers as many bytes as its body (a u32) asks for; anything else echoes.
struct Big(Arc<AtomicUsize>);

impl Service for Big {
    fn name(&self) -> &str {
        "test.Big"
    }

    fn call(&self, _ctx: &Context, method: &str, body: Bytes) -> Result<Bytes, Status> {
        if method != "Big" {
            return Ok(body);
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        let n = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
        Ok(Bytes::from(vec![7u8; n]))
    }
}

/// The process's resident set and its peak, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_peer_pipelining_large_answers_it_never_reads_is_evicted_and_memory_stays_bounded() {
    let _ = tracing_subscriber::fmt().with_env_filter("rpc_core=debug").with_test_writer().try_init();
    let made = Arc::new(AtomicUsize::new(0));
    let config = Config { workers: 4, stalled_reader_timeout: Duration::from_secs(2), ..Config::default() };
    let server = Builder::new(config).service(Big(made.clone())).bind("127.0.0.1:0").unwrap();
    let victim = Channel::connect(server.local_addr(), ClientConfig::default()).unwrap();
    assert_eq!(&victim.call_raw("test.Big", "Echo", b"warm", None).unwrap()[..], b"warm");
    let (before, _) = rss_kib();

    // 1,500 requests of 40 bytes asking for 256 KiB each: 375 MiB of answers, and
    // up to 1,024 of them admitted at once.
    let mut greedy = TcpStream::connect(server.local_addr()).unwrap();
    let mut burst = BytesMut::new();
    for id in 1..=1500u64 {
        frame::put_request(&mut burst, id, 0, "test.Big", "Big", &(256 * 1024u32).to_be_bytes());
    }
    greedy.write_all(&burst).unwrap();
    // The server makes answers until those waiting pass the connection's budget (1 MiB
    // past what the kernel's buffers took), then holds its calls back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last, mut still_since) = (0, Instant::now());
    while Instant::now() < deadline {
        let now_made = made.load(Ordering::SeqCst);
        if now_made != last {
            (last, still_since) = (now_made, Instant::now());
        } else if now_made >= 4 && still_since.elapsed() > Duration::from_secs(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(made.load(Ordering::SeqCst) >= 4, "the server made too few answers");
    // Meanwhile another client is served as usual.
    for _ in 0..20 {
        assert_eq!(&victim.call_raw("test.Big", "Echo", b"ok", None).unwrap()[..], b"ok");
    }
    let (during, peak) = rss_kib();
    // Over its budget and reading nothing for 2 s, it is evicted at the next check (once a
    // second); the rest is slack for a loaded machine. The go-away waits 10 s to be read.
    std::thread::sleep(Duration::from_secs(6));

    // The greedy peer reads at last: what the kernel held, then the go-away, then the end.
    greedy.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (mut buf, mut chunk) = (BytesMut::new(), vec![0u8; 64 * 1024]);
    let mut answers = 0;
    let mut reason = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match greedy.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("the connection was reset instead of closed: {e}"),
        }
        while let Some(f) = frame::decode(&mut buf, usize::MAX).unwrap() {
            match f.kind {
                Kind::Response => answers += 1,
                Kind::GoAway => reason = Some(String::from_utf8_lossy(&f.body).into_owned()),
                _ => {}
            }
        }
    }
    let reason = reason.unwrap_or_else(|| {
        panic!("no go-away before the close; {answers} answers read, {} made", made.load(Ordering::SeqCst))
    });
    assert!(reason.starts_with("the peer read nothing for 2 s with "), "{reason}");
    assert!(answers < 1500, "every answer was kept ({answers})");
    let made = made.load(Ordering::SeqCst);
    assert!(made < 200, "the server kept making answers for a peer that does not read ({made})");
    eprintln!(
        "resident memory grew by {} MiB at its peak; {made} answers made, {answers} read",
        peak.saturating_sub(before) / 1024
    );
    // Unbounded, the admitted answers alone would be 256 MiB.
    let grew_mib = peak.saturating_sub(before) / 1024;
    assert!(grew_mib < 96, "resident memory grew by {grew_mib} MiB (now {} MiB)", during / 1024);
    assert_eq!(&victim.call_raw("test.Big", "Echo", b"after", None).unwrap()[..], b"after");
}
