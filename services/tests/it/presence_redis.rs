//! The presence suite against [`Redis`] at `CHATROOM_REDIS_URL`, each test under a key
//! prefix of its own, whose keys are deleted after it.

use std::time::Duration;

use services::presence::redis::Config;
use services::presence::{Error, Presence, Redis};
use services::UserId;

use crate::presence_suite::Fixture;
use crate::support::{delete_redis_keys, redis_keys, redis_url, unique_name, unreachable};

/// A table under a fresh key prefix.
struct RedisFixture {
    /// The table the test uses.
    presence: Redis,
    /// The test's keys all start with this.
    prefix: String,
    /// For cleaning up.
    url: String,
}

fn fixture() -> RedisFixture {
    let url = redis_url();
    let prefix = format!("{}:", unique_name("chatroom:test"));
    let presence =
        Redis::with_config(&Config { url: url.clone(), key_prefix: prefix.clone(), ..Config::default() })
            .unwrap_or_else(|e| unreachable("Redis", &url, &e));
    RedisFixture { presence, prefix, url }
}

impl Fixture for RedisFixture {
    fn presence(&self) -> &dyn Presence {
        &self.presence
    }
}

impl RedisFixture {
    fn keys(&self) -> Vec<String> {
        redis_keys(&self.url, &self.prefix).unwrap()
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        delete_redis_keys(&self.url, &self.prefix);
    }
}

presence_suite!(fixture);

#[test]
fn leases_are_prefixed_keys_with_an_expiry_and_a_schedule() {
    let f = fixture();
    f.presence.claim(UserId(42), "proxy-a", Duration::from_secs(30)).unwrap();
    let mut keys = f.keys();
    keys.sort();
    let [expiries, owners, lease] = ["expiries", "owners", "user:42"].map(|k| format!("{}{k}", f.prefix));
    // The claim's answer is kept under a key of its own call, for a retry of that call.
    let memo = keys.first().cloned().unwrap_or_default();
    assert!(memo.starts_with(&format!("{}call:42:", f.prefix)), "{keys:?}");
    assert_eq!(keys, [memo.clone(), expiries.clone(), owners.clone(), lease.clone()]);
    let client = redis::Client::open(f.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&lease).query(&mut conn).unwrap();
    assert!((29_000..=30_000).contains(&ttl_ms), "{ttl_ms}");
    let owner: String = redis::cmd("GET").arg(&lease).query(&mut conn).unwrap();
    assert_eq!(owner, "proxy-a");
    // The schedule says when the lease lapses, on the server's clock.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let due: f64 = redis::cmd("ZSCORE").arg(&expiries).arg("42").query(&mut conn).unwrap();
    assert!((now_ms + 29_000..=now_ms + 30_000).contains(&(due as u64)), "{due} vs now {now_ms}");
    let last: String = redis::cmd("HGET").arg(&owners).arg("42").query(&mut conn).unwrap();
    assert_eq!(last, "proxy-a");
    // A release leaves behind the calls' answers, kept for a retry for a minute, and
    // its last holder, kept for five (so that no older session takes the lease back).
    assert!(f.presence.release(UserId(42), "proxy-a").unwrap());
    let mut left = f.keys();
    left.sort();
    let gone = format!("{}gone:42", f.prefix);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|k| k.starts_with(&format!("{}call:42:", f.prefix)) || *k == gone), "{left:?}");
    for key in &left {
        let ms: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        let most = if *key == gone { 300_000 } else { 60_000 };
        assert!((0..=most).contains(&ms), "{key}: {ms}");
    }
    let last: String = redis::cmd("GET").arg(&gone).query(&mut conn).unwrap();
    assert_eq!(last, "proxy-a");
}

#[test]
fn a_due_entry_whose_lease_key_lives_is_rescheduled_not_swept() {
    let f = fixture();
    f.presence.claim(UserId(7), "proxy-a", Duration::from_secs(30)).unwrap();
    let client = redis::Client::open(f.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let expiries = format!("{}expiries", f.prefix);
    // As if the schedule and the key's expiry disagreed: the key decides.
    redis::cmd("ZADD").arg(&expiries).arg(0).arg("7").query::<()>(&mut conn).unwrap();
    assert_eq!(f.presence.sweep_lapsed(100).unwrap(), []);
    let due: f64 = redis::cmd("ZSCORE").arg(&expiries).arg("7").query(&mut conn).unwrap();
    let (secs, _micros): (u64, u64) = redis::cmd("TIME").query(&mut conn).unwrap();
    assert!(due as u64 > secs * 1000 + 25_000, "rescheduled at the key's expiry: {due}");
    assert_eq!(f.presence.lookup(&[UserId(7)]).unwrap(), [Some("proxy-a".to_owned())]);
}

#[test]
fn unreachable_server_is_reported_as_unavailable() {
    let err = Redis::open("redis://127.0.0.1:1/").unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
}
