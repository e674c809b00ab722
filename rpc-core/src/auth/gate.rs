//! The server's side of the handshake: what stands between a new connection and
//! the handlers until the peer has passed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::{Counts, Message, ServerHandshake, Verdict, MAX_STEPS, MAX_STEP_BODY, STEP_OK, STEP_REFUSED};
use crate::frame::{self, Frame, Kind};
use crate::{Outcome, Status};

/// What the event loop does with a frame after the gate has seen it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gated {
    /// The gate answered it (a handshake step, or a refused call): nothing more.
    Handled,
    /// The peer has passed: drop the gate; every later frame takes the usual path.
    Passed,
    /// Not the gate's business (ping, pong, or a frame no client may send): handle it as usual.
    Usual,
    /// The peer broke the handshake's bounds: close the connection with this reason.
    Violation(&'static str),
}

/// One connection's handshake, until it passes.
pub(crate) struct Gate {
    /// The mechanism the listener requires.
    mechanism: Box<str>,
    /// The mechanism's state for this connection; `None` once the peer was refused.
    handshake: Option<Box<dyn ServerHandshake>>,
    /// The peer must have passed by then.
    deadline: Instant,
    /// Handshake steps the peer has sent.
    steps: usize,
    /// The peer's address, for the log.
    peer: SocketAddr,
    /// Whether this connection was already counted as refused.
    refused: bool,
    /// The listener's counts.
    counts: Arc<Counts>,
}

impl Gate {
    pub(crate) fn new(
        mechanism: &str,
        handshake: Box<dyn ServerHandshake>,
        peer: SocketAddr,
        deadline: Instant,
        counts: Arc<Counts>,
    ) -> Gate {
        Gate {
            mechanism: mechanism.into(),
            handshake: Some(handshake),
            deadline,
            steps: 0,
            peer,
            refused: false,
            counts,
        }
    }

    /// Takes one frame from a peer that has not passed, writing any answer to `out`.
    pub(crate) fn frame(&mut self, f: &Frame, out: &mut BytesMut) -> Gated {
        match f.kind {
            Kind::Auth => self.step(f, out),
            Kind::Request => {
                self.counts.refused_calls.fetch_add(1, Ordering::Relaxed);
                self.refuse("it called before authenticating");
                let status = Status::unauthenticated(format!(
                    "{}/{}: this port takes calls only from peers that authenticate ({})",
                    f.service(),
                    f.method(),
                    self.mechanism
                ))
                .with_outcome(Outcome::NotRun);
                frame::put_response(out, f.call_id, &Err(status));
                Gated::Handled
            }
            _ => Gated::Usual,
        }
    }

    /// The reason to close the connection if it has not passed by `now`; counts it as
    /// refused (once) when it says so.
    pub(crate) fn overdue(&self, now: Instant) -> Option<String> {
        if now < self.deadline {
            return None;
        }
        if !self.refused {
            self.counts.refuse(self.peer, &self.mechanism, "it did not authenticate in time");
        }
        Some("authentication did not complete in time".to_owned())
    }

    fn step(&mut self, f: &Frame, out: &mut BytesMut) -> Gated {
        self.steps += 1;
        if self.steps > MAX_STEPS || f.body.len() > MAX_STEP_BODY {
            self.refuse("it broke the handshake's bounds");
            return Gated::Violation("handshake too long");
        }
        let Some(handshake) = self.handshake.as_mut() else {
            return Gated::Violation("handshake step after a refusal");
        };
        let verdict = if f.service() == &*self.mechanism {
            handshake.step(&Message::new(f.method(), f.body.to_vec()))
        } else {
            Verdict::Refuse(format!("it offered mechanism '{}'", f.service()))
        };
        match verdict {
            Verdict::Continue(reply) => {
                frame::put_auth(out, &self.mechanism, &reply.step, &reply.body);
                Gated::Handled
            }
            Verdict::Accept => {
                self.counts.passed.fetch_add(1, Ordering::Relaxed);
                frame::put_auth(out, &self.mechanism, STEP_OK, b"");
                tracing::debug!(peer = %self.peer, mechanism = &*self.mechanism, "peer authenticated");
                Gated::Passed
            }
            Verdict::Refuse(why) => {
                self.handshake = None;
                self.refuse(&why);
                frame::put_auth(out, &self.mechanism, STEP_REFUSED, b"authentication failed");
                Gated::Handled
            }
        }
    }

    /// Counts and logs this connection as refused, the first time only.
    fn refuse(&mut self, why: &str) {
        if !self.refused {
            self.refused = true;
            self.counts.refuse(self.peer, &self.mechanism, why);
        }
    }
}
