//! The tools of the `chatroom` binary: what uses the chat system from outside.
//!
//! * [`client`] is `chatroom client`, the command-line chat client: one command per
//!   line, parsed by clap ([`client::command`]); what it prints, as text or JSON lines
//!   ([`client::event`]); what it has seen of each conversation ([`client::cursor`]);
//!   its connection, logins, resumes, Syncs and send retries (`client/session.rs`).
//! * [`demo`] is `chatroom demo`: three bots hold a scripted conversation.
//! * [`cluster`] is `chatroom cluster up|down|status`: a local cluster of the binary's
//!   own processes behind nginx, recorded in a state file that tests and benchmarks
//!   read ([`cluster::read_state`]).
//!
//! The servers, stores and presence tables are the `services` crate's; the binary
//! (`src/bin/chatroom/`) runs them (`standalone`, `proxy`, `user-service`,
//! `chat-service`) as well as these tools.
//!
//! Threads: the client adds one thread that prints pushes and resumes the session after
//! a lost connection (`client/session.rs`, `Client::connect`); the cluster launcher
//! none (its processes are children, detached in process groups of their own).

pub mod client;
pub mod cluster;
pub mod demo;
