//! The behaviour every [`Presence`] must have. Each case is a function of a [`Fixture`];
//! `presence_suite!(fixture_fn)` turns every case into a `#[test]` for one
//! implementation.

use std::collections::HashSet;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use services::presence::{Error, Lapsed, Presence};
use services::UserId;

use crate::support::wait_until;

/// A presence table under test, not shared with any other test.
pub trait Fixture {
    /// The table the case works with.
    fn presence(&self) -> &dyn Presence;
}

/// Generates one `#[test]` per case, each with a fresh fixture from `$fixture()`.
macro_rules! presence_suite {
    ($fixture:path) => {
        presence_suite!(@cases $fixture;
            claim_lookup_and_release,
            a_new_claim_replaces_the_old_owner,
            only_the_owner_renews_or_releases,
            renew_all_reports_lost_users,
            reclaim_takes_only_a_lease_nobody_holds,
            lease_lapses_without_renewal,
            renewal_keeps_a_lease_alive,
            zero_ttl_is_refused,
            a_lapsed_lease_is_swept_once_by_one_of_two_sweepers,
            a_renewed_or_released_lease_is_not_swept,
            a_lease_taken_over_by_another_proxy_is_not_swept,
            sweeping_honours_its_limit,
        );
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture = $fixture();
                crate::presence_suite::$case(&fixture);
            }
        )*
    };
}

const LONG: Duration = Duration::from_secs(60);
/// Short enough to wait for, long enough that a loaded machine renews in time.
const SHORT: Duration = Duration::from_millis(500);

fn owners(p: &dyn Presence, users: &[u64]) -> Vec<Option<String>> {
    let ids: Vec<UserId> = users.iter().map(|&u| UserId(u)).collect();
    p.lookup(&ids).unwrap()
}

fn some(owner: &str) -> Option<String> {
    Some(owner.to_owned())
}

pub fn claim_lookup_and_release(f: &dyn Fixture) {
    let p = f.presence();
    assert_eq!(p.lookup(&[]).unwrap(), Vec::<Option<String>>::new());
    assert_eq!(owners(p, &[1]), [None]);
    assert_eq!(p.claim(UserId(1), "proxy-a", LONG).unwrap(), None);
    assert_eq!(p.claim(UserId(2), "proxy-b", LONG).unwrap(), None);
    assert_eq!(p.claim(UserId(3), "proxy-a", LONG).unwrap(), None);
    assert_eq!(
        owners(p, &[3, 99, 1, 2]),
        [some("proxy-a"), None, some("proxy-a"), some("proxy-b")],
        "in the order asked"
    );
    assert_eq!(owners(p, &[2]), [some("proxy-b")]);

    assert!(p.release(UserId(1), "proxy-a").unwrap());
    assert!(!p.release(UserId(1), "proxy-a").unwrap(), "already gone");
    assert!(!p.release(UserId(99), "proxy-a").unwrap());
    assert_eq!(owners(p, &[1, 2, 3]), [None, some("proxy-b"), some("proxy-a")]);
}

pub fn a_new_claim_replaces_the_old_owner(f: &dyn Fixture) {
    let p = f.presence();
    assert_eq!(p.claim(UserId(7), "proxy-a", LONG).unwrap(), None);
    // A second login elsewhere: the caller learns whom to kick.
    assert_eq!(p.claim(UserId(7), "proxy-b", LONG).unwrap(), some("proxy-a"));
    assert_eq!(owners(p, &[7]), [some("proxy-b")]);
    // A second login on the same proxy.
    assert_eq!(p.claim(UserId(7), "proxy-b", LONG).unwrap(), some("proxy-b"));
}

pub fn only_the_owner_renews_or_releases(f: &dyn Fixture) {
    let p = f.presence();
    p.claim(UserId(5), "proxy-a", LONG).unwrap();
    p.claim(UserId(5), "proxy-b", LONG).unwrap();
    // proxy-a lost the user; it can neither keep nor end the new session's lease.
    assert!(!p.renew(UserId(5), "proxy-a", LONG).unwrap());
    assert!(!p.release(UserId(5), "proxy-a").unwrap());
    assert_eq!(owners(p, &[5]), [some("proxy-b")]);
    assert!(p.renew(UserId(5), "proxy-b", LONG).unwrap());
    assert!(!p.renew(UserId(6), "proxy-b", LONG).unwrap(), "no lease to renew");
    assert_eq!(owners(p, &[6]), [None], "renew does not create a lease");
}

