//! Benchmarks of rpc-core against tonic, tarpc and two frameworkless mio servers.
//!
//! - [`proto`]: the workload, a protobuf message with one `bytes` field, and
//!   tonic's generated echo service.
//! - [`system`]: the systems under test and their names on the command line.
//! - [`wire`]: a minimal codec of rpc-core's framing, for the two references.
//! - [`servers`]: one echo server per system. Each runs in a process of its
//!   own (`rpcbench serve SYSTEM ADDR`), so server and client never share an
//!   allocator or a scheduler queue.
//! - [`load`]: closed-loop load generators: a number of lanes, each with one
//!   call outstanding at a time, timed with hdrhistogram.
//! - [`run`]: the plan (which cells, how long, how many rounds), the server
//!   processes and the interleaved schedule.
//! - [`report`]: medians across rounds, ratios and the Markdown tables.
//! - [`os`]: the open-files limit and a process's resident memory, for the
//!   benches that hold many sockets or watch a server's memory.
//! - [`abuse`]: `rpcbench abuse`, a well-behaved client's latency while
//!   another client abuses an rpc-core server, and the server's memory.

pub mod abuse;
pub mod load;
pub mod os;
pub mod proto;
pub mod report;
pub mod run;
pub mod servers;
pub mod system;
pub mod wire;

pub use system::System;
