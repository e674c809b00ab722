//! Frame handling for one connection's read: each whole frame decoded and answered
//! (ping, the authentication gate, protocol violations) or turned into a call for the
//! event loop itself, the workers or a named lane, within the connection's bounds.

use super::*;

/// `ask(service)` (application code: `runs_inline`), with a panic in it taken as
/// "no": the call goes to a worker, which answers a panicking handler with Internal.
fn ask(service: &dyn Service, method: &str, what: &str, ask: impl FnOnce() -> bool) -> bool {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(ask)).unwrap_or_else(|_| {
        tracing::error!(service = service.name(), method, what, "panicked; the call goes to a worker");
        false
    })
}

/// What frame handling needs from the loop, borrowed apart from the connection map.
pub(super) struct Dispatch<'a> {
    pub(super) services: &'a Services,
    pub(super) config: &'a Config,
    pub(super) draining: bool,
    /// The loop's clock for this turn, the base of request deadlines.
    pub(super) now: Instant,
    /// Calls for the pool; the loop queues them once the read is handled.
    pub(super) batch: &'a mut VecDeque<Call>,
    /// The named lanes, for their bounds and their calls of this read.
    pub(super) lanes: &'a mut [lanes::Queue],
    /// The connections per client address, for the client a PROXY header names.
    pub(super) per_address: &'a PerAddress,
    /// Set when that client is over its limit: the go-away's reason. The loop then
    /// refuses the connection; nothing after the header is acted on.
    pub(super) refused: Option<String>,
    /// Whether a whole frame was decoded.
    pub(super) decoded: bool,
}

impl Dispatch<'_> {
    /// Decodes and handles every whole frame in `conn.inbuf`.
    pub(super) fn frames(&mut self, conn: &mut Conn) {
        if conn.proxy_header && conn.inbuf.first().is_some_and(|&b| b != proxy_header::FIRST_BYTE) {
            // A frame, not a header: the peer speaks for itself.
            conn.proxy_header = false;
        }
        if conn.proxy_header {
            match proxy_header::take(&mut conn.inbuf) {
                Ok(None) => return,
                Ok(Some(client)) => {
                    conn.proxy_header = false;
                    if let Some(client) = client {
                        let _ = conn.handle.shared().client.set(client);
                        match self.per_address.admit(client.ip()) {
                            Ok(counted) => conn.counted = counted,
                            Err(why) => {
                                self.refused = Some(why);
                                return;
                            }
                        }
                    }
                }
                Err(malformed) => return violation(conn, &malformed.to_string()),
            }
        }
        loop {
            if conn.closing {
                // After a go-away nothing more from this peer is acted on.
                return;
            }
            if conn.discard > 0 {
                let n = conn.discard.min(conn.inbuf.len());
                conn.inbuf.advance(n);
                conn.discard -= n;
                if conn.discard > 0 {
                    return;
                }
            }
            let max_frame = match conn.gate {
                None => self.config.max_frame_size,
                Some(_) => self.config.max_frame_size.min(auth::MAX_UNAUTHENTICATED_FRAME),
            };
            match frame::decode(&mut conn.inbuf, max_frame) {
                Ok(Some(f)) => {
                    self.decoded = true;
                    self.frame(conn, f);
                }
                Ok(None) => return,
                Err(FrameError::TooLarge { size, max }) => {
                    let Some((kind, call_id)) = frame::peek_call(&conn.inbuf) else { return };
                    if kind == Some(Kind::Request) {
                        let status = Status::resource_exhausted(format!(
                            "request of {size} bytes exceeds the server's maximum frame size of {max}"
                        ))
                        .with_outcome(Outcome::NotRun);
                        frame::put_response(&mut conn.out, call_id, &Err(status));
                    }
                    conn.discard = frame::LENGTH_LEN + size;
                }
                Err(FrameError::Invalid(why)) => return violation(conn, why),
            }
        }
    }

    fn frame(&mut self, conn: &mut Conn, f: frame::Frame) {
        if let Some(gate) = conn.gate.as_mut() {
            match gate.frame(&f, &mut conn.out) {
                auth::Gated::Handled => return,
                auth::Gated::Passed => {
                    conn.gate = None;
                    return;
                }
                auth::Gated::Usual => {}
                auth::Gated::Violation(why) => return violation(conn, why),
            }
        }
        match f.kind {
            Kind::Request => self.call(conn, f),
            Kind::Ping => frame::put_control(&mut conn.out, Kind::Pong, f.call_id),
            Kind::Pong => {}
            Kind::Push => violation(conn, "clients may not send push frames"),
            Kind::Response | Kind::GoAway => violation(conn, "clients may not send responses or go-away"),
            // What a server that authenticates nobody said before the kind existed.
            Kind::Auth => violation(conn, "unknown frame kind"),
        }
    }

    fn call(&mut self, conn: &mut Conn, f: frame::Frame) {
        let refuse = |conn: &mut Conn, status: Status| {
            frame::put_response(&mut conn.out, f.call_id, &Err(status.with_outcome(Outcome::NotRun)));
        };
        if self.draining {
            return refuse(conn, Status::unavailable("server is shutting down"));
        }
        let Some(served) = self.services.get(f.service_bytes()) else {
            let status = Status::unimplemented(format!("unknown service '{}'", f.service()));
            return refuse(conn, status);
        };
        if conn.in_flight >= self.config.max_in_flight_per_connection {
            let status = Status::resource_exhausted(format!(
                "more than {} calls in flight on one connection",
                self.config.max_in_flight_per_connection
            ));
            return refuse(conn, status);
        }
        let deadline = (f.timeout_ms > 0).then(|| self.now + Duration::from_millis(f.timeout_ms.into()));
        let ctx = Context { connection: conn.handle.clone(), call_id: f.call_id, deadline };
        let (service_ref, method) = (served.service.as_ref(), f.method());
        if ask(service_ref, method, "runs_inline", || service_ref.runs_inline(method)) {
            let result = pool::run(service_ref, &ctx, &f);
            frame::put_response(&mut conn.out, f.call_id, &result);
            return;
        }
        let lane = served.lane_of(method);
        if let Some(lane) = lane {
            if let Some(why) = self.lanes[lane].refusal(conn.handle.id()) {
                return refuse(
                    conn,
                    Status::resource_exhausted(format!("{}/{method} is busy: {why}", f.service())),
                );
            }
        }
        let cost = f.wire_len();
        // A small call cut from a big read buffer would keep all of it alive while it
        // waits: it gets bytes of its own.
        let f = if conn.inbuf.capacity() > KEEP_CAPACITY { f.detached() } else { f };
        conn.in_flight += 1;
        conn.requests += cost;
        let call = Call { service: served.service.clone(), ctx, frame: f, cost };
        match lane {
            Some(lane) => self.lanes[lane].batch.push_back(call),
            None => self.batch.push_back(call),
        }
    }
}

/// Ends a connection whose peer broke the protocol: a go-away names the
/// violation, and calls already running are still answered.
fn violation(conn: &mut Conn, why: &str) {
    tracing::debug!(peer = %conn.handle.peer_addr(), why, "protocol violation");
    frame::put_goaway(&mut conn.out, &format!("protocol violation: {why}"));
    conn.closing = true;
}