pub fn renew_all_reports_lost_users(f: &dyn Fixture) {
    let p = f.presence();
    for u in [1, 2, 3] {
        p.claim(UserId(u), "proxy-a", LONG).unwrap();
    }
    p.claim(UserId(2), "proxy-b", LONG).unwrap();
    let lost = p.renew_all(&[UserId(1), UserId(2), UserId(3), UserId(4)], "proxy-a", LONG).unwrap();
    assert_eq!(lost, [UserId(2), UserId(4)]);
    assert_eq!(p.renew_all(&[], "proxy-a", LONG).unwrap(), []);
    assert_eq!(owners(p, &[1, 2, 3, 4]), [some("proxy-a"), some("proxy-b"), some("proxy-a"), None]);
}

pub fn reclaim_takes_only_a_lease_nobody_holds(f: &dyn Fixture) {
    let p = f.presence();
    assert_eq!(p.reclaim(UserId(1), "proxy-a", LONG).unwrap(), None, "a missing lease is taken");
    assert_eq!(p.reclaim(UserId(1), "proxy-a", LONG).unwrap(), None, "its own lease, again");
    assert_eq!(owners(p, &[1]), [some("proxy-a")]);
    p.claim(UserId(2), "proxy-b", LONG).unwrap();
    assert_eq!(p.reclaim(UserId(2), "proxy-a", LONG).unwrap(), some("proxy-b"));
    assert_eq!(owners(p, &[2]), [some("proxy-b")], "never taken from a live holder");
    // Its own lapsed lease is taken back, and once taken back it is not swept.
    p.claim(UserId(3), "proxy-a", SHORT).unwrap();
    wait_until(SHORT * 10, "the lease lapses", || owners(p, &[3]) == [None]);
    assert_eq!(p.reclaim(UserId(3), "proxy-a", LONG).unwrap(), None);
    assert_eq!(p.sweep_lapsed(1000).unwrap(), [], "taken back, not lapsed");
    assert_eq!(owners(p, &[3]), [some("proxy-a")]);
    // A lease another proxy claimed last is not taken for an older session: not while
    // it lives, not once it lapsed, not once that proxy released it or it was swept.
    p.claim(UserId(5), "proxy-a", LONG).unwrap();
    p.claim(UserId(5), "proxy-b", SHORT).unwrap();
    wait_until(SHORT * 10, "proxy-b's lease lapses", || owners(p, &[5]) == [None]);
    assert_eq!(p.reclaim(UserId(5), "proxy-a", LONG).unwrap(), some("proxy-b"), "lapsed, not swept");
    assert_eq!(sweep_until(p, 1, SHORT * 10), [lapsed(5, "proxy-b")]);
    assert_eq!(p.reclaim(UserId(5), "proxy-a", LONG).unwrap(), some("proxy-b"), "swept");
    p.claim(UserId(6), "proxy-a", LONG).unwrap();
    p.claim(UserId(6), "proxy-b", LONG).unwrap();
    assert!(p.release(UserId(6), "proxy-b").unwrap());
    assert_eq!(p.reclaim(UserId(6), "proxy-a", LONG).unwrap(), some("proxy-b"), "released");
    assert_eq!(owners(p, &[5, 6]), [None, None]);
    // A new login anywhere starts over: the proxy it is on may take its lease back.
    p.claim(UserId(6), "proxy-a", SHORT).unwrap();
    wait_until(SHORT * 10, "the lease lapses", || owners(p, &[6]) == [None]);
    assert_eq!(p.reclaim(UserId(6), "proxy-a", LONG).unwrap(), None);
    assert!(matches!(p.reclaim(UserId(4), "proxy-a", Duration::ZERO), Err(Error::InvalidTtl(_))));
}

pub fn lease_lapses_without_renewal(f: &dyn Fixture) {
    let p = f.presence();
    let claimed = Instant::now();
    p.claim(UserId(1), "proxy-a", SHORT).unwrap();
    p.claim(UserId(2), "proxy-a", LONG).unwrap();
    assert_eq!(owners(p, &[1]), [some("proxy-a")]);
    wait_until(SHORT * 10, "the short lease lapses", || owners(p, &[1]) == [None]);
    let lapsed_after = claimed.elapsed();
    assert!(lapsed_after >= SHORT - Duration::from_millis(20), "lapsed too early: {lapsed_after:?}");
    assert_eq!(owners(p, &[2]), [some("proxy-a")], "the long lease is still there");
    // A lapsed lease can be neither renewed nor released, and a new claim finds nobody.
    assert!(!p.renew(UserId(1), "proxy-a", SHORT).unwrap());
    assert!(!p.release(UserId(1), "proxy-a").unwrap());
    assert_eq!(p.claim(UserId(1), "proxy-b", LONG).unwrap(), None);
}

