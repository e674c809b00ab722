//! `chatbench storm`: one of two proxies killed under load, its users back with `Resume`.

use super::*;

/// Runs `chatbench storm`: a cluster of two proxies with seeded users, all logged in;
/// the users of one proxy chat in pairs while the other proxy is killed with SIGKILL and
/// its users come back with `Resume`. True when every one of them came back and no
/// acknowledged message was lost or duplicated.
pub(crate) fn storm(args: &StormArgs) -> anyhow::Result<bool> {
    let chatroom = prepare(args.users, args.chatroom.as_ref())?;
    let options = Options {
        mode: Mode::Cluster,
        chatroom,
        proxies: 2,
        user_services: 2,
        chat_services: 2,
        mysql_server: args.mysql_server.clone(),
        state_dir: None,
    };
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let names: Vec<String> = (0..args.users).map(|i| format!("cx{run_id}u{i}")).collect();
    let password = format!("chatbench-{run_id}");
    let seed = Seed { names: names.clone(), password: password.clone(), full_cost: !args.cheap_hash };
    eprintln!("chatbench: storm: starting a cluster and seeding {} users", args.users);
    let system = System::start(&options, Some(&seed))?;
    let loops_n = args.loops.max(1);
    let loops: Vec<Handle> = (0..loops_n)
        .map(|l| Handle::spawn(l, (0..args.users).filter(|&i| place(i, loops_n).0 == l).count()))
        .collect::<Result<_, _>>()?;
    let outcome = storm_run(args, &system, &loops, &names, &password);
    drop(loops);
    drop(system);
    outcome
}

fn storm_run(
    args: &StormArgs,
    system: &System,
    loops: &[Handle],
    names: &[String],
    password: &str,
) -> anyhow::Result<bool> {
    let n = names.len();
    let accounts = Accounts { names, password, seeded: true };
    let setup = setup(system, loops, &accounts, Workload::Direct, args.setup_window, &args.redis)?;
    let (state_dir, _) = system.cluster().context("a storm runs on the cluster it starts")?;
    let state = chatroom::cluster::read_state(state_dir)?;
    let victim = state.processes.iter().find(|p| p.role == "proxy").context("the cluster has a proxy")?;
    let victim_id = victim.instance_id.clone().context("a proxy has an instance id")?;
    let gone: Vec<bool> = setup.proxies.iter().map(|p| p.as_deref() == Some(victim_id.as_str())).collect();
    let survivors: Vec<usize> = (0..n).filter(|&i| !gone[i]).collect();
    let victims = n - survivors.len();
    if victims == 0 || survivors.len() < 2 {
        bail!("nginx put {victims} of {n} users on {victim_id}; a storm needs users on both proxies");
    }
    // The survivors chat in pairs among themselves; the victims only come back.
    let pairs: Vec<(usize, usize)> = survivors.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let conversations = Conversations::new(&setup.ids, &pairs, &[]);
    for (l, handle) in loops.iter().enumerate() {
        let users = (0..n).filter(|&i| place(i, loops.len()).0 == l);
        let tokens = users
            .map(|i| if gone[i] && !args.no_resume { setup.tokens[i].clone() } else { String::new() })
            .collect();
        handle.send(Command::Resume(ResumePlan { addr: system.addr, tokens }));
    }
    for handle in loops {
        if !matches!(handle.reply(), Reply::Resuming) {
            bail!("unexpected reply to Resume");
        }
    }

    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(args.duration);
    for (l, handle) in loops.iter().enumerate() {
        let users: Vec<usize> = (0..n).filter(|&i| place(i, loops.len()).0 == l).collect();
        handle.send(Command::Send(SendPlan {
            ids: users.iter().map(|&i| setup.ids[i]).collect(),
            sends: users.iter().map(|&i| conversations.sends[i].clone()).collect(),
            rate: args.rate / loops.len() as f64,
            start,
            end,
            in_flight: args.in_flight.div_ceil(loops.len()),
            body_bytes: 64,
        }));
    }
    eprintln!(
        "chatbench: storm: {} users on {victim_id} (pid {}), {} on the other; sending for {} s, kill at {} s",
        victims,
        victim.pid,
        survivors.len(),
        args.duration,
        args.kill_after
    );
    std::thread::sleep(
        (start + Duration::from_secs_f64(args.kill_after)).saturating_duration_since(Instant::now()),
    );
    let killed_at = Instant::now();
    let killed_micros = tally::now_micros();
    let killed = std::process::Command::new("kill").arg("-KILL").arg(victim.pid.to_string()).status();
    if !killed.is_ok_and(|s| s.success()) {
        bail!("kill -KILL {} failed", victim.pid);
    }
    for handle in loops {
        handle.reply();
    }
    let Finished { counters, acks, seen, resumed, first_reconnect } = finish(loops, &setup.ids)?;
    let verdict = tally::verdict(acks.iter(), &conversations.members, |user, c| seen.get(&user)?.get(&c));
    let back: Vec<Duration> =
        resumed.iter().map(|&(_, back)| back.saturating_duration_since(killed_at)).collect();
    let dup = verdict.dup + counters.dup;
    print_storm(n, victims, &back, &counters, verdict.lost, dup);
    let timeline = counters.timeline.as_deref().unwrap_or_default();
    // Without resumes the storm is the kill and what follows until the sending ends.
    let storm_end = match back.iter().max() {
        Some(last) => killed_micros + last.as_micros() as u64,
        None => u64::MAX,
    };
    let until = match storm_end {
        u64::MAX => "until the end".to_owned(),
        end => format!("until the last user was back (+{:.1} s)", (end - killed_micros) as f64 / 1e6),
    };
    print_during("during", &format!("from the kill {until}"), timeline, killed_micros, storm_end);
    if let Some(first) = first_reconnect {
        // The crash's own teardown (the kernel, nginx and the clients closing thousands of
        // connections) comes before anyone reconnects; the reconnect storm after it.
        let first = killed_micros + first.saturating_duration_since(killed_at).as_micros() as u64;
        let at = (first - killed_micros) as f64 / 1e6;
        print_during(
            "crash",
            &format!("from the kill until the first reconnect (+{at:.1} s)"),
            timeline,
            killed_micros,
            first,
        );
        print_during("reconnect", &format!("from the first reconnect {until}"), timeline, first, storm_end);
    }
    print_timeline(timeline, killed_micros);
    let all_back = back.len() == if args.no_resume { 0 } else { victims };
    Ok(all_back && verdict.lost == 0 && dup == 0 && counters.acked > 0)
}

