//! A connection of the two mio references: socket, input and output buffers.

use std::io::{self, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::wire::{self, Incoming};

/// Bytes read per `read` call.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// One accepted socket, registered for both readiness kinds once
/// (edge-triggered, so writable events come only when space frees up).
pub(super) struct Conn {
    /// The socket.
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    inbuf: BytesMut,
    /// Bytes encoded and not yet written.
    pub(super) out: BytesMut,
    /// Whether the connection is on its loop's list of sockets to flush.
    pub(super) dirty: bool,
}

impl Conn {
    /// Registers `stream` under `token` and sets `TCP_NODELAY`.
    pub(super) fn new(mut stream: TcpStream, token: Token, registry: &Registry) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Conn { stream, inbuf: BytesMut::new(), out: BytesMut::new(), dirty: false })
    }

    /// Reads until the socket is drained, calling `request(call_id, body,
    /// out)` for each request and answering pings. False once the
    /// connection should close.
    pub(super) fn read(
        &mut self,
        scratch: &mut [u8],
        mut request: impl FnMut(u64, Bytes, &mut BytesMut),
    ) -> bool {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return false,
                Ok(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    loop {
                        match wire::decode(&mut self.inbuf) {
                            Ok(Some(Incoming::Request { call_id, body })) => {
                                request(call_id, body, &mut self.out)
                            }
                            Ok(Some(Incoming::Ping { call_id })) => wire::put_pong(&mut self.out, call_id),
                            Ok(Some(Incoming::Other)) => {}
                            Ok(None) => break,
                            Err(_) => return false,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Writes what the socket takes. False once the connection should close.
    pub(super) fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Takes the socket off `registry` before the connection is dropped.
    pub(super) fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}