pub fn renewal_keeps_a_lease_alive(f: &dyn Fixture) {
    let p = f.presence();
    p.claim(UserId(1), "proxy-a", SHORT).unwrap();
    // Renewed at once for longer, the lease outlives its first TTL several times over (a
    // renewal racing a short TTL on a loaded machine would test the machine, not renewal).
    assert_eq!(p.renew_all(&[UserId(1)], "proxy-a", LONG).unwrap(), [], "renewed in time");
    std::thread::sleep(SHORT * 3);
    assert_eq!(owners(p, &[1]), [some("proxy-a")], "the renewal extended the lease");
    // A renewal sets the TTL it is given, so a last short one lets the lease go: the
    // proxy died after it, and the user goes offline once that TTL has passed.
    assert_eq!(p.renew_all(&[UserId(1)], "proxy-a", SHORT).unwrap(), []);
    let died = Instant::now();
    wait_until(SHORT * 20, "the lease of a dead proxy lapses", || owners(p, &[1]) == [None]);
    assert!(died.elapsed() >= SHORT - Duration::from_millis(20), "lapsed before its TTL");
}

pub fn zero_ttl_is_refused(f: &dyn Fixture) {
    let p = f.presence();
    assert!(matches!(p.claim(UserId(1), "proxy-a", Duration::ZERO), Err(Error::InvalidTtl(_))));
    assert!(matches!(p.renew(UserId(1), "proxy-a", Duration::ZERO), Err(Error::InvalidTtl(_))));
    assert!(matches!(p.renew_all(&[UserId(1)], "proxy-a", Duration::ZERO), Err(Error::InvalidTtl(_))));
    assert_eq!(owners(p, &[1]), [None]);
}

/// Sweeps until `n` lapsed leases were handed out (failing after `limit`), and returns
/// them. Sweeping is polled because "lapsed for a lookup" and "due for a sweep" may be a
/// millisecond apart.
fn sweep_until(p: &dyn Presence, n: usize, limit: Duration) -> Vec<Lapsed> {
    let mut swept = Vec::new();
    wait_until(limit, &format!("{n} lapsed leases are swept"), || {
        swept.extend(p.sweep_lapsed(1000).unwrap());
        swept.len() >= n
    });
    swept
}

fn lapsed(user: u64, owner: &str) -> Lapsed {
    Lapsed { user: UserId(user), owner: owner.to_owned() }
}

pub fn a_lapsed_lease_is_swept_once_by_one_of_two_sweepers(f: &dyn Fixture) {
    let p = f.presence();
    let users: Vec<u64> = (1..=40).collect();
    for &u in &users {
        p.claim(UserId(u), if u % 2 == 0 { "proxy-a" } else { "proxy-b" }, SHORT).unwrap();
    }
    p.claim(UserId(99), "proxy-a", LONG).unwrap();
    assert_eq!(p.sweep_lapsed(1000).unwrap(), [], "nothing has lapsed yet");
    // Offline for lookups as soon as the lease lapses, before anyone swept.
    wait_until(SHORT * 10, "the short leases lapse", || owners(p, &users).iter().all(Option::is_none));

    // Two proxies sweep at once, each until everything was handed out to one of them.
    let taken: Mutex<Vec<Vec<Lapsed>>> = Mutex::new(Vec::new());
    let start = Barrier::new(2);
    let total = |taken: &Mutex<Vec<Vec<Lapsed>>>| taken.lock().unwrap().iter().map(Vec::len).sum::<usize>();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut mine = Vec::new();
                start.wait();
                let deadline = Instant::now() + SHORT * 10;
                while total(&taken) + mine.len() < users.len() && Instant::now() < deadline {
                    mine.extend(p.sweep_lapsed(7).unwrap());
                    // Publish as we go, so the other sweeper sees the total grow.
                    taken.lock().unwrap().push(std::mem::take(&mut mine));
                }
            });
        }
    });
    let all: Vec<Lapsed> = taken.into_inner().unwrap().into_iter().flatten().collect();
    let distinct: HashSet<u64> = all.iter().map(|l| l.user.0).collect();
    assert_eq!(all.len(), distinct.len(), "a lease was handed out twice: {all:?}");
    assert_eq!(distinct, users.iter().copied().collect::<HashSet<u64>>(), "every lapsed lease, once");
    for l in &all {
        assert_eq!(l.owner, if l.user.0 % 2 == 0 { "proxy-a" } else { "proxy-b" }, "{l:?}");
    }
    assert_eq!(p.sweep_lapsed(1000).unwrap(), [], "nothing is handed out again");
    assert_eq!(owners(p, &[99]), [some("proxy-a")], "a live lease is not swept");
}

