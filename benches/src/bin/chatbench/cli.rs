//! The command line: the timed run's flags ([`Cli`]) and the `soak` and `storm`
//! subcommands' ([`SoakArgs`], [`StormArgs`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::chat::plan::Workload;

/// Chat load generator: logins, one-to-one and group messages, latency, loss.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct Cli {
    /// Another mode than the timed run.
    #[command(subcommand)]
    pub(crate) mode: Option<Sub>,
    /// A running proxy, nginx or standalone system to use, started with its per-address
    /// limits off (`CHATROOM_MAX_CONNECTIONS_PER_ADDRESS=0`, and the login and
    /// registration bursts 0), as `--cluster` and `--standalone` start theirs: every
    /// simulated user connects from 127.0.0.1.
    #[arg(long, conflicts_with_all = ["cluster", "standalone"], required_unless_present_any = ["cluster", "standalone"])]
    pub(crate) server: Option<SocketAddr>,
    /// Start a local cluster (`chatroom cluster up`) for the run and stop it after.
    #[arg(long, conflicts_with = "standalone")]
    pub(crate) cluster: bool,
    /// Start `chatroom standalone` for the run and stop it after.
    #[arg(long)]
    pub(crate) standalone: bool,
    /// Simulated users, each with its own connection.
    #[arg(long, default_value_t = 100)]
    pub(crate) users: usize,
    /// The traffic.
    #[arg(long, value_enum, default_value_t = Workload::Direct)]
    pub(crate) workload: Workload,
    /// Seconds of timed sending.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Messages per second in all; 0 sends as fast as `--in-flight` allows.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) rate: f64,
    /// Most sends awaiting their acknowledgement at once, in all.
    #[arg(long, default_value_t = 128)]
    pub(crate) in_flight: usize,
    /// Bytes per message body (at least 16: the send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) body_bytes: usize,
    /// Create the users in the store with a cheap password hash before the system starts,
    /// instead of `Register` (full-cost argon2) through the gateway. Default: when more
    /// than 1000 users and chatbench starts the system.
    #[arg(long)]
    pub(crate) seed: Option<bool>,
    /// Event-loop threads driving the users.
    #[arg(long, default_value_t = 2)]
    pub(crate) loops: usize,
    /// Most setup calls (register, login, groups) in flight at once, in all.
    #[arg(long, default_value_t = 32)]
    pub(crate) setup_window: usize,
    /// Print the run as JSON on stdout instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also print the Markdown table row.
    #[arg(long)]
    pub(crate) markdown: bool,
    /// Proxies of a started cluster.
    #[arg(long, default_value_t = 2)]
    pub(crate) proxies: usize,
    /// User services of a started cluster.
    #[arg(long, default_value_t = 2)]
    pub(crate) user_services: usize,
    /// Chat services of a started cluster.
    #[arg(long, default_value_t = 2)]
    pub(crate) chat_services: usize,
    /// A running cluster's state directory (with `--server`): to read proxy memory and
    /// which proxy each user is on.
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// The `chatroom` binary [default: next to this one].
    #[arg(long)]
    pub(crate) chatroom: Option<PathBuf>,
    /// The MySQL server a started cluster gets a fresh database on.
    #[arg(long, default_value = "mysql://chatroom:chatroom@127.0.0.1:3306")]
    pub(crate) mysql_server: String,
    /// Redis, to read which proxy holds each user.
    #[arg(long, env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub(crate) redis: String,
}

/// The modes besides the timed run.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Sub {
    /// A cluster under steady mixed traffic for a long time: fails when a process's
    /// memory, threads or descriptors, or what a backend holds, grows with the traffic.
    Soak(SoakArgs),
    /// Kill one of two proxies under load; time its users' return with `Resume`.
    Storm(StormArgs),
}

