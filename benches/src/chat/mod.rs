//! The chat load generator behind `chatbench`: simulated users on a few mio event loops.
//!
//! - [`system`]: the system under test, started by the generator (a local cluster behind
//!   nginx, or the standalone process) or given by address, and always stopped again;
//!   process ids for memory and CPU accounting.
//! - [`conn`]: one user's TCP connection speaking rpc-core's framing by hand, so that
//!   10,000 users cost 10,000 sockets and no threads.
//! - [`driver`]: the event-loop threads that own those connections and run each phase
//!   (setup calls, timed sending, draining pushes, the final `Sync`) on command.
//! - [`plan`]: who talks to whom: one-to-one pairs across proxies and groups.
//! - [`tally`]: what each receiver saw, latency histograms, and the final check that
//!   every acknowledged message reached every recipient exactly once.
//! - [`report`]: the numbers of one run, as text, a Markdown row and JSON.
//! - [`soak`]: a long run's samples of every process and backend, and whether any of
//!   them grows with the traffic.
//! - [`storm`]: users of a killed proxy coming back with `Resume` and their session
//!   tokens.

pub mod conn;
pub mod driver;
pub mod plan;
pub mod report;
pub mod soak;
pub mod storm;
pub mod system;
pub mod tally;
