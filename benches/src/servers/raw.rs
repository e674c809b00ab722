//! The single-threaded mio echo server: every call is answered on the loop
//! thread, between reading a burst of requests and writing the burst of
//! replies. Nothing crosses a thread, so this is the practical limit.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use super::echo;
use super::mio_conn::{Conn, READ_CHUNK};
use crate::wire;

const LISTENER: Token = Token(0);

/// Serves until the process ends.
pub(super) fn serve(addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    ready(listener.local_addr()?);
    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next_token = 1;
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut events = Events::with_capacity(256);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let token = event.token();
            if token == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    let token = Token(next_token);
                    next_token += 1;
                    conns.insert(token, Conn::new(stream, token, poll.registry())?);
                }
                continue;
            }
            let Some(conn) = conns.get_mut(&token) else { continue };
            let mut open = true;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                open = conn.read(&mut scratch, |call_id, body, out| {
                    wire::put_response(out, call_id, &echo(body));
                });
            }
            // Answers go out right after the burst that asked for them, and
            // leftovers when the socket says it has room again.
            if open && !conn.flush() {
                open = false;
            }
            if !open {
                if let Some(conn) = conns.remove(&token) {
                    conn.close(poll.registry());
                }
            }
        }
    }
}
