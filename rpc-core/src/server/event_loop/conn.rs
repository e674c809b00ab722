//! One connection's state as its loop sees it, and the moves between its states:
//! reading (frames handed to `dispatch`), paused over its budget and resumed under
//! half of it, closing once its calls are answered, and evicted with a go-away. The
//! reads, the writes and the eviction that drive those moves live here; the loop
//! (`super`) decides when they run.

use super::*;

/// One client connection, as the loop sees it.
pub(super) struct Conn {
    /// The socket.
    pub(super) stream: TcpStream,
    /// The handle given to handlers and pushers.
    pub(super) handle: Connection,
    /// Bytes read but not yet decoded: at most one partial frame and a read's worth.
    pub(super) inbuf: BytesMut,
    /// Bytes encoded but not yet written; it starts on a frame boundary, or
    /// `head_left` bytes before one.
    pub(super) out: BytesMut,
    /// Bytes of the frame at the front of `out` still to write, once its first
    /// bytes are written (0: `out` starts with a whole frame).
    pub(super) head_left: usize,
    /// Calls handed to workers and not yet answered.
    pub(super) in_flight: usize,
    /// Bytes of the requests handed to workers and not yet answered.
    pub(super) requests: usize,
    /// What this connection last added to `Memory::held`.
    pub(super) accounted: usize,
    /// When bytes last moved either way, for the idle timeout. Write progress
    /// counts, so a slow reader that is draining is not idle.
    pub(super) last_active: Instant,
    /// When output last drained: a write made progress, or output arrived to an
    /// empty buffer. For `Config::stalled_reader_timeout`.
    pub(super) last_drain: Instant,
    /// Since when a frame has been partly read, for `Config::frame_timeout`.
    pub(super) partial_since: Option<Instant>,
    /// Reading stopped before `WouldBlock` (over budget): read again once
    /// unpaused, since edge-triggered polling will not say so.
    pub(super) more_to_read: bool,
    /// Bytes of an oversized frame still to skip.
    pub(super) discard: usize,
    /// Reading stopped because the connection holds more than its budget.
    pub(super) paused: bool,
    /// Read nothing more; close once the calls in flight are answered and `out` is written.
    pub(super) closing: bool,
    /// Closed for breaking a limit: its replies are dropped, its input is read and
    /// discarded, and it closes once its go-away is written, or at this time.
    pub(super) evicted: Option<Instant>,
    /// Whether WRITABLE interest is registered.
    pub(super) want_write: bool,
    /// Whether the connection is already in the loop's dirty list.
    pub(super) dirty: bool,
    /// The peer is a trusted load balancer, and neither a PROXY header nor a frame has
    /// been read yet.
    pub(super) proxy_header: bool,
    /// The client address this connection counts against for
    /// `Config::max_connections_per_address`, given back when it closes; `None`
    /// while it counts against nobody (no limit, or a balancer's header not read yet).
    pub(super) counted: Option<std::net::IpAddr>,
    /// Until the peer has authenticated (when the listener requires it): its handshake.
    pub(super) gate: Option<Box<auth::Gate>>,
}

impl Conn {
    /// Bytes held for the connection, for the server's budget.
    pub(super) fn held(&self) -> usize {
        self.inbuf.len() + self.requests + self.out.len()
    }

    /// Bytes of work the peer has made us hold (calls running, answers
    /// unwritten), for the connection's budget. A frame being read is not
    /// counted there, so a request larger than the budget can still arrive
    /// (`max_frame_size` bounds it).
    pub(super) fn backlog(&self) -> usize {
        self.requests + self.out.len()
    }

    /// Drops the first `n` bytes of `out`, which were written, keeping track
    /// of where the next frame starts.
    #[inline]
    fn advance_out(&mut self, n: usize) {
        // Walk the length prefixes over the written bytes, then advance once.
        let (mut pos, mut head_left) = (0, self.head_left);
        while pos < n {
            if head_left == 0 {
                let len = &self.out[pos..pos + frame::LENGTH_LEN];
                head_left = frame::LENGTH_LEN + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            }
            let step = (n - pos).min(head_left);
            pos += step;
            head_left -= step;
        }
        self.out.advance(n);
        self.head_left = head_left;
    }
}

