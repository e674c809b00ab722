//! `chatbench soak`: a cluster under steady mixed traffic, sampled until the end, and
//! the verdict on what grew.

use super::*;

/// Runs `chatbench soak`: starts a cluster with seeded users, runs the traffic while
/// sampling, and prints the trends. True when nothing grew past its limit and the
/// traffic flowed.
pub(crate) fn soak(args: &SoakArgs) -> anyhow::Result<bool> {
    let chatroom = prepare(args.users, args.chatroom.as_ref())?;
    let options = Options {
        mode: Mode::Cluster,
        chatroom,
        proxies: args.proxies,
        user_services: args.user_services,
        chat_services: args.chat_services,
        mysql_server: args.mysql_server.clone(),
        state_dir: None,
    };
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let names: Vec<String> = (0..args.users).map(|i| format!("cs{run_id}u{i}")).collect();
    let password = format!("chatbench-{run_id}");
    let seed = Seed { names: names.clone(), password: password.clone(), full_cost: false };
    eprintln!("chatbench: soak: starting a cluster and seeding {} users", args.users);
    let system = System::start(&options, Some(&seed))?;
    let describe = system.describe(&options);
    let loops_n = args.loops.max(1);
    let loops: Vec<Handle> = (0..loops_n)
        .map(|l| Handle::spawn(l, (0..args.users).filter(|&i| place(i, loops_n).0 == l).count()))
        .collect::<Result<_, _>>()?;
    let run = soak_traffic(args, &system, &loops, &names, &password);
    drop(loops);
    drop(system);
    soak_verdict(args, &describe, args.users, &run?)
}

/// What a soak saw.
struct SoakRun {
    /// Every sample, the first when the traffic started.
    samples: Vec<Sample>,
    /// The event loops' counters, merged.
    counters: Counters,
    /// Calls still unanswered when the loops gave up waiting.
    unanswered: usize,
}

/// Logs the users in, makes each pair friends, runs the traffic and samples until the
/// end.
fn soak_traffic(
    args: &SoakArgs,
    system: &System,
    loops: &[Handle],
    names: &[String],
    password: &str,
) -> anyhow::Result<SoakRun> {
    let n = names.len();
    let accounts = Accounts { names, password, seeded: true };
    let setup = setup(system, loops, &accounts, Workload::Mixed, 32, &args.redis)?;
    // Pairs are friends, so that logging out and in announces presence to someone.
    let befriend = setup
        .pairs
        .iter()
        .map(|&(a, b)| {
            let friend = Some(api::add_friend_request::Friend::UserId(setup.ids[b]));
            (a, "AddFriend", api::AddFriendRequest { friend }.encode_to_vec())
        })
        .collect();
    check(&calls(loops, befriend, 32), "AddFriend")?;

    let (state_dir, database) = system.cluster().context("a soak runs on the cluster it starts")?;
    let processes = system::with_nginx_workers(system.processes());
    let targets = soaking::cluster_targets(state_dir, processes, &args.mysql_server, database, &args.redis)?;
    let mut probe = Probe::new(targets);

    let acked = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(args.duration);
    let share = |total: f64| total / loops.len() as f64;
    for (l, handle) in loops.iter().enumerate() {
        let users: Vec<usize> = (0..n).filter(|&i| place(i, loops.len()).0 == l).collect();
        handle.send(Command::Soak(SoakPlan {
            ids: users.iter().map(|&i| setup.ids[i]).collect(),
            names: users.iter().map(|&i| names[i].clone()).collect(),
            password: password.to_owned(),
            sends: users.iter().map(|&i| setup.conversations.sends[i].clone()).collect(),
            rate: share(args.rate),
            reads: share(args.reads),
            churn: share(args.churn),
            offline: Duration::from_secs_f64(args.offline),
            end,
            in_flight: args.in_flight.div_ceil(loops.len()),
            body_bytes: args.body_bytes.max(16),
            acked: acked.clone(),
        }));
    }
    eprintln!(
        "chatbench: soak: {} s of traffic ({} msg/s, {} reads/s, {} logouts/s), samples every {} s",
        args.duration, args.rate, args.reads, args.churn, args.sample_every
    );

    let mut samples: Vec<Sample> = Vec::new();
    let every = Duration::from_secs_f64(args.sample_every.max(1.0));
    let mut next = start;
    loop {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let at_s = Instant::now().saturating_duration_since(start).as_secs_f64();
        let sample = probe.sample(at_s, acked.load(Ordering::Relaxed));
        eprintln!("chatbench: soak: {}", progress(&sample));
        samples.push(sample);
        if next >= end {
            break;
        }
        next = (next + every).min(end);
    }

    let mut unanswered = 0;
    for handle in loops {
        match handle.reply() {
            Reply::Soaked(left) => unanswered += left,
            _ => bail!("unexpected reply to Soak"),
        }
    }
    let mut counters = Counters::default();
    for handle in loops {
        handle.send(Command::Finish);
        let Reply::Finished(report) = handle.reply() else { bail!("unexpected reply to Finish") };
        counters.merge(&report.counters);
    }
    Ok(SoakRun { samples, counters, unanswered })
}

