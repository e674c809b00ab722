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

#[path = "../chat/mod.rs"]
mod chat;
#[path = "chatbench/run_soak.rs"]
mod run_soak;
#[path = "chatbench/run_storm.rs"]
mod run_storm;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use prost::Message as _;
use rpc_core::Status;
use services::api;
use services::{ConversationId, GroupId};

use chat::driver::{Command, Handle, Job, Reply, SendPlan, SoakPlan};
use chat::plan::{self, Conversations, Workload};
use chat::report::{Latency, Run};
use chat::soak::{self as soaking, Limits, Probe, Sample};
use chat::storm::ResumePlan;
use chat::system::{self, Mode, Options, Seed, System};
use chat::tally::{self, Counters, Seen};

/// Chat load generator: logins, one-to-one and group messages, latency, loss.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    /// Another mode than the timed run.
    #[command(subcommand)]
    mode: Option<Sub>,
    /// A running proxy, nginx or standalone system to use.
    #[arg(long, conflicts_with_all = ["cluster", "standalone"], required_unless_present_any = ["cluster", "standalone"])]
    server: Option<SocketAddr>,
    /// Start a local cluster (`chatroom cluster up`) for the run and stop it after.
    #[arg(long, conflicts_with = "standalone")]
    cluster: bool,
    /// Start `chatroom standalone` for the run and stop it after.
    #[arg(long)]
    standalone: bool,
    /// Simulated users, each with its own connection.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// The traffic.
    #[arg(long, value_enum, default_value_t = Workload::Direct)]
    workload: Workload,
    /// Seconds of timed sending.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Messages per second in all; 0 sends as fast as `--in-flight` allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Most sends awaiting their acknowledgement at once, in all.
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    /// Bytes per message body (at least 16: the send time).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Create the users in the store with a cheap password hash before the system starts,
    /// instead of `Register` (full-cost argon2) through the gateway. Default: when more
    /// than 1000 users and chatbench starts the system.
    #[arg(long)]
    seed: Option<bool>,
    /// Event-loop threads driving the users.
    #[arg(long, default_value_t = 2)]
    loops: usize,
    /// Most setup calls (register, login, groups) in flight at once, in all.
    #[arg(long, default_value_t = 32)]
    setup_window: usize,
    /// Print the run as JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Also print the Markdown table row.
    #[arg(long)]
    markdown: bool,
    /// Proxies of a started cluster.
    #[arg(long, default_value_t = 2)]
    proxies: usize,
    /// User services of a started cluster.
    #[arg(long, default_value_t = 2)]
    user_services: usize,
    /// Chat services of a started cluster.
    #[arg(long, default_value_t = 2)]
    chat_services: usize,
    /// A running cluster's state directory (with `--server`): to read proxy memory and
    /// which proxy each user is on.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The `chatroom` binary [default: next to this one].
    #[arg(long)]
    chatroom: Option<PathBuf>,
    /// The MySQL server a started cluster gets a fresh database on.
    #[arg(long, default_value = "mysql://chatroom:chatroom@127.0.0.1:3306")]
    mysql_server: String,
    /// Redis, to read which proxy holds each user.
    #[arg(long, env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis: String,
}

/// The modes besides the timed run.
#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// A cluster under steady mixed traffic for a long time: fails when a process's
    /// memory, threads or descriptors, or what a backend holds, grows with the traffic.
    Soak(SoakArgs),
    /// Kill one of two proxies under load; time its users' return with `Resume`.
    Storm(StormArgs),
}

/// The storm: how many users, how much traffic, when the kill comes.
#[derive(Debug, clap::Args)]
struct StormArgs {
    /// Simulated users (seeded with a cheap password hash), about half on each proxy.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Seconds of sending among the users of the surviving proxy.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds into the sending when the proxy is killed.
    #[arg(long, default_value_t = 3.0)]
    kill_after: f64,
    /// Messages per second in all, one to one between users of the surviving proxy.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Most sends awaiting their acknowledgement at once, in all.
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    /// Event-loop threads driving the users.
    #[arg(long, default_value_t = 2)]
    loops: usize,
    /// Most setup calls in flight at once, in all.
    #[arg(long, default_value_t = 64)]
    setup_window: usize,
    /// The `chatroom` binary [default: next to this one].
    #[arg(long)]
    chatroom: Option<PathBuf>,
    /// The MySQL server the cluster gets a fresh database on.
    #[arg(long, default_value = "mysql://chatroom:chatroom@127.0.0.1:3306")]
    mysql_server: String,
    /// Redis.
    #[arg(long, env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis: String,
}