impl EventLoop {
    /// Reads everything the socket has (edge-triggered) and handles each frame.
    pub(super) fn read(&mut self, token: Token) {
        if self.conns.get(&token).is_some_and(|c| c.evicted.is_some()) {
            return self.discard_input(token);
        }
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.paused || conn.closing {
            return;
        }
        let id = conn.handle.id();
        // The peer shut down its sending side (it may still read), or reset the connection.
        let (mut half_closed, mut reset) = (false, false);
        // Set when a balancer's header named a client over its limit.
        let mut refused = None;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    half_closed = true;
                    break;
                }
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    conn.last_active = self.now;
                    let mut ctx = Dispatch {
                        services: &self.services,
                        config: &self.config,
                        draining: self.draining_until.is_some(),
                        now: self.now,
                        batch: &mut self.batch,
                        lanes: &mut self.lanes,
                        per_address: &self.per_address,
                        refused: None,
                        decoded: false,
                    };
                    ctx.frames(conn);
                    if let Some(why) = ctx.refused {
                        refused = Some(why);
                        break;
                    }
                    if ctx.decoded {
                        // A frame came whole: the clock of the next one starts now.
                        conn.partial_since = None;
                    }
                    self.jobs.send_all(id, &mut self.batch);
                    for lane in &mut self.lanes {
                        lane.jobs.send_all(id, &mut lane.batch);
                    }
                    if conn.closing {
                        break;
                    }
                    if conn.backlog() > self.config.connection_budget {
                        // Stop here: flush pauses the connection if it stays over
                        // its budget, and reads on once it is back under.
                        conn.more_to_read = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    reset = true;
                    break;
                }
            }
        }
        if conn.inbuf.is_empty() && conn.discard == 0 {
            conn.partial_since = None;
            if conn.inbuf.capacity() > KEEP_CAPACITY {
                conn.inbuf = BytesMut::new();
            }
        } else if conn.partial_since.is_none() {
            conn.partial_since = Some(self.now);
        }
        if half_closed {
            // The peer shut down only its sending side and may still read: its calls in
            // flight are answered, and the connection closes once the last answer is
            // written (in `flush`, or by the idle sweep if the peer stops reading).
            conn.closing = true;
        }
        let flush = !conn.out.is_empty() || conn.closing || conn.more_to_read;
        self.account(token);
        if flush {
            self.mark_dirty(token);
        }
        if let Some(why) = refused {
            self.refuse(token, &why);
        } else if reset {
            self.close(token, "connection reset");
        }
    }

    /// Reads and drops what an evicted peer still sends, so that its unread bytes do
    /// not turn our close into a reset that could destroy the go-away on its way.
    pub(super) fn discard_input(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let mut ended = false;
        for _ in 0..16 {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    ended = true;
                    break;
                }
            }
        }
        if ended && conn.out.is_empty() {
            self.close(token, "evicted");
        }
    }

    /// Brings `Memory::held` up to date with what `token` holds now.
    pub(super) fn account(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let held = conn.held();
        if held > conn.accounted {
            self.memory.held.fetch_add(held - conn.accounted, Ordering::Relaxed);
        } else if held < conn.accounted {
            self.memory.held.fetch_sub(conn.accounted - held, Ordering::Relaxed);
        }
        conn.accounted = held;
    }

    /// Closes a connection that broke a limit, with a go-away naming it. What is
    /// queued past the frame being written is dropped and its later answers are
    /// too, so it holds almost nothing from now on; calls of it still waiting for
    /// a worker are skipped. It closes once the go-away is written, or after
    /// `Config::stalled_reader_timeout` if the peer never reads it.
    pub(super) fn evict(&mut self, token: Token, reason: &str) {
        let Some(conn) = self.conns.get(&token) else { return };
        if conn.evicted.is_none() {
            tracing::warn!(id = %conn.handle.id(), peer = %conn.handle.peer_addr(), reason, "connection evicted");
        }
        self.end_with_goaway(token, reason);
    }

    /// Closes a connection over `Config::max_connections_per_address` as an evicted one,
    /// with `reason` in its go-away, before anything of it is acted on. Not logged here:
    /// `PerAddress::admit` counted it and logs a line for many.
    pub(super) fn refuse(&mut self, token: Token, reason: &str) {
        tracing::debug!(id = token.0, reason, "connection refused");
        self.end_with_goaway(token, reason);
        self.flush(token);
    }

    /// What `evict` and `refuse` do: the go-away queued and the rest dropped.
    fn end_with_goaway(&mut self, token: Token, reason: &str) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.evicted.is_some() {
            return;
        }
        conn.out.truncate(conn.head_left);
        if conn.out.capacity() > KEEP_CAPACITY {
            conn.out = BytesMut::from(&conn.out[..]);
        }
        frame::put_goaway(&mut conn.out, reason);
        conn.inbuf = BytesMut::new();
        conn.discard = 0;
        conn.partial_since = None;
        conn.closing = true;
        conn.evicted = Some(self.now + self.config.stalled_reader_timeout.max(EVICTED_GRACE));
        conn.handle.shared().open.store(false, Ordering::Release);
        if conn.paused {
            // Read again, to discard: the peer's unread bytes would turn the close into a reset.
            conn.paused = false;
            let _ = self.poll.registry().reregister(
                &mut conn.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            );
            conn.want_write = true;
        }
        self.account(token);
        self.mark_dirty(token);
    }

    /// Writes as much output as the socket takes, then adjusts interest and backpressure.
    pub(super) fn flush(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        let mut failed = false;
        while !conn.out.is_empty() {
            match conn.stream.write(&conn.out) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    conn.advance_out(n);
                    conn.last_active = self.now;
                    conn.last_drain = self.now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.close(token, "write failed");
            return;
        }
        let pending = conn.out.len();
        if conn.out.capacity() > KEEP_CAPACITY && pending < conn.out.capacity() / 4 {
            // A burst's buffer, mostly written: give the memory back.
            conn.out = BytesMut::from(&conn.out[..]);
        }
        let shared = conn.handle.shared();
        shared.unwritten.store(pending, Ordering::SeqCst);
        if shared.held_back.load(Ordering::SeqCst)
            && pending + shared.in_transit.load(Ordering::SeqCst) <= self.config.connection_budget / 2
        {
            // Its answers drained: its calls may run again.
            shared.held_back.store(false, Ordering::SeqCst);
            let id = conn.handle.id();
            self.jobs.unblock(id);
            for lane in &self.lanes {
                lane.jobs.unblock(id);
            }
        }
        if conn.evicted.is_some() {
            if pending == 0 {
                // The go-away is out: end our side cleanly (the peer reads it, then EOF).
                self.close(token, "evicted");
            } else if !conn.want_write {
                conn.want_write = true;
                let interest = Interest::READABLE | Interest::WRITABLE;
                if self.poll.registry().reregister(&mut conn.stream, token, interest).is_err() {
                    self.close(token, "cannot reregister");
                }
            }
            return;
        }
        if pending == 0 && conn.closing && conn.in_flight == 0 {
            self.close(token, "closed by server");
            return;
        }
        let want_write = pending > 0;
        let budget = self.config.connection_budget;
        let was_paused = conn.paused;
        let backlog = conn.backlog();
        let over_share =
            self.memory.fair_share(self.config.server_budget).is_some_and(|share| conn.held() > share);
        conn.paused = backlog > budget || over_share || (was_paused && backlog > budget / 2);
        let interest = match (conn.paused, want_write) {
            (true, _) => Interest::WRITABLE,
            (false, true) => Interest::READABLE | Interest::WRITABLE,
            (false, false) => Interest::READABLE,
        };
        if want_write != conn.want_write || was_paused != conn.paused {
            conn.want_write = want_write;
            if self.poll.registry().reregister(&mut conn.stream, token, interest).is_err() {
                self.close(token, "cannot reregister");
                return;
            }
        }
        if was_paused && !conn.paused && conn.partial_since.is_some() {
            // The frame waited on us, not on the peer.
            conn.partial_since = Some(self.now);
        }
        let read_on = (was_paused || conn.more_to_read) && !conn.paused;
        if read_on {
            conn.more_to_read = false;
        }
        self.account(token);
        if read_on {
            // Edge-triggered: bytes that arrived while paused raise no new event.
            self.read(token);
        }
    }
}
