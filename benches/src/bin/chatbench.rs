//! `chatbench`: simulated chat users against the local cluster or the standalone system.
//!
//! It registers and logs in N users through the gateway (each user is one TCP
//! connection, driven from a few mio event loops), pairs users on different proxies for
//! one-to-one messages and puts them in groups, sends for a fixed time at a given rate or
//! as fast as a window of outstanding sends allows, then drains the pushes, has every
//! user `Sync` what it missed, and checks that every acknowledged message reached every
//! recipient exactly once. It exits with status 1 when a message was lost or duplicated.
//!
//! ```text
//! chatbench --cluster --users 1000 --workload direct --duration 20 --rate 2000
//! chatbench --standalone --users 100 --workload group10 --duration 10
//! chatbench --server 127.0.0.1:7979 --state-dir data/cluster --users 100 --workload mixed
//! ```

#[path = "../chat/mod.rs"]
mod chat;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use prost::Message as _;
use rpc_core::Status;
use services::api;
use services::{ConversationId, GroupId};

use chat::driver::{Command, Handle, Job, Reply, SendPlan};
use chat::plan::{self, Conversations, Workload};
use chat::report::{Latency, Run};
use chat::system::{self, Mode, Options, Seed, System};
use chat::tally::{self, Counters, Seen};

/// Chat load generator: logins, one-to-one and group messages, latency, loss.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
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

fn main() {
    let cli = Cli::parse();
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
                let body = api::RegisterRequest { name: name.clone(), password: password.to_owned() };
                (i, "Register", body.encode_to_vec())
            })
            .collect();
        let results = calls(loops, register, cli.setup_window);
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
            let body = api::LoginRequest { name: name.clone(), password: password.to_owned() };
            (i, "Login", body.encode_to_vec())
        })
        .collect();
    let results = calls(loops, login, cli.setup_window);
    check(&results, "Login")?;
    let logins_per_s = n as f64 / started.elapsed().as_secs_f64();
    let rss_after = rss();
    let ids: Vec<u64> = results
        .into_iter()
        .map(|r| {
            let response = api::LoginResponse::decode(r.expect("checked"))?;
            Ok(response.user.map(|u| u.id).unwrap_or_default())
        })
        .collect::<anyhow::Result<_>>()?;
    eprintln!("chatbench: logged in {n} users, {logins_per_s:.1}/s");

    // Which proxy each user is on: the presence lease names it.
    // Which proxy each user is on: a cluster's presence lease names it. Without one,
    // pairs are consecutive connections, which nginx's round robin puts on different
    // proxies, but that cannot be checked.
    let (proxies, pairing) = match system.proxies_of(&ids, &cli.redis) {
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
    let (pairs, cross) = if cli.workload.pairs() { plan::pairs(&order, &proxies) } else { (Vec::new(), 0) };
    let cross = if proxies.iter().any(Option::is_none) { 0 } else { cross };
    let group_size = cli.workload.group_size().map_or(0, |g| g.min(n));
    let member_lists = if group_size > 0 { plan::groups(&order, group_size) } else { Vec::new() };
    let groups = make_groups(loops, &member_lists, cli.setup_window)?;
    if !groups.is_empty() {
        eprintln!("chatbench: {} groups of {group_size} ready", groups.len());
    }
    let conversations = Conversations::new(&ids, &pairs, &groups);

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

    let mut counters = Counters::default();
    let mut acks = Vec::new();
    let mut seen: HashMap<u64, HashMap<ConversationId, Seen>> = HashMap::new();
    for (l, handle) in loops.iter().enumerate() {
        handle.send(Command::Finish);
        let Reply::Finished(report) = handle.reply() else { bail!("unexpected reply to Finish") };
        counters.merge(&report.counters);
        acks.extend(report.acks);
        let users = (0..n).filter(|&i| place(i, loops.len()).0 == l);
        for (i, user_seen) in users.zip(report.seen) {
            seen.insert(ids[i], user_seen);
        }
    }
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
                api::CreateGroupRequest { name: format!("bench {g}") }.encode_to_vec(),
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