pub fn a_renewed_or_released_lease_is_not_swept(f: &dyn Fixture) {
    let p = f.presence();
    for u in [1, 2, 3, 4] {
        p.claim(UserId(u), "proxy-a", SHORT).unwrap();
    }
    assert!(p.renew(UserId(1), "proxy-a", LONG).unwrap());
    assert_eq!(p.renew_all(&[UserId(2)], "proxy-a", LONG).unwrap(), []);
    assert!(p.release(UserId(3), "proxy-a").unwrap());
    // User 4 lapses; 1 and 2 would have at the same time without their renewal.
    wait_until(SHORT * 10, "the unrenewed lease lapses", || owners(p, &[4]) == [None]);
    assert_eq!(sweep_until(p, 1, SHORT * 10), [lapsed(4, "proxy-a")]);
    assert_eq!(p.sweep_lapsed(1000).unwrap(), [], "renewed and released leases are not swept");
    assert_eq!(owners(p, &[1, 2, 3]), [some("proxy-a"), some("proxy-a"), None]);

    // A renewed lease stays out of every sweep past its first TTL.
    p.claim(UserId(5), "proxy-a", SHORT).unwrap();
    assert_eq!(p.renew_all(&[UserId(5)], "proxy-a", LONG).unwrap(), [], "renewed in time");
    std::thread::sleep(SHORT * 3);
    assert_eq!(p.sweep_lapsed(1000).unwrap(), [], "a renewed lease is not swept");
    assert_eq!(owners(p, &[5]), [some("proxy-a")]);
}

pub fn a_lease_taken_over_by_another_proxy_is_not_swept(f: &dyn Fixture) {
    let p = f.presence();
    // Taken over while live: proxy-a's short lease is gone, proxy-b's long one lives.
    p.claim(UserId(1), "proxy-a", SHORT).unwrap();
    assert_eq!(p.claim(UserId(1), "proxy-b", LONG).unwrap(), some("proxy-a"));
    // Taken again after it lapsed but before anyone swept it: a new login, not a crash.
    p.claim(UserId(2), "proxy-a", SHORT).unwrap();
    // The witness lapses with user 2 and shows that sweeping works meanwhile.
    p.claim(UserId(3), "proxy-a", SHORT).unwrap();
    wait_until(SHORT * 10, "the short leases lapse", || owners(p, &[2, 3]) == [None, None]);
    assert_eq!(p.claim(UserId(2), "proxy-b", LONG).unwrap(), None, "nobody held it");
    assert_eq!(sweep_until(p, 1, SHORT * 10), [lapsed(3, "proxy-a")]);
    assert_eq!(p.sweep_lapsed(1000).unwrap(), []);
    assert_eq!(owners(p, &[1, 2]), [some("proxy-b"), some("proxy-b")]);
    // proxy-b's leases lapse as usual and are its to be swept.
    p.claim(UserId(1), "proxy-b", SHORT).unwrap();
    wait_until(SHORT * 10, "the new lease lapses", || owners(p, &[1]) == [None]);
    assert_eq!(sweep_until(p, 1, SHORT * 10), [lapsed(1, "proxy-b")]);
}

pub fn sweeping_honours_its_limit(f: &dyn Fixture) {
    let p = f.presence();
    for u in 1..=5 {
        p.claim(UserId(u), "proxy-a", SHORT).unwrap();
    }
    wait_until(SHORT * 10, "the leases lapse", || owners(p, &[1, 2, 3, 4, 5]).iter().all(Option::is_none));
    let mut users = HashSet::new();
    wait_until(SHORT * 10, "all five are swept, two at a time", || {
        let batch = p.sweep_lapsed(2).unwrap();
        assert!(batch.len() <= 2, "{batch:?}");
        users.extend(batch.into_iter().map(|l| l.user.0));
        users.len() == 5
    });
    assert_eq!(p.sweep_lapsed(0).unwrap(), []);
}
