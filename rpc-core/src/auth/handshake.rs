//! The client's side of the handshake, run on a new connection's socket before
//! it is handed to the client's event loop.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{Credential, Message, MAX_STEPS, MAX_STEP_BODY, STEP_OK, STEP_REFUSED};
use crate::frame::{self, Frame, Kind};

/// Proves `credential` to the server on `stream` within `timeout`.
///
/// Reads exactly the handshake's frames, no byte more, so whatever the server sends
/// next is left for the event loop.
///
/// # Errors
///
/// `PermissionDenied` when the server refused the credential or failed to prove
/// itself, `TimedOut` when the handshake did not finish in time, `InvalidData`
/// when the server broke the protocol; any I/O error of the socket.
pub(crate) fn run(stream: &mut TcpStream, credential: &Credential, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let prove = credential.prove();
    let mechanism = prove.mechanism();
    let (mut handshake, first) = prove.start();
    send(stream, mechanism, &first)?;
    for _ in 0..=MAX_STEPS {
        let f = read_frame(stream, deadline)?;
        if f.kind == Kind::Auth && f.service() != mechanism {
            return Err(invalid(format!(
                "the server answered with mechanism '{}', not '{mechanism}'",
                f.service()
            )));
        }
        match f.kind {
            Kind::Auth if f.method() == STEP_OK => {
                // Only a server that proved itself may end the handshake.
                handshake.finish().map_err(denied)?;
                stream.set_read_timeout(None)?;
                return Ok(());
            }
            Kind::Auth if f.method() == STEP_REFUSED => {
                let why = String::from_utf8_lossy(&f.body);
                return Err(denied(format!("the server refused our credential: {why}")));
            }
            Kind::Auth => match handshake.step(&Message::new(f.method(), f.body.to_vec())) {
                Ok(Some(reply)) => send(stream, mechanism, &reply)?,
                Ok(None) => {}
                Err(why) => return Err(denied(why)),
            },
            Kind::GoAway => {
                let why = String::from_utf8_lossy(&f.body);
                return Err(denied(format!("the server ended the handshake: {why}")));
            }
            Kind::Ping | Kind::Pong => {}
            _ => return Err(invalid("the server sent a call frame during the handshake")),
        }
    }
    Err(invalid("the server's handshake has too many steps"))
}

fn send(stream: &mut TcpStream, mechanism: &str, message: &Message) -> io::Result<()> {
    let mut buf = BytesMut::new();
    frame::put_auth(&mut buf, mechanism, &message.step, &message.body);
    stream.write_all(&buf)
}

/// Reads one whole frame, of at most a handshake step's size.
fn read_frame(stream: &mut TcpStream, deadline: Instant) -> io::Result<Frame> {
    let max = frame::HEADER_LEN + 2 * frame::MAX_NAME + MAX_STEP_BODY;
    let mut buf = BytesMut::zeroed(frame::LENGTH_LEN);
    read_exact_by(stream, &mut buf, deadline)?;
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(invalid("the server sent a frame too large for a handshake"));
    }
    buf.resize(frame::LENGTH_LEN + len, 0);
    read_exact_by(stream, &mut buf[frame::LENGTH_LEN..], deadline)?;
    match frame::decode(&mut buf, max) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(invalid("the server sent a short frame")),
        Err(e) => Err(invalid(format!("the server sent a bad frame: {e}"))),
    }
}

/// Fills `buf` from `stream` by `deadline`. The time left is measured again before
/// every read, so a server that trickles its bytes cannot stretch the handshake past
/// the deadline (one read timeout for the whole `read_exact` would restart with each
/// byte).
fn read_exact_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "the authentication handshake timed out");
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(denied("the server closed the connection during the handshake".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn denied(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("authentication failed: {why}"))
}

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}
