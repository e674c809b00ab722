//! One simulated user's connection: a non-blocking socket, its read and write buffers,
//! and the calls waiting for their responses, speaking rpc-core's framing
//! (`rpc_core::frame`, `docs/PROTOCOL.md`) directly.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use mio::net::TcpStream;
use rpc_core::frame::{self, Frame, Kind};

/// The service every client call goes to.
pub const GATEWAY: &str = "chatroom.Gateway";

/// The deadline sent with every request. Generous: a setup call may queue behind slow
/// password hashing, and a late answer is measured, not dropped.
const CALL_TIMEOUT_MS: u32 = 60_000;

/// A connection and the calls in flight on it, each remembered as a `P`.
pub struct Conn<P> {
    /// The socket, registered with the owning loop's `Poll`.
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// Bytes encoded and not yet written.
    wbuf: BytesMut,
    /// The last call id used.
    next_call: u64,
    /// What each outstanding call was for, by call id.
    pub pending: HashMap<u64, P>,
    /// When something was last queued, to know when to ping an idle connection.
    pub last_write: Instant,
}

impl<P> Conn<P> {
    /// A connection over an already connected socket.
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::new(),
            next_call: 0,
            pending: HashMap::new(),
            last_write: Instant::now(),
        }
    }

    /// The socket, to register it.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Queues a `Gateway` request and writes what the socket takes.
    ///
    /// # Errors
    ///
    /// When the socket fails.
    pub fn call(&mut self, method: &str, body: &[u8], pending: P) -> io::Result<()> {
        self.next_call += 1;
        frame::put_request(&mut self.wbuf, self.next_call, CALL_TIMEOUT_MS, GATEWAY, method, body);
        self.pending.insert(self.next_call, pending);
        self.flush()
    }

    /// Queues a ping, so the server's idle timer does not close a quiet user.
    ///
    /// # Errors
    ///
    /// When the socket fails.
    pub fn ping(&mut self) -> io::Result<()> {
        frame::put_control(&mut self.wbuf, Kind::Ping, 0);
        self.flush()
    }

    /// Writes queued bytes until the socket would block.
    ///
    /// # Errors
    ///
    /// When the socket fails.
    pub fn flush(&mut self) -> io::Result<()> {
        self.last_write = Instant::now();
        while !self.wbuf.is_empty() {
            match self.stream.write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads until the socket would block and appends every whole frame to `out`;
    /// answers pings on the way. `scratch` is the loop's read buffer.
    ///
    /// # Errors
    ///
    /// When the socket fails, the server closed it, or a frame is malformed.
    pub fn read_frames(&mut self, scratch: &mut [u8], out: &mut Vec<Frame>) -> io::Result<()> {
        let mut eof = false;
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut pong = false;
        loop {
            match frame::decode(&mut self.rbuf, frame::DEFAULT_MAX_FRAME) {
                Ok(Some(f)) if f.kind == Kind::Ping => {
                    frame::put_control(&mut self.wbuf, Kind::Pong, f.call_id);
                    pong = true;
                }
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        if pong {
            self.flush()?;
        }
        if eof {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}
