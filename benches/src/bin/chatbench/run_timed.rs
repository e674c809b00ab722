//! The timed run, `chatbench` without a subcommand: users set up for a workload, sending
//! for a fixed time, then the check that every acknowledged message arrived exactly once.

use std::time::{Duration, Instant};

use crate::chat::driver::{Command, Handle, Reply, SendPlan};
use crate::chat::report::{Latency, Run};
use crate::chat::system::{self, Mode, Options, Seed, System};
use crate::chat::tally;
use crate::cli::Cli;
use crate::loops::{finish, place, Finished};
use crate::prepare;
use crate::setup::{setup, Accounts, Setup};

/// Runs the timed run: starts (or finds) the system, sets the users up, sends for the
/// given time, and checks what arrived.
pub(crate) fn run(cli: &Cli) -> anyhow::Result<Run> {
    let chatroom = prepare(cli.users, cli.chatroom.as_ref())?;
    let loops_n = cli.loops.max(1);
    let mode = match (cli.server, cli.cluster, cli.standalone) {
        (Some(addr), _, _) => Mode::Server(addr),
        (None, true, _) => Mode::Cluster,
        _ => Mode::Standalone,
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
    let seed = seeded.then(|| Seed { names: names.clone(), password: password.clone(), full_cost: false });

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
