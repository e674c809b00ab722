//! What the main thread and a loop say to each other: a [`Command`] (with the plan of
//! its phase) in, one [`Reply`] out when the phase is done, and the loop's [`Report`] at
//! the end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpc_core::Status;
use services::ConversationId;

use crate::chat::storm::ResumePlan;
use crate::chat::tally::{Ack, Counters, Seen};

/// One call of a setup phase.
#[derive(Debug, Clone)]
pub struct Job {
    /// The loop-local index of the user making it.
    pub user: usize,
    /// The `Gateway` method.
    pub method: &'static str,
    /// The encoded request.
    pub body: Vec<u8>,
}

/// The timed sending phase, for one loop.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// Each local user's id.
    pub ids: Vec<u64>,
    /// The conversations each local user sends to, in turn.
    pub sends: Vec<Vec<ConversationId>>,
    /// Messages per second from this loop; 0 sends as fast as `in_flight` allows.
    pub rate: f64,
    /// When sending starts.
    pub start: Instant,
    /// When sending stops; acknowledgements and pushes after it are not counted in the
    /// rates.
    pub end: Instant,
    /// Most sends waiting for their acknowledgement at once.
    pub in_flight: usize,
    /// Length of each message body.
    pub body_bytes: usize,
}

/// The soak, for one loop: steady sends plus reads (`History`, `Sync`, `Ack`) and users
/// logging out and back in, until `end`.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// Each local user's id.
    pub ids: Vec<u64>,
    /// Each local user's name, to log in again.
    pub names: Vec<String>,
    /// Every user's password.
    pub password: String,
    /// The conversations each local user sends to, in turn.
    pub sends: Vec<Vec<ConversationId>>,
    /// Messages per second from this loop.
    pub rate: f64,
    /// `History`, `Sync` and `Ack` calls per second from this loop, in turn.
    pub reads: f64,
    /// Logouts per second from this loop; each user logs in again after `offline`.
    pub churn: f64,
    /// How long a logged-out user stays away.
    pub offline: Duration,
    /// When the soak stops.
    pub end: Instant,
    /// Most sends waiting for their acknowledgement at once.
    pub in_flight: usize,
    /// Length of each message body.
    pub body_bytes: usize,
    /// Acknowledged sends, counted as they come for the main thread's samples.
    pub acked: Arc<AtomicU64>,
}

/// What the main thread asks a loop to do.
#[derive(Debug)]
pub enum Command {
    /// Connect every user to this address.
    Connect(SocketAddr),
    /// Make these calls, at most `window` at once; answered with their outcomes in order.
    Calls {
        /// The calls.
        jobs: Vec<Job>,
        /// Most in flight at once.
        window: usize,
    },
    /// Run the timed phase.
    Send(SendPlan),
    /// Wait until no push arrived for `quiet` and no send is outstanding, at most until
    /// `until`.
    Drain {
        /// How long without a push counts as drained.
        quiet: Duration,
        /// The latest moment to stop waiting.
        until: Instant,
    },
    /// Every user calls `Sync` from what it saw, until nothing is missing.
    Sync,
    /// Run a soak; answered when it is over.
    Soak(SoakPlan),
    /// From now on, bring back users whose connection is lost with `Resume` (whatever
    /// else the loop is doing); answered at once.
    Resume(ResumePlan),
    /// Stop and hand back what was seen.
    Finish,
}

/// A loop's answer to a [`Command`].
#[derive(Debug)]
pub enum Reply {
    /// Every user connected, or the first failure.
    Connected(Result<(), String>),
    /// The outcomes of [`Command::Calls`], in order.
    Calls(Vec<Result<Bytes, Status>>),
    /// The timed phase is over; this many sends were still unanswered.
    Sent(usize),
    /// Pushes stopped arriving.
    Drained,
    /// Every user synced.
    Synced,
    /// The soak is over; this many calls were still unanswered.
    Soaked(usize),
    /// Lost users will be brought back.
    Resuming,
    /// The loop stopped.
    Finished(Box<Report>),
}

/// Everything a loop saw.
#[derive(Debug)]
pub struct Report {
    /// Counters and histograms.
    pub counters: Counters,
    /// Every acknowledged send.
    pub acks: Vec<Ack>,
    /// What each local user saw, by conversation.
    pub seen: Vec<HashMap<ConversationId, Seen>>,
    /// Users brought back with `Resume`: when each was lost and when it was back.
    pub resumed: Vec<(Instant, Instant)>,
    /// When the first of them connected again.
    pub first_reconnect: Option<Instant>,
}
