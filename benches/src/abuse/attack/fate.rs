//! How an attacking connection ended (still open, closed by the server with a go-away
//! or without one, or broken), found by reading the frames the server sent on it.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rpc_core::frame::{self, Kind};

/// How one attacking connection ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fate {
    /// Still open when the attacker stopped.
    Open,
    /// The server sent a go-away with this reason.
    GoAway(String),
    /// The server closed it without a go-away.
    Closed,
    /// It was reset, or broke otherwise.
    Broken(String),
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Open => f.write_str("open at the end"),
            Fate::GoAway(reason) => write!(f, "closed by server: GoAway \"{reason}\""),
            Fate::Closed => f.write_str("closed by server without a GoAway"),
            Fate::Broken(why) => write!(f, "broken: {why}"),
        }
    }
}

impl Fate {
    pub(super) fn of_error(e: &io::Error) -> Fate {
        match e.kind() {
            io::ErrorKind::ConnectionReset => Fate::Broken("reset by server".to_owned()),
            io::ErrorKind::BrokenPipe => Fate::Closed,
            _ => Fate::Broken(e.to_string()),
        }
    }
}

/// Connections counted by how they ended: "9990 open at the end; 10 closed by server: ...".
pub(super) fn tally(fates: impl IntoIterator<Item = Fate>) -> String {
    let mut counts: BTreeMap<Fate, usize> = BTreeMap::new();
    for fate in fates {
        *counts.entry(fate).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(fate, n)| format!("{n} {fate}")).collect();
    if parts.is_empty() {
        "no connection".to_owned()
    } else {
        parts.join("; ")
    }
}

/// Takes the frames at the front of `buf`, returning the go-away's reason if one came,
/// and counting the responses by status code in `answers`.
pub(super) fn take_frames(buf: &mut BytesMut, answers: &mut BTreeMap<&'static str, usize>) -> Option<Fate> {
    loop {
        match frame::decode(buf, frame::DEFAULT_MAX_FRAME) {
            Ok(Some(f)) => match f.kind {
                Kind::GoAway => return Some(Fate::GoAway(String::from_utf8_lossy(&f.body).into_owned())),
                Kind::Response => *answers.entry(f.code.as_str()).or_default() += 1,
                _ => {}
            },
            Ok(None) => return None,
            Err(e) => return Some(Fate::Broken(format!("server sent a bad frame: {e}"))),
        }
    }
}

/// Reads what the server sent on `stream` to learn whether it closed the
/// connection: open if the server pauses for 200 ms, or still sends after
/// `patience` or `max_bytes`.
pub(super) fn probe(stream: &mut TcpStream, patience: Duration, max_bytes: usize) -> Fate {
    let deadline = Instant::now() + patience;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let (mut buf, mut scratch, mut read) = (BytesMut::new(), vec![0u8; 64 * 1024], 0);
    let mut answers = BTreeMap::new();
    while Instant::now() < deadline && read < max_bytes {
        match stream.read(&mut scratch) {
            Ok(0) => return Fate::Closed,
            Ok(n) => {
                read += n;
                buf.extend_from_slice(&scratch[..n]);
                if let Some(fate) = take_frames(&mut buf, &mut answers) {
                    return fate;
                }
            }
            Err(e) if is_timeout(&e) => return Fate::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Fate::of_error(&e),
        }
    }
    Fate::Open
}

/// Whether a read or write on a socket with a timeout ran out of time.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_are_counted_and_go_aways_read() {
        let fates = [Fate::Open, Fate::GoAway("too slow".into()), Fate::Open];
        assert_eq!(tally(fates), "2 open at the end; 1 closed by server: GoAway \"too slow\"");
        assert_eq!(tally([]), "no connection");

        let mut buf = BytesMut::new();
        frame::put_response(&mut buf, 1, &Ok(bytes::Bytes::from_static(b"x")));
        frame::put_response(&mut buf, 2, &Err(rpc_core::Status::resource_exhausted("full")));
        frame::put_goaway(&mut buf, "budget");
        let mut answers = BTreeMap::new();
        assert_eq!(take_frames(&mut buf, &mut answers), Some(Fate::GoAway("budget".into())));
        assert_eq!(answers.len(), 2);
    }
}