/// How long, how much traffic, and how much growth is too much.
#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Simulated users (seeded with a cheap password hash): each in a one-to-one pair
    /// with a friend and in a group of 10.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Seconds before the samples that count: caches, pools and allocators settle.
    #[arg(long, default_value_t = 300.0)]
    warmup: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 20.0)]
    sample_every: f64,
    /// Messages per second in all, alternately one to one and to groups.
    #[arg(long, default_value_t = 400.0)]
    rate: f64,
    /// `History`, `Sync` and `Ack` calls per second in all, in turn.
    #[arg(long, default_value_t = 30.0)]
    reads: f64,
    /// Logouts per second in all; each user logs in again (and syncs) after `--offline`.
    #[arg(long, default_value_t = 2.0)]
    churn: f64,
    /// Seconds a logged-out user stays away.
    #[arg(long, default_value_t = 10.0)]
    offline: f64,
    /// Most growth of a process's RSS (or Redis's memory), in MiB per 100,000
    /// acknowledged messages after the warm-up.
    #[arg(long, default_value_t = 1.0)]
    max_mib: f64,
    /// Most growth of a count (threads, open descriptors, database connections, Redis
    /// keys, ZooKeeper watches) per 100,000 acknowledged messages after the warm-up.
    #[arg(long, default_value_t = 2.0)]
    max_count: f64,
    /// Also write every sample to this CSV file.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Most sends awaiting their acknowledgement at once, in all.
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    /// Bytes per message body (at least 16).
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Event-loop threads driving the users.
    #[arg(long, default_value_t = 2)]
    loops: usize,
    /// Proxies of the cluster.
    #[arg(long, default_value_t = 2)]
    proxies: usize,
    /// User services of the cluster.
    #[arg(long, default_value_t = 2)]
    user_services: usize,
    /// Chat services of the cluster.
    #[arg(long, default_value_t = 2)]
    chat_services: usize,
    /// The `chatroom` binary [default: next to this one].
    #[arg(long)]
    chatroom: Option<PathBuf>,
    /// The MySQL server the cluster gets a fresh database on.
    #[arg(long, default_value = "mysql://chatroom:chatroom@127.0.0.1:3306")]
    mysql_server: String,
    /// Redis.
    #[arg(long, env = "CHATROOM_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis: String,
}

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
    match run(&cli) {
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

/// Where user `i` lives: (loop, index in the loop).
fn place(i: usize, loops: usize) -> (usize, usize) {
    (i % loops, i / loops)
}

/// Runs `calls` (user index, method, body) spread over the loops, at most `window` in
/// flight in all, and returns their outcomes in order.
fn calls(
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
fn check(results: &[Result<Bytes, Status>], what: &str) -> anyhow::Result<()> {
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(status)) = results.iter().find(|r| r.is_err()) {
        bail!("{failed} of {} {what} calls failed, e.g. {status}", results.len());
    }
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<Run> {
    let _ = tally::base();
    let nofile = system::raise_nofile();
    let loops_n = cli.loops.max(1);
    if (cli.users + 64) as u64 > nofile {
        bail!("{} users need more open files than the limit of {nofile}", cli.users);
    }
    let mode = match (cli.server, cli.cluster, cli.standalone) {
        (Some(addr), _, _) => Mode::Server(addr),
        (None, true, _) => Mode::Cluster,
        _ => Mode::Standalone,
    };
    let chatroom = match &cli.chatroom {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("chatroom"),
    };
    let options = Options {
        mode: mode.clone(),
        chatroom,
        proxies: cli.proxies,
        user_services: cli.user_services,
        chat_services: cli.chat_services,
        mysql_server: cli.mysql_server.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let names: Vec<String> = (0..cli.users).map(|i| format!("cb{run_id}u{i}")).collect();
    let password = format!("chatbench-{run_id}");
    let seeded = cli.seed.unwrap_or(cli.users > 1000 && !matches!(mode, Mode::Server(_)));
    let seed = seeded.then(|| Seed { names: names.clone(), password: password.clone() });

    eprintln!("chatbench: starting {:?}{}", mode, if seeded { ", seeding users" } else { "" });
    let system = System::start(&options, seed.as_ref())?;
    let describe = system.describe(&options);
    eprintln!("chatbench: {describe} at {}", system.addr);

    let loops: Vec<Handle> = (0..loops_n)
        .map(|l| Handle::spawn(l, (0..cli.users).filter(|&i| place(i, loops_n).0 == l).count()))
        .collect::<Result<_, _>>()?;
    let outcome = drive(cli, &system, &loops, &names, &password, seeded, describe);
    drop(loops);
    drop(system);
    outcome
}

/// The users connected, logged in and placed in their conversations.
struct Setup {
    /// Each user's id.
    ids: Vec<u64>,
    /// Each user's session token, from its login.
    tokens: Vec<String>,
    /// The proxy instance each user's presence lease names, where known.
    proxies: Vec<Option<String>>,
    /// Registrations per second, when the users were registered through the gateway.
    registers_per_s: Option<f64>,
    /// Logins per second.
    logins_per_s: f64,
    /// How users were found on proxies.
    pairing: &'static str,
    /// One-to-one pairs (user indexes) and how many span two proxies.
    pairs: Vec<(usize, usize)>,
    cross: usize,
    /// Groups and their members (user indexes).
    groups: Vec<(GroupId, Vec<usize>)>,
    /// Members per group.
    group_size: usize,
    /// Who is in each conversation and where each user sends.
    conversations: Conversations,
    /// The proxies' resident memory before the users connected and after they logged in.
    rss_before: u64,
    rss_after: u64,
}

/// The simulated users' accounts.
struct Accounts<'a> {
    /// Their names, in user order.
    names: &'a [String],
    /// Their common password.
    password: &'a str,
    /// Whether they exist already (seeded into the store) or must register.
    seeded: bool,
}

/// Connects every user, registers them unless seeded, logs them in, and pairs and
/// groups them for `workload`; at most `setup_window` calls in flight.
fn setup(
    system: &System,
    loops: &[Handle],
    accounts: &Accounts<'_>,
    workload: Workload,
    setup_window: usize,
    redis: &str,
) -> anyhow::Result<Setup> {
    let Accounts { names, password, seeded } = *accounts;
    let n = names.len();
    let proxy_pids = system.proxy_pids();
    let rss = || proxy_pids.iter().filter_map(|&pid| system::rss_kib(pid)).sum::<u64>();
    let rss_before = rss();

    for handle in loops {
        handle.send(Command::Connect(system.addr));
    }
    for handle in loops {
        match handle.reply() {
            Reply::Connected(Ok(())) => {}
            Reply::Connected(Err(e)) => bail!("connecting the users: {e}"),
            _ => bail!("unexpected reply to Connect"),
        }
    }
    eprintln!("chatbench: {n} users connected");

    let mut registers_per_s = None;
    if !seeded {
        let started = Instant::now();
        let register = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let body = api::RegisterRequest {
                    name: name.clone(),
                    password: password.to_owned(),
                    ..Default::default()
                };
                (i, "Register", body.encode_to_vec())
            })
            .collect();
        let results = calls(loops, register, setup_window);
        check(&results, "Register")?;
        let rate = n as f64 / started.elapsed().as_secs_f64();
        eprintln!("chatbench: registered {n} users, {rate:.1}/s");
        registers_per_s = Some(rate);
    }

    let started = Instant::now();
    let login = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let body =
                api::LoginRequest { name: name.clone(), password: password.to_owned(), ..Default::default() };
            (i, "Login", body.encode_to_vec())
        })
        .collect();
    let results = calls(loops, login, setup_window);
    check(&results, "Login")?;
    let logins_per_s = n as f64 / started.elapsed().as_secs_f64();
    let rss_after = rss();
    let (ids, tokens): (Vec<u64>, Vec<String>) = results
        .into_iter()
        .map(|r| {
            let response = api::LoginResponse::decode(r.expect("checked"))?;
            let token = response.session_token.map(|t| t.token).unwrap_or_default();
            Ok((response.user.map(|u| u.id).unwrap_or_default(), token))
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    eprintln!("chatbench: logged in {n} users, {logins_per_s:.1}/s");

    // Which proxy each user is on: a cluster's presence lease names it. Without one,
    // pairs are consecutive connections, which nginx's round robin puts on different
    // proxies, but that cannot be checked.
    let (proxies, pairing) = match system.proxies_of(&ids, redis) {
        Ok(Some(p)) => (p, "presence lease"),
        Ok(None) if matches!(system.kind(), Mode::Standalone) => {
            (vec![Some("standalone".into()); n], "one proxy")
        }
        Ok(None) => (vec![None; n], "connection order (proxies unknown)"),
        Err(e) => {
            eprintln!("chatbench: cannot read presence ({e:#}); pairing by connection order");
            (vec![None; n], "connection order (proxies unknown)")
        }
    };
    let order = plan::interleave(&proxies);
    let (pairs, cross) = if workload.pairs() { plan::pairs(&order, &proxies) } else { (Vec::new(), 0) };
    let cross = if proxies.iter().any(Option::is_none) { 0 } else { cross };
    let group_size = workload.group_size().map_or(0, |g| g.min(n));
    let member_lists = if group_size > 0 { plan::groups(&order, group_size) } else { Vec::new() };
    let groups = make_groups(loops, &member_lists, setup_window)?;
    if !groups.is_empty() {
        eprintln!("chatbench: {} groups of {group_size} ready", groups.len());
    }
    let conversations = Conversations::new(&ids, &pairs, &groups);
    Ok(Setup {
        ids,
        tokens,
        proxies,
        registers_per_s,
        logins_per_s,
        pairing,
        pairs,
        cross,
        groups,
        group_size,
        conversations,
        rss_before,
        rss_after,
    })
}

fn drive(
    cli: &Cli,
    system: &System,
    loops: &[Handle],
    names: &[String],
    password: &str,
    seeded: bool,
    describe: String,
) -> anyhow::Result<Run> {
    let n = names.len();
    let Setup {
        ids,
        tokens: _,
        proxies: _,
        registers_per_s,
        logins_per_s,
        pairing,
        pairs,
        cross,
        groups,
        group_size,
        conversations,
        rss_before,
        rss_after,
    } = setup(
        system,
        loops,
        &Accounts { names, password, seeded },
        cli.workload,
        cli.setup_window,
        &cli.redis,
    )?;

    let targets = system::cpu_targets(system);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(cli.duration);
    let cpu_before = system::cpu_snapshot(&targets);
    for (l, handle) in loops.iter().enumerate() {
        let users: Vec<usize> = (0..n).filter(|&i| place(i, loops.len()).0 == l).collect();
        handle.send(Command::Send(SendPlan {
            ids: users.iter().map(|&i| ids[i]).collect(),
            sends: users.iter().map(|&i| conversations.sends[i].clone()).collect(),
            rate: cli.rate / loops.len() as f64,
            start,
            end,
            in_flight: cli.in_flight.div_ceil(loops.len()),
            body_bytes: cli.body_bytes.max(16),
        }));
    }
    eprintln!("chatbench: sending for {} s", cli.duration);
    let mut unanswered = 0;
    for handle in loops {
        if let Reply::Sent(left) = handle.reply() {
            unanswered += left;
        }
    }
    let cpu_after = system::cpu_snapshot(&targets);
    if unanswered > 0 {
        eprintln!("chatbench: {unanswered} sends still unanswered after the grace period");
    }
    let Finished { counters, acks, seen, .. } = finish(loops, &ids)?;
    let verdict = tally::verdict(acks.iter(), &conversations.members, |user, c| seen.get(&user)?.get(&c));

    let cpu_s = cpu_after
        .iter()
        .filter_map(|(name, after)| Some((name.clone(), after - cpu_before.get(name)?)))
        .collect();
    let duration = cli.duration;
    Ok(Run {
        system: describe,
        users: n,
        workload: cli.workload,
        duration_s: duration,
        rate: cli.rate,
        in_flight: cli.in_flight,
        seeded,
        registers_per_s,
        logins_per_s,
        pairing: pairing.into(),
        pairs: pairs.len(),
        cross_proxy_pairs: cross,
        groups: groups.len(),
        group_size,
        sent: counters.sent,
        acked: counters.acked_in_window,
        acked_per_s: counters.acked_in_window as f64 / duration,
        delivered: counters.delivered_in_window,
        delivered_per_s: counters.delivered_in_window as f64 / duration,
        latency_ms: Latency::of(&counters.latency),
        ack_latency_ms: Latency::of(&counters.ack_latency),
        proxy_rss_before_kib: rss_before,
        proxy_rss_after_kib: rss_after,
        proxy_kib_per_user: rss_after.saturating_sub(rss_before) as f64 / n.max(1) as f64,
        lost: verdict.lost,
        dup: verdict.dup + counters.dup,
        repushes: counters.repushes,
        from_sync: counters.from_sync,
        retries: counters.retries,
        failed: counters.failed,
        disconnects: counters.disconnects,
        errors: counters.errors.into_iter().collect(),
        cpu_s,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })
}

/// What a command that starts its own cluster checks first: room for `users`
/// connections in the open-files limit (raised as far as allowed); returns the
/// `chatroom` binary to start, `chatroom` or the one next to this binary.
fn prepare(users: usize, chatroom: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let _ = tally::base();
    let nofile = system::raise_nofile();
    if (users + 64) as u64 > nofile {
        bail!("{users} users need more open files than the limit of {nofile}");
    }
    Ok(match chatroom {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("chatroom"),
    })
}

/// What every loop saw, merged at the end of a run.
struct Finished {
    /// Counters and histograms of all loops.
    counters: Counters,
    /// Every acknowledged send.
    acks: Vec<tally::Ack>,
    /// What each user saw, by user id and conversation.
    seen: HashMap<u64, HashMap<ConversationId, Seen>>,
    /// Users brought back with `Resume`: when each was lost and when it was back.
    resumed: Vec<(Instant, Instant)>,
}

/// Ends a run: waits (up to 20 s) until no push has arrived for a second, lets every
/// user Sync so that nothing still in flight is missed, then stops the loops and merges
/// what they saw. `ids[i]` is user `i`'s id.
fn finish(loops: &[Handle], ids: &[u64]) -> anyhow::Result<Finished> {
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
    };
    for (l, handle) in loops.iter().enumerate() {
        handle.send(Command::Finish);
        let Reply::Finished(report) = handle.reply() else { bail!("unexpected reply to Finish") };
        done.counters.merge(&report.counters);
        done.acks.extend(report.acks);
        done.resumed.extend(report.resumed);
        let users = (0..ids.len()).filter(|&i| place(i, loops.len()).0 == l);
        for (i, user_seen) in users.zip(report.seen) {
            done.seen.insert(ids[i], user_seen);
        }
    }
    Ok(done)
}