/// Prints what a storm saw: who came back when (`back`, from the kill), the other users'
/// latency, the check, and the commonest errors.
fn print_storm(n: usize, victims: usize, back: &[Duration], counters: &Counters, lost: u64, dup: u64) {
    let mut back_ms: Vec<f64> = back.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    back_ms.sort_by(f64::total_cmp);
    let at = |q: f64| back_ms.get(((back_ms.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    let latency = Latency::of(&counters.latency);
    println!("storm     {n} users: {victims} on the killed proxy, {} on the other", n - victims);
    println!(
        "back      {} of {victims} resumed and synced ({} saw nothing missed and needed no Sync); after the kill: p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms",
        back_ms.len(),
        counters.resumed_without_sync,
        at(0.5).unwrap_or(f64::NAN),
        at(0.99).unwrap_or(f64::NAN),
        back_ms.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "others    {} messages acknowledged, {} delivered; send-to-push p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        counters.acked, counters.delivered, latency.p50, latency.p99, latency.p999
    );
    println!("check     {lost} lost, {dup} duplicated, {} failed sends", counters.failed);
    let mut errors: Vec<_> = counters.errors.iter().collect();
    errors.sort_by(|a, b| b.1.cmp(a.1));
    for (what, count) in errors.iter().take(5) {
        println!("error     {count} x {what}");
    }
}

/// The send-to-push latency of `samples` (microseconds), as the whole run's is reported.
fn latency_of(samples: impl Iterator<Item = u64>) -> Latency {
    let mut histogram = tally::histogram();
    for latency in samples {
        histogram.saturating_record(latency);
    }
    Latency::of(&histogram)
}

/// Prints the other users' send-to-push latency by the half second they sent in, counted
/// from the kill (`killed`, in `tally::now_micros` time): where in the storm they waited.
fn print_timeline(timeline: &[(u64, u64)], killed: u64) {
    const STEP: i64 = 500_000;
    let mut by_step: std::collections::BTreeMap<i64, Vec<u64>> = std::collections::BTreeMap::new();
    for &(sent, latency) in timeline {
        let from_kill = i64::try_from(sent).unwrap_or(i64::MAX) - i64::try_from(killed).unwrap_or(i64::MAX);
        by_step.entry(from_kill.div_euclid(STEP)).or_default().push(latency);
    }
    for (step, latencies) in by_step {
        let l = latency_of(latencies.into_iter());
        println!(
            "timeline  sent at {:+5.1} s from the kill: {:4} pushed, p50 {:6.1} ms, p99 {:6.1} ms, max {:6.1} ms",
            (step * STEP) as f64 / 1e6,
            l.count,
            l.p50,
            l.p99,
            l.max,
        );
    }
}

/// Prints, as line `label`, the other users' send-to-push latency for what they sent
/// from `from` to `to` (`tally::now_micros` time), described by `when`.
fn print_during(label: &str, when: &str, timeline: &[(u64, u64)], from: u64, to: u64) {
    let during = timeline.iter().filter(|&&(sent, _)| sent >= from && sent <= to);
    let l = latency_of(during.map(|&(_, latency)| latency));
    if l.count == 0 {
        return;
    }
    println!(
        "{label:<9} sent {when}: {} pushed, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms",
        l.count, l.p50, l.p99, l.p999,
    );
}
