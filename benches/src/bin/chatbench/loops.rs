//! The main thread's side of the event loops: which loop drives which user, calls spread
//! over the loops, and the end of a run (drain, final `Sync`, what every loop saw merged).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use rpc_core::Status;
use services::ConversationId;

use crate::chat::driver::{Command, Handle, Job, Reply};
use crate::chat::tally::{self, Counters, Seen};

/// Where user `i` lives: (loop, index in the loop).
pub(crate) fn place(i: usize, loops: usize) -> (usize, usize) {
    (i % loops, i / loops)
}

/// Runs `calls` (user index, method, body) spread over the loops, at most `window` in
/// flight in all, and returns their outcomes in order.
pub(crate) fn calls(
    loops: &[Handle],
    calls: Vec<(usize, &'static str, Vec<u8>)>,
    window: usize,
) -> Vec<Result<Bytes, Status>> {
    let n = loops.len();
    let mut jobs: Vec<Vec<Job>> = vec![Vec::new(); n];
    let mut origin: Vec<Vec<usize>> = vec![Vec::new(); n];
    let total = calls.len();
    for (k, (user, method, body)) in calls.into_iter().enumerate() {
        let (l, local) = place(user, n);
        jobs[l].push(Job { user: local, method, body });
        origin[l].push(k);
    }
    for (l, jobs) in jobs.into_iter().enumerate() {
        loops[l].send(Command::Calls { jobs, window: window.div_ceil(n) });
    }
    let mut out: Vec<Option<Result<Bytes, Status>>> = (0..total).map(|_| None).collect();
    for (l, handle) in loops.iter().enumerate() {
        let Reply::Calls(results) = handle.reply() else { panic!("unexpected reply to Calls") };
        for (k, result) in origin[l].iter().zip(results) {
            out[*k] = Some(result);
        }
    }
    out.into_iter().map(|r| r.expect("every call answered")).collect()
}

/// The first failure among `results`, as an error naming `what`.
pub(crate) fn check(results: &[Result<Bytes, Status>], what: &str) -> anyhow::Result<()> {
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(status)) = results.iter().find(|r| r.is_err()) {
        bail!("{failed} of {} {what} calls failed, e.g. {status}", results.len());
    }
    Ok(())
}

/// What every loop saw, merged at the end of a run.
pub(crate) struct Finished {
    /// Counters and histograms of all loops.
    pub(crate) counters: Counters,
    /// Every acknowledged send.
    pub(crate) acks: Vec<tally::Ack>,
    /// What each user saw, by user id and conversation.
    pub(crate) seen: HashMap<u64, HashMap<ConversationId, Seen>>,
    /// Users brought back with `Resume`: when each was lost and when it was back.
    pub(crate) resumed: Vec<(Instant, Instant)>,
    /// When the first of them connected again.
    pub(crate) first_reconnect: Option<Instant>,
}

/// Ends a run: waits (up to 20 s) until no push has arrived for a second, lets every
/// user Sync so that nothing still in flight is missed, then stops the loops and merges
/// what they saw. `ids[i]` is user `i`'s id.
pub(crate) fn finish(loops: &[Handle], ids: &[u64]) -> anyhow::Result<Finished> {
    let until = Instant::now() + Duration::from_secs(20);
    for handle in loops {
        handle.send(Command::Drain { quiet: Duration::from_secs(1), until });
    }
    for handle in loops {
        handle.reply();
    }
    for handle in loops {
        handle.send(Command::Sync);
    }
    for handle in loops {
        handle.reply();
    }
    let mut done = Finished {
        counters: Counters::default(),
        acks: Vec::new(),
        seen: HashMap::new(),
        resumed: Vec::new(),
        first_reconnect: None,
    };
    for (l, handle) in loops.iter().enumerate() {
        handle.send(Command::Finish);
        let Reply::Finished(report) = handle.reply() else { bail!("unexpected reply to Finish") };
        done.counters.merge(&report.counters);
        done.acks.extend(report.acks);
        done.resumed.extend(report.resumed);
        done.first_reconnect = match (done.first_reconnect, report.first_reconnect) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let users = (0..ids.len()).filter(|&i| place(i, loops.len()).0 == l);
        for (i, user_seen) in users.zip(report.seen) {
            done.seen.insert(ids[i], user_seen);
        }
    }
    Ok(done)
}