/// Creates one group per member list (its first member creates it, the others join)
/// and returns the groups with their members.
fn make_groups(
    loops: &[Handle],
    member_lists: &[Vec<usize>],
    window: usize,
) -> anyhow::Result<Vec<(GroupId, Vec<usize>)>> {
    if member_lists.is_empty() {
        return Ok(Vec::new());
    }
    let create = member_lists
        .iter()
        .enumerate()
        .map(|(g, members)| {
            (
                members[0],
                "CreateGroup",
                // Public, so that members join without an invitation each: one call
                // per member, as before groups could be private.
                api::CreateGroupRequest { name: format!("bench {g}"), public: true, ..Default::default() }
                    .encode_to_vec(),
            )
        })
        .collect();
    let results = calls(loops, create, window);
    check(&results, "CreateGroup")?;
    let ids: Vec<GroupId> = results
        .into_iter()
        .map(|r| {
            let group = api::CreateGroupResponse::decode(r.expect("checked"))?.group.context("no group")?;
            Ok(GroupId(group.id))
        })
        .collect::<anyhow::Result<_>>()?;
    let joins = member_lists
        .iter()
        .zip(&ids)
        .flat_map(|(members, id)| {
            members[1..]
                .iter()
                .map(move |&u| (u, "JoinGroup", api::JoinGroupRequest { group_id: id.0 }.encode_to_vec()))
        })
        .collect();
    check(&calls(loops, joins, window), "JoinGroup")?;
    Ok(ids.into_iter().zip(member_lists.iter().cloned()).collect())
}
