//! `chatbench`: simulated chat users against the local cluster or the standalone system.
//!
//! It registers and logs in N users through the gateway (each user is one TCP
//! connection, driven from a few mio event loops), pairs users on different proxies for
//! one-to-one messages and puts them in groups, sends for a fixed time at a given rate or
//! as fast as a window of outstanding sends allows, then drains the pushes, has every
//! user `Sync` what it missed, and checks that every acknowledged message reached every
//! recipient exactly once. It exits with status 1 when a message was lost or duplicated.
//!
//! `chatbench soak` instead runs a cluster under steady mixed traffic (one to one and
//! groups, logouts and logins with the presence changes they announce, `History`, `Sync`
//! and `Ack`) for a long time, samples every process and backend, and fails when one of
//! them keeps growing with the traffic after the warm-up (see `chat/soak.rs`).
//!
//! `chatbench storm` logs N users in on a cluster of two proxies behind nginx, kills one
//! proxy with SIGKILL while the others chat, and measures how long until every user of
//! the killed proxy is back (`Resume` with its session token, then `Sync`) and the other
//! users' send-to-push latency meanwhile.
//!
//! ```text
//! chatbench storm --users 10000
//! chatbench --cluster --users 1000 --workload direct --duration 20 --rate 2000
//! chatbench --standalone --users 100 --workload group10 --duration 10
//! chatbench --server 127.0.0.1:7979 --state-dir data/cluster --users 100 --workload mixed
//! chatbench soak --duration 1800 --warmup 300 --rate 400
//! ```
//!
//! The timed run is in `chatbench/run_timed.rs`, the soak and the storm in `run_soak.rs`
//! and `run_storm.rs` beside it; `cli.rs` defines the command line, `setup.rs` readies
//! the users, and `loops.rs` talks to the event loops that drive them.

#[path = "../chat/mod.rs"]
mod chat;
#[path = "chatbench/cli.rs"]
mod cli;
#[path = "chatbench/loops.rs"]
mod loops;
#[path = "chatbench/run_soak.rs"]
mod run_soak;
#[path = "chatbench/run_storm.rs"]
mod run_storm;
#[path = "chatbench/run_timed.rs"]
mod run_timed;
#[path = "chatbench/setup.rs"]
mod setup;

// Besides this file's own, these are the names `run_soak` and `run_storm` use (they
// import `super::*`).
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use prost::Message as _;
use services::api;

use chat::driver::{Command, Handle, Reply, SendPlan, SoakPlan};
use chat::plan::{Conversations, Workload};
use chat::report::{Latency, Run};
use chat::soak::{self as soaking, Limits, Probe, Sample};
use chat::storm::ResumePlan;
use chat::system::{self, Mode, Options, Seed, System};
use chat::tally::{self, Counters};
use cli::{Cli, SoakArgs, StormArgs, Sub};
use loops::{calls, check, finish, place, Finished};
use setup::{setup, Accounts};

fn main() {
    let cli = Cli::parse();
    if let Some(Sub::Storm(args)) = &cli.mode {
        match run_storm::storm(args) {
            Ok(true) => {}
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("chatbench: storm: {e:#}");
                std::process::exit(2);
            }
        }
        return;
    }
    if let Some(Sub::Soak(args)) = &cli.mode {
        match run_soak::soak(args) {
            Ok(true) => {}
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("chatbench: soak: {e:#}");
                std::process::exit(2);
            }
        }
        return;
    }
    match run_timed::run(&cli) {
        Ok(run) => {
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&run).expect("a run serialises"));
                eprintln!("chatbench: {}", run.verdict());
            } else {
                print!("{}", run.text());
            }
            if cli.markdown {
                println!("{}\n{}", Run::HEADER, run.row());
            }
            if run.lost > 0 || run.dup > 0 {
                eprintln!("chatbench: FAILED: {} lost, {} duplicated", run.lost, run.dup);
                std::process::exit(1);
            }
            if run.acked == 0 {
                eprintln!("chatbench: FAILED: no message was acknowledged");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("chatbench: {e:#}");
            std::process::exit(2);
        }
    }
}

/// What a command that starts its own cluster checks first: room for `users`
/// connections in the open-files limit (raised as far as allowed); returns the
/// `chatroom` binary to start, `chatroom` or the one next to this binary.
fn prepare(users: usize, chatroom: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let _ = tally::base();
    // Every simulated user is a socket.
    let nofile = benches::os::raise_nofile().unwrap_or(u64::MAX);
    if (users + 64) as u64 > nofile {
        bail!("{users} users need more open files than the limit of {nofile}");
    }
    Ok(match chatroom {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("chatroom"),
    })
}