/// Fits the trends after the warm-up, prints the run and the tables, and says whether
/// the soak passed: nothing grew past its limit, messages flowed, and at most 1% of
/// the calls failed.
fn soak_verdict(args: &SoakArgs, describe: &str, n: usize, run: &SoakRun) -> anyhow::Result<bool> {
    let SoakRun { samples, counters, unanswered } = run;
    let after: Vec<Sample> = samples.iter().filter(|s| s.at_s >= args.warmup).cloned().collect();
    if let Some(path) = &args.csv {
        std::fs::write(path, soaking::csv(samples))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let limits = Limits { memory_mib: args.max_mib, count: args.max_count };
    let trends = soaking::trends(&after, limits)?;

    let first = after.first().expect("trends checked");
    let last = after.last().expect("trends checked");
    let seconds = samples.last().map_or(0.0, |s| s.at_s).max(1e-9);
    let latency = Latency::of(&counters.latency);
    println!("soak      {describe}; {n} users, each in a pair of friends and a group of 10");
    println!("command   {}", std::env::args().collect::<Vec<_>>().join(" "));
    println!(
        "run       {:.0} s of traffic, warm-up {:.0} s, {} samples ({} after the warm-up)",
        seconds,
        args.warmup,
        samples.len(),
        after.len()
    );
    println!(
        "traffic   {} messages acknowledged ({:.0}/s), {} after the warm-up; {} pushed, {} recovered by Sync",
        counters.acked,
        counters.acked as f64 / seconds,
        last.messages - first.messages,
        counters.delivered,
        counters.from_sync
    );
    println!(
        "calls     {} logouts, {} logins, {} presence pushes, {} History, {} Sync, {} Ack",
        counters.logouts,
        counters.logins,
        counters.presence,
        counters.histories,
        counters.syncs,
        counters.read_acks
    );
    println!(
        "latency   send->push p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
        latency.p50, latency.p99, latency.p999, latency.max
    );
    println!(
        "failures  {} sends failed, {} retried, {} other calls failed, {} disconnects, {} unanswered at the end",
        counters.failed, counters.retries, counters.calls_failed, counters.disconnects, unanswered
    );
    for (what, count) in &counters.errors {
        println!("          {count} x {what}");
    }
    println!("\n{}", soaking::process_table(&trends));
    println!("{}", soaking::backend_table(&trends));

    let mut problems: Vec<String> = trends
        .iter()
        .filter(|t| t.failed)
        .map(|t| {
            let limit = match t.metric.limit {
                soaking::Limit::Memory => args.max_mib,
                _ => args.max_count,
            };
            format!(
                "{} {} grows {:+.2} per 100k messages (limit {limit})",
                t.metric.owner, t.metric.what, t.per_100k
            )
        })
        .collect();
    if counters.acked == 0 {
        problems.push("no message was acknowledged".into());
    }
    let calls = counters.sent
        + counters.logins
        + counters.logouts
        + counters.histories
        + counters.syncs
        + counters.read_acks;
    let failed = counters.failed + counters.calls_failed;
    if failed * 100 > calls {
        problems.push(format!("{failed} of {calls} calls failed"));
    }
    if problems.is_empty() {
        println!(
            "verdict   OK: nothing grew past {} MiB or {} per 100k messages",
            args.max_mib, args.max_count
        );
        Ok(true)
    } else {
        for p in &problems {
            println!("verdict   FAILED: {p}");
        }
        Ok(false)
    }
}

/// One line on a sample: time, messages, and each process's RSS.
fn progress(sample: &Sample) -> String {
    let rss: Vec<String> = sample
        .values
        .iter()
        .filter(|(m, _)| m.what == soaking::RSS)
        .map(|(m, v)| format!("{} {v:.1}", m.owner))
        .collect();
    format!("{:.0} s, {} msgs; RSS MiB: {}", sample.at_s, sample.messages, rss.join(", "))
}
