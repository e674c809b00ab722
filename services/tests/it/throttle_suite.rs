//! The behaviour every [`Throttle`] must have, run against the in-memory counters and
//! Redis (at `CHATROOM_REDIS_URL`, each test under a key prefix of its own whose keys
//! are deleted after it). `throttle_suite!(fixture_fn)` turns every case into a
//! `#[test]` for one implementation.

use std::sync::Barrier;
use std::time::Duration;

use services::throttle::{self, Backoff, Bucket, Throttle};

use crate::support::{delete_redis_keys, redis_keys, redis_url, unique_name, unreachable, wait_until};

/// Generates one `#[test]` per case, each with fresh counters from `$fixture()`.
macro_rules! throttle_suite {
    ($fixture:path) => {
        throttle_suite!(@cases $fixture;
            backoff_waits_after_the_free_failures_and_doubles,
            concurrent_attempts_cannot_slip_past_the_count,
            a_bucket_refuses_past_its_burst_until_a_token_is_back,
            a_token_given_back_never_overfills_the_bucket,
            counters_are_forgotten_after_their_time,
        );
    };
    (@cases $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let fixture = $fixture();
                crate::throttle_suite::$case(fixture.as_ref());
            }
        )*
    };
}

const FOREVER: Duration = Duration::from_secs(3600);

pub fn backoff_waits_after_the_free_failures_and_doubles(t: &dyn Throttle) {
    let backoff =
        Backoff { free_failures: 2, base: Duration::from_millis(300), cap: Duration::from_secs(10) };
    for attempt in 1..=3 {
        assert_eq!(
            t.begin_attempt("a", &backoff, FOREVER).unwrap(),
            None,
            "attempt {attempt} is let through"
        );
    }
    let wait = t.begin_attempt("a", &backoff, FOREVER).unwrap().expect("the fourth must wait");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(300), "{wait:?}");
    assert_eq!(t.begin_attempt("b", &backoff, FOREVER).unwrap(), None, "other keys are not held up");
    wait_until(Duration::from_secs(10), "the back-off lets an attempt through", || {
        t.begin_attempt("a", &backoff, FOREVER).unwrap().is_none()
    });
    let doubled = t.begin_attempt("a", &backoff, FOREVER).unwrap().expect("waits again");
    assert!(doubled > Duration::from_millis(300) && doubled <= Duration::from_millis(600), "{doubled:?}");
    t.reset("a").unwrap();
    assert_eq!(t.begin_attempt("a", &backoff, FOREVER).unwrap(), None, "a success clears it");
}

pub fn concurrent_attempts_cannot_slip_past_the_count(t: &dyn Throttle) {
    let backoff = Backoff { free_failures: 3, base: Duration::from_secs(60), cap: Duration::from_secs(60) };
    let barrier = Barrier::new(20);
    let admitted = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    t.begin_attempt("contested", &backoff, FOREVER).unwrap().is_none()
                })
            })
            .collect();
        threads.into_iter().map(|h| h.join().unwrap()).filter(|&admitted| admitted).count()
    });
    assert_eq!(admitted, 4, "the free failures and the one that starts the wait");
}

pub fn a_bucket_refuses_past_its_burst_until_a_token_is_back(t: &dyn Throttle) {
    let bucket = Bucket { burst: 3, every: Duration::from_millis(300) };
    for n in 1..=3 {
        assert_eq!(t.take("addr", &bucket, FOREVER).unwrap(), None, "token {n}");
    }
    let wait = t.take("addr", &bucket, FOREVER).unwrap().expect("empty");
    assert!(wait > Duration::ZERO && wait <= Duration::from_millis(300), "{wait:?}");
    assert_eq!(t.take("other", &bucket, FOREVER).unwrap(), None, "other keys are not held up");
    wait_until(Duration::from_secs(10), "a token comes back", || {
        t.take("addr", &bucket, FOREVER).unwrap().is_none()
    });
    assert!(t.take("addr", &bucket, FOREVER).unwrap().is_some(), "one token, not the burst");
    t.give_back("addr", &bucket, FOREVER).unwrap();
    assert_eq!(t.take("addr", &bucket, FOREVER).unwrap(), None, "the token given back");
}

