//! Thousands of attacking connections watched by one `mio::Poll`, for the idle and drip
//! attackers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Interest, Poll, Token};

use super::connect;
use super::fate::{take_frames, tally, Fate};

/// Connections watched by one `mio::Poll`, so that thousands of them cost
/// nothing while the server stays quiet, and a go-away is seen when it comes.
pub(super) struct Herd {
    /// Reports the connections the server wrote to.
    poll: Poll,
    /// The connections by token, each with the bytes read from it and not
    /// yet decoded; `None` once ended.
    pub(super) conns: Vec<Option<(mio::net::TcpStream, BytesMut)>>,
    /// How the ended ones ended.
    fates: Vec<Fate>,
    /// Connections that could not be opened, by error.
    failed: BTreeMap<String, usize>,
    /// How long opening them took.
    opening: Duration,
    /// Connections that took a second or more to open: the server's listen
    /// queue was full, and the kernel dropped the first SYN.
    slow: usize,
}

impl Herd {
    /// Opens `n` connections; gives up after 100 failures in a row.
    pub(super) fn open(addr: SocketAddr, n: usize) -> anyhow::Result<Herd> {
        let started = Instant::now();
        let poll = Poll::new()?;
        let (mut conns, mut failed, mut in_a_row, mut slow) = (Vec::with_capacity(n), BTreeMap::new(), 0, 0);
        for _ in 0..n {
            let began = Instant::now();
            let opened = connect(addr).and_then(|s| {
                s.set_nonblocking(true)?;
                let mut s = mio::net::TcpStream::from_std(s);
                poll.registry().register(&mut s, Token(conns.len()), Interest::READABLE)?;
                Ok(s)
            });
            match opened {
                Ok(s) => {
                    conns.push(Some((s, BytesMut::new())));
                    in_a_row = 0;
                    slow += usize::from(began.elapsed() >= Duration::from_secs(1));
                }
                Err(e) => {
                    *failed.entry(e.to_string()).or_default() += 1;
                    in_a_row += 1;
                    if in_a_row == 100 {
                        break;
                    }
                }
            }
        }
        anyhow::ensure!(!conns.is_empty(), "cannot open any connection: {failed:?}");
        Ok(Herd { poll, conns, fates: Vec::new(), failed, opening: started.elapsed(), slow })
    }

    /// Waits up to `timeout` for the server to write, and ends the
    /// connections it closed.
    pub(super) fn watch(&mut self, events: &mut Events, timeout: Duration) {
        if self.poll.poll(events, Some(timeout)).is_err() {
            return;
        }
        let tokens: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        for t in tokens {
            if let Some(fate) = self.read(t) {
                self.end(t, fate);
            }
        }
    }

    /// Reads what the server sent on connection `t`: `Some` once it is over.
    pub(super) fn read(&mut self, t: usize) -> Option<Fate> {
        let (stream, buf) = self.conns.get_mut(t)?.as_mut()?;
        let (mut scratch, mut answers) = ([0u8; 4096], BTreeMap::new());
        loop {
            match stream.read(&mut scratch) {
                Ok(0) => return Some(Fate::Closed),
                Ok(n) => {
                    buf.extend_from_slice(&scratch[..n]);
                    if let Some(fate) = take_frames(buf, &mut answers) {
                        return Some(fate);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Fate::of_error(&e)),
            }
        }
    }

    pub(super) fn end(&mut self, t: usize, fate: Fate) {
        if let Some((mut stream, _)) = self.conns[t].take() {
            let _ = self.poll.registry().deregister(&mut stream);
            self.fates.push(fate);
        }
    }

    /// "N opened in S s; M could not open (why)".
    pub(super) fn opened(&self) -> String {
        let mut s = format!("{} opened in {:.1} s", self.conns.len(), self.opening.as_secs_f64());
        if self.slow > 0 {
            let _ = write!(s, " ({} took ≥ 1 s)", self.slow);
        }
        for (why, n) in &self.failed {
            let _ = write!(s, "; {n} could not open ({why})");
        }
        s
    }

    /// How every connection ended; those still there are open.
    pub(super) fn into_fates(mut self) -> String {
        for t in 0..self.conns.len() {
            if let Some(fate) = self.read(t) {
                self.end(t, fate);
            }
        }
        let open = self.conns.iter().filter(|c| c.is_some()).count();
        tally(self.fates.into_iter().chain(std::iter::repeat_n(Fate::Open, open)))
    }
}
