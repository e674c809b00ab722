//! A burst of logins neither grows the standalone system's memory nor starves other
//! users' calls.
//!
//! A test binary of its own: it reads the process's resident memory from
//! `/proc/self/status`, which other tests running beside it would disturb. The system
//! runs in this process, with full-cost (default) argon2id hashes: 19 MiB each, which
//! is what used to pile up (argon2 is built optimised even in debug builds, see the
//! workspace `Cargo.toml`, so a thousand hashes take seconds, not minutes).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rpc_core::client::{self, Channel};
use rpc_core::Code;
use services::api::{self, GatewayClient};
use services::standalone::{self, Standalone};
use services::throttle;

const PASSWORD: &str = "correct horse battery";
const USERS_PER_THREAD: usize = 5;
const THREADS: usize = 4;
const LOGINS: usize = 1000;
/// The bound the system must stay under, with a thousand full-cost hashes behind it.
const MAX_RSS_MIB: u64 = 300;

/// The process's resident set and its peak, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn gateway(system: &Standalone) -> GatewayClient {
    let channel = Channel::connect(system.client_addr(), client::Config::default()).expect("connects");
    // Generous: the calls queue behind the hashes on a loaded two-core machine.
    GatewayClient::new(channel).with_timeout(Duration::from_secs(60))
}

fn login(gateway: &GatewayClient, name: &str, password: &str) -> Result<api::LoginResponse, rpc_core::Error> {
    gateway.login(&api::LoginRequest { name: name.into(), password: password.into(), ..Default::default() })
}

#[test]
fn a_thousand_full_cost_logins_keep_memory_bounded_and_other_calls_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = standalone::Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        // Every login comes from 127.0.0.1 and half of them are wrong: only the hashing
        // is under test here.
        throttle: throttle::Config::unlimited(),
        ..standalone::Config::default()
    };
    assert_eq!(config.hashing, services::auth::Config::default(), "full cost");
    let system = Standalone::start(config).expect("standalone starts");
    let tag = format!("m{:06x}", rand::random::<u32>() & 0xff_ffff);
    let names: Vec<String> = (0..THREADS * USERS_PER_THREAD).map(|i| format!("{tag}.user{i}")).collect();
    let setup = gateway(&system);
    for name in &names {
        let request =
            api::RegisterRequest { name: name.clone(), password: PASSWORD.into(), ..Default::default() };
        setup.register(&request).expect("registers");
    }
    let bystander = format!("{tag}.bystander");
    let request =
        api::RegisterRequest { name: bystander.clone(), password: PASSWORD.into(), ..Default::default() };
    setup.register(&request).expect("registers");
    let watcher = gateway(&system);
    login(&watcher, &bystander, PASSWORD).expect("the bystander logs in");
    let (before, _) = rss_kib();

    let bursting = AtomicBool::new(true);
    let served = AtomicUsize::new(0);
    let wrong = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|scope| {
        // Another user's calls, on the same user service, while the logins hash: each
        // one must be answered.
        let bystander_calls = scope.spawn(|| {
            let mut n = 0usize;
            while bursting.load(Ordering::SeqCst) {
                let request = api::FindUserRequest { name: names[n % names.len()].clone(), user_id: 0 };
                let found =
                    watcher.find_user(&request).expect("another user's call is served during the burst");
                assert!(found.user.is_some());
                served.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        });
        let logins: Vec<_> = (0..THREADS)
            .map(|t| {
                let (system, names, wrong) = (&system, &names, wrong.clone());
                scope.spawn(move || {
                    let gateway = gateway(system);
                    for i in 0..LOGINS / THREADS {
                        let name = &names[t * USERS_PER_THREAD + i % USERS_PER_THREAD];
                        if i % 2 == 0 {
                            let error =
                                login(&gateway, name, "not the password").expect_err("a wrong password");
                            assert_eq!(error.code(), Code::Unauthenticated, "{error}");
                            wrong.fetch_add(1, Ordering::Relaxed);
                        } else {
                            login(&gateway, name, PASSWORD).expect("the right password");
                        }
                    }
                })
            })
            .collect();
        for handle in logins {
            handle.join().expect("a login thread failed");
        }
        bursting.store(false, Ordering::SeqCst);
        bystander_calls.join().expect("the bystander's calls failed");
    });

    let (after, peak) = rss_kib();
    eprintln!(
        "{LOGINS} logins ({} wrong) at full cost: RSS {} MiB before, {} MiB after, peak {} MiB; \
         {} bystander calls served meanwhile",
        wrong.load(Ordering::Relaxed),
        before / 1024,
        after / 1024,
        peak / 1024,
        served.load(Ordering::SeqCst)
    );
    assert!(served.load(Ordering::SeqCst) > 0, "the bystander's calls were served during the burst");
    assert!(peak / 1024 < MAX_RSS_MIB, "peak RSS {} MiB over {MAX_RSS_MIB} MiB", peak / 1024);
    assert!(after / 1024 < MAX_RSS_MIB, "RSS {} MiB over {MAX_RSS_MIB} MiB", after / 1024);
    system.shutdown();
}