pub fn a_token_given_back_never_overfills_the_bucket(t: &dyn Throttle) {
    let bucket = Bucket { burst: 2, every: Duration::from_secs(60) };
    for _ in 0..5 {
        t.give_back("full", &bucket, FOREVER).unwrap();
    }
    assert_eq!(t.take("full", &bucket, FOREVER).unwrap(), None);
    for _ in 0..5 {
        t.give_back("full", &bucket, FOREVER).unwrap();
    }
    assert_eq!(t.take("full", &bucket, FOREVER).unwrap(), None);
    assert_eq!(t.take("full", &bucket, FOREVER).unwrap(), None);
    assert!(t.take("full", &bucket, FOREVER).unwrap().is_some(), "burst 2, however many were given back");
}

pub fn counters_are_forgotten_after_their_time(t: &dyn Throttle) {
    let backoff =
        Backoff { free_failures: 0, base: Duration::from_millis(100), cap: Duration::from_secs(10) };
    let forget = Duration::from_millis(200);
    assert_eq!(t.begin_attempt("once", &backoff, forget).unwrap(), None);
    assert!(t.begin_attempt("once", &backoff, forget).unwrap().is_some());
    // Past the wait (100 ms) and the forgetting (200 ms) the count starts over: the wait
    // after the next attempt is the base again, not doubled.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(t.begin_attempt("once", &backoff, forget).unwrap(), None);
    let wait = t.begin_attempt("once", &backoff, forget).unwrap().expect("waits");
    assert!(wait <= Duration::from_millis(100), "forgotten, so not doubled: {wait:?}");
}

/// In-memory counters.
pub fn memory() -> Box<dyn Throttle> {
    Box::new(throttle::Memory::new())
}

/// Redis counters under a fresh key prefix, whose keys are deleted on drop.
pub struct RedisFixture {
    /// The counters.
    throttle: throttle::Redis,
    /// The test's keys all start with this.
    prefix: String,
    /// For cleaning up.
    url: String,
}

impl RedisFixture {
    /// The test's keys with their time to live in ms.
    pub fn keys(&self) -> Vec<(String, i64)> {
        let keys = redis_keys(&self.url, &self.prefix).unwrap();
        let mut conn = redis::Client::open(self.url.as_str()).unwrap().get_connection().unwrap();
        keys.into_iter()
            .map(|k| {
                let ttl = redis::cmd("PTTL").arg(&k).query(&mut conn).unwrap();
                (k, ttl)
            })
            .collect()
    }
}

impl AsRef<dyn Throttle> for RedisFixture {
    fn as_ref(&self) -> &(dyn Throttle + 'static) {
        &self.throttle
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        delete_redis_keys(&self.url, &self.prefix);
    }
}

pub fn redis() -> RedisFixture {
    let url = redis_url();
    let prefix = format!("{}:", unique_name("chatroom:test:throttle"));
    let config =
        throttle::redis::Config { url: url.clone(), key_prefix: prefix.clone(), ..Default::default() };
    let throttle = throttle::Redis::with_config(&config).unwrap_or_else(|e| unreachable("Redis", &url, &e));
    RedisFixture { throttle, prefix, url }
}

mod in_memory {
    throttle_suite!(crate::throttle_suite::memory);
}

mod in_redis {
    use std::time::Duration;

    use services::throttle::{Backoff, Bucket, Throttle};

    throttle_suite!(crate::throttle_suite::redis);

    #[test]
    fn every_counter_is_a_prefixed_key_that_expires() {
        let f = crate::throttle_suite::redis();
        let t: &dyn Throttle = f.as_ref();
        let forget = Duration::from_secs(60);
        t.take("login:192.0.2.1", &Bucket { burst: 5, every: Duration::from_secs(1) }, forget).unwrap();
        let backoff = Backoff { free_failures: 0, base: Duration::from_secs(2), cap: Duration::from_secs(2) };
        t.begin_attempt("account:alice", &backoff, forget).unwrap();
        let mut keys = f.keys();
        keys.sort();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys[0].0.ends_with(":account:alice"), "{keys:?}");
        assert!(keys[1].0.ends_with(":login:192.0.2.1"), "{keys:?}");
        // The back-off lives its wait (2 s) plus the forgetting; the bucket until full
        // (1 s) plus the forgetting.
        assert!(keys[0].1 > 60_000 && keys[0].1 <= 62_000, "{keys:?}");
        assert!(keys[1].1 > 59_000 && keys[1].1 <= 61_000, "{keys:?}");
        t.reset("account:alice").unwrap();
        assert_eq!(f.keys().len(), 1);
    }
}
