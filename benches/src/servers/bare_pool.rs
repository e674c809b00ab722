//! rpc-core's architecture with nothing else: one mio loop owns the sockets,
//! hands each request to a two-thread crossbeam-channel pool, and gets the
//! replies back over a channel and a `mio::Waker`. A flag keeps a burst of
//! replies to one wake-up, and the loop writes every reply that is ready
//! before it polls again, as rpc-core does.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use super::mio_conn::{Conn, READ_CHUNK};
use super::{echo, WORKERS};
use crate::wire;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// A request for the pool.
struct Job {
    /// The connection to answer on; tokens are never reused.
    token: Token,
    /// The caller's id for the call.
    call_id: u64,
    /// The request body.
    body: Bytes,
}

/// A reply for the loop.
struct Reply {
    /// The connection to answer on.
    token: Token,
    /// The caller's id for the call.
    call_id: u64,
    /// The reply body.
    body: Bytes,
}

/// What the workers need to hand replies back.
struct Back {
    /// Replies for the loop.
    replies: Sender<Reply>,
    /// Wakes the loop's poll.
    waker: Waker,
    /// True while a wake is pending.
    woken: AtomicBool,
}

/// Serves until the process ends.
pub(super) fn serve(addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded::<Job>();
    let (replies_tx, replies_rx) = crossbeam_channel::unbounded::<Reply>();
    let back = Arc::new(Back {
        replies: replies_tx,
        waker: Waker::new(poll.registry(), WAKER)?,
        woken: AtomicBool::new(false),
    });
    for i in 0..WORKERS {
        let (jobs, back) = (jobs_rx.clone(), back.clone());
        std::thread::Builder::new().name(format!("bare-worker-{i}")).spawn(move || work(&jobs, &back))?;
    }
    ready(listener.local_addr()?);

    let mut conns: HashMap<Token, Conn> = HashMap::new();
    let mut next_token = 2;
    let mut scratch = vec![0u8; READ_CHUNK];
    let mut events = Events::with_capacity(256);
    let mut dirty: Vec<Token> = Vec::new();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            let token = event.token();
            match token {
                LISTENER => {
                    while let Ok((stream, _)) = listener.accept() {
                        let token = Token(next_token);
                        next_token += 1;
                        conns.insert(token, Conn::new(stream, token, poll.registry())?);
                    }
                }
                WAKER => {}
                token => {
                    let Some(conn) = conns.get_mut(&token) else { continue };
                    let mut open = true;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        open = conn.read(&mut scratch, |call_id, body, _| {
                            // The pool outlives the loop, so the send cannot fail.
                            let _ = jobs_tx.send(Job { token, call_id, body });
                        });
                    }
                    if open {
                        // Pongs, and leftovers when the socket has room again.
                        open = conn.flush();
                    }
                    if !open {
                        if let Some(conn) = conns.remove(&token) {
                            conn.close(poll.registry());
                        }
                    }
                }
            }
        }
        back.woken.store(false, Ordering::Release);
        while let Ok(reply) = replies_rx.try_recv() {
            if let Some(conn) = conns.get_mut(&reply.token) {
                wire::put_response(&mut conn.out, reply.call_id, &reply.body);
                if !conn.dirty {
                    conn.dirty = true;
                    dirty.push(reply.token);
                }
            }
        }
        for token in dirty.drain(..) {
            let Some(conn) = conns.get_mut(&token) else { continue };
            conn.dirty = false;
            if !conn.flush() {
                if let Some(conn) = conns.remove(&token) {
                    conn.close(poll.registry());
                }
            }
        }
    }
}

/// A worker: runs each job's echo and hands the reply back to the loop.
fn work(jobs: &Receiver<Job>, back: &Back) {
    for job in jobs {
        let body = echo(job.body);
        if back.replies.send(Reply { token: job.token, call_id: job.call_id, body }).is_err() {
            return;
        }
        if !back.woken.swap(true, Ordering::AcqRel) {
            let _ = back.waker.wake();
        }
    }
}