/// The storm: how many users, how much traffic, when the kill comes.
#[derive(Debug, clap::Args)]
pub(crate) struct StormArgs {
    /// Simulated users (seeded with a full-cost password hash, computed once for all of
    /// them), about half on each proxy.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) users: usize,
    /// Seed the users with the cheapest password hash instead: the initial logins take
    /// seconds rather than minutes. The storm itself computes no hash either way.
    #[arg(long)]
    pub(crate) cheap_hash: bool,
    /// The killed proxy's users do not come back: what the crash alone costs the others.
    #[arg(long)]
    pub(crate) no_resume: bool,
    /// Seconds of sending among the users of the surviving proxy.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) duration: f64,
    /// Seconds into the sending when the proxy is killed.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) kill_after: f64,
    /// Messages per second in all, one to one between users of the surviving proxy.
    #[arg(long, default_value_t = 500.0)]
    pub(crate) rate: f64,
    /// Most sends awaiting their acknowledgement at once, in all.
    #[arg(long, default_value_t = 128)]
    pub(crate) in_flight: usize,
    /// Event-loop threads driving the users.
    #[arg(long, default_value_t = 2)]
    pub(crate) loops: usize,
    /// Most setup calls in flight at once, in all.
    #[arg(long, default_value_t = 64)]
    pub(crate) setup_window: usize,
    /// The `chatroom` binary [default: next to this one].
    #[arg(long)]
    pub(crate) chatroom: Option<PathBuf>,
    /// The MySQL server the cluster gets a fresh database on.
    #[arg(long, default_value = "mysql://chatroom:chatroom@127.0.0.1:3306")]
    pub(crate) mysql_server: String,
    /// Redis.
    #[arg(long, env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub(crate) redis: String,
}

/// How long, how much traffic, and how much growth is too much.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// Simulated users (seeded with a cheap password hash): each in a one-to-one pair
    /// with a friend and in a group of 10.
    #[arg(long, default_value_t = 1000)]
    pub(crate) users: usize,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 1800.0)]
    pub(crate) duration: f64,
    /// Seconds before the samples that count: caches, pools and allocators settle.
    #[arg(long, default_value_t = 300.0)]
    pub(crate) warmup: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) sample_every: f64,
    /// Messages per second in all, alternately one to one and to groups.
    #[arg(long, default_value_t = 400.0)]
    pub(crate) rate: f64,
    /// `History`, `Sync` and `Ack` calls per second in all, in turn.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) reads: f64,
    /// Logouts per second in all; each user logs in again (and syncs) after `--offline`.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) churn: f64,
    /// Seconds a logged-out user stays away.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) offline: f64,
    /// Most growth of a process's RSS (or Redis's memory), in MiB per 100,000
    /// acknowledged messages after the warm-up.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) max_mib: f64,
    /// Most growth of a count (threads, open descriptors, database connections, Redis
    /// keys, ZooKeeper watches) per 100,000 acknowledged messages after the warm-up.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) max_count: f64,
    /// Also write every sample to this CSV file.
    #[arg(long)]
    pub(crate) csv: Option<PathBuf>,
    /// Most sends awaiting their acknowledgement at once, in all.
    #[arg(long, default_value_t = 128)]
    pub(crate) in_flight: usize,
    /// Bytes per message body (at least 16).
    #[arg(long, default_value_t = 64)]
    pub(crate) body_bytes: usize,
    /// Event-loop threads driving the users.
    #[arg(long, default_value_t = 2)]
    pub(crate) loops: usize,
    /// Proxies of the cluster.
    #[arg(long, default_value_t = 2)]
    pub(crate) proxies: usize,
    /// User services of the cluster.
    #[arg(long, default_value_t = 2)]
    pub(crate) user_services: usize,
    /// Chat services of the cluster.
    #[arg(long, default_value_t = 2)]
    pub(crate) chat_services: usize,
    /// The `chatroom` binary [default: next to this one].
    #[arg(long)]
    pub(crate) chatroom: Option<PathBuf>,
    /// The MySQL server the cluster gets a fresh database on.
    #[arg(long, default_value = "mysql://chatroom:chatroom@127.0.0.1:3306")]
    pub(crate) mysql_server: String,
    /// Redis.
    #[arg(long, env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub(crate) redis: String,
}
