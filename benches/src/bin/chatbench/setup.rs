//! A run's users made ready: connected, registered unless seeded, logged in, found on
//! their proxies, paired one to one and put in groups for the workload.

use std::time::Instant;

use anyhow::{bail, Context as _};
use benches::os;
use prost::Message as _;
use services::api;
use services::GroupId;

use crate::chat::driver::{Command, Handle, Reply};
use crate::chat::plan::{self, Conversations, Workload};
use crate::chat::system::{Mode, System};
use crate::loops::{calls, check};

/// The users connected, logged in and placed in their conversations.
pub(crate) struct Setup {
    /// Each user's id.
    pub(crate) ids: Vec<u64>,
    /// Each user's session token, from its login.
    pub(crate) tokens: Vec<String>,
    /// The proxy instance each user's presence lease names, where known.
    pub(crate) proxies: Vec<Option<String>>,
    /// Registrations per second, when the users were registered through the gateway.
    pub(crate) registers_per_s: Option<f64>,
    /// Logins per second.
    pub(crate) logins_per_s: f64,
    /// How users were found on proxies.
    pub(crate) pairing: &'static str,
    /// One-to-one pairs (user indexes) and how many span two proxies.
    pub(crate) pairs: Vec<(usize, usize)>,
    pub(crate) cross: usize,
    /// Groups and their members (user indexes).
    pub(crate) groups: Vec<(GroupId, Vec<usize>)>,
    /// Members per group.
    pub(crate) group_size: usize,
    /// Who is in each conversation and where each user sends.
    pub(crate) conversations: Conversations,
    /// The proxies' resident memory before the users connected and after they logged in.
    pub(crate) rss_before: u64,
    pub(crate) rss_after: u64,
}

/// The simulated users' accounts.
pub(crate) struct Accounts<'a> {
    /// Their names, in user order.
    pub(crate) names: &'a [String],
    /// Their common password.
    pub(crate) password: &'a str,
    /// Whether they exist already (seeded into the store) or must register.
    pub(crate) seeded: bool,
}

/// Connects every user, registers them unless seeded, logs them in, and pairs and
/// groups them for `workload`; at most `setup_window` calls in flight.
pub(crate) fn setup(
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
    let rss = || proxy_pids.iter().filter_map(|&pid| Some(os::memory(pid).ok()?.rss_kib)).sum::<u64>();
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
