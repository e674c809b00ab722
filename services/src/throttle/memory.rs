//! [`Throttle`] counters in this process's memory, for the standalone mode and tests.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{backoff_wait, Backoff, Bucket, Error, Throttle};

/// Counters kept at most this many at once by default (a few MiB); past it, forgotten
/// ones are dropped first, then the tenth closest to being forgotten, so that a flood
/// of made-up names cannot grow the map without bound.
pub const MAX_ENTRIES: usize = 100_000;

/// Counters in a map under a mutex, each with the time it is forgotten.
#[derive(Debug)]
pub struct Memory {
    /// Counters by key.
    entries: Mutex<HashMap<String, Entry>>,
    /// The most counters kept.
    capacity: usize,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::with_capacity(MAX_ENTRIES)
    }
}

/// One counter.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// What it counts.
    state: State,
    /// When it is forgotten.
    forget_at: Instant,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// A token bucket: tokens as of `at`.
    Bucket { tokens: f64, at: Instant },
    /// A back-off: attempts counted as failures, and when the next may begin.
    Backoff { failures: u64, next: Instant },
}

impl Memory {
    /// No counters yet, keeping at most [`MAX_ENTRIES`].
    pub fn new() -> Self {
        Memory::default()
    }

    /// No counters yet, keeping at most `capacity` (at least 10).
    pub fn with_capacity(capacity: usize) -> Self {
        Memory { entries: Mutex::new(HashMap::new()), capacity: capacity.max(10) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `key`'s counter unless forgotten.
    fn live(entries: &HashMap<String, Entry>, key: &str, now: Instant) -> Option<State> {
        entries.get(key).filter(|e| e.forget_at > now).map(|e| e.state)
    }

    /// Stores `state` under `key`, making room first when the map is full.
    fn store(
        &self,
        entries: &mut HashMap<String, Entry>,
        key: &str,
        state: State,
        forget_at: Instant,
        now: Instant,
    ) {
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            entries.retain(|_, e| e.forget_at > now);
            if entries.len() >= self.capacity {
                let mut by_age: Vec<Instant> = entries.values().map(|e| e.forget_at).collect();
                by_age.sort_unstable();
                let cutoff = by_age[by_age.len() / 10];
                entries.retain(|_, e| e.forget_at > cutoff);
            }
        }
        entries.insert(key.to_owned(), Entry { state, forget_at });
    }
}

/// Tokens in `bucket` at `now`, given `tokens` at `at`.
fn refilled(bucket: &Bucket, tokens: f64, at: Instant, now: Instant) -> f64 {
    let burst = f64::from(bucket.burst);
    if bucket.every.is_zero() {
        return burst;
    }
    (tokens + now.saturating_duration_since(at).as_secs_f64() / bucket.every.as_secs_f64()).min(burst)
}

/// When a bucket left with `tokens` is full again, plus `forget_after`.
fn bucket_forget_at(bucket: &Bucket, tokens: f64, now: Instant, forget_after: Duration) -> Instant {
    let missing = (f64::from(bucket.burst) - tokens).max(0.0);
    now + bucket.every.mul_f64(missing) + forget_after
}

impl Throttle for Memory {
    fn take(&self, key: &str, bucket: &Bucket, forget_after: Duration) -> Result<Option<Duration>, Error> {
        let now = Instant::now();
        let mut entries = self.lock();
        let tokens = match Self::live(&entries, key, now) {
            Some(State::Bucket { tokens, at }) => refilled(bucket, tokens, at, now),
            _ => f64::from(bucket.burst),
        };
        if tokens < 1.0 {
            return Ok(Some(bucket.every.mul_f64(1.0 - tokens)));
        }
        let left = tokens - 1.0;
        let forget_at = bucket_forget_at(bucket, left, now, forget_after);
        self.store(&mut entries, key, State::Bucket { tokens: left, at: now }, forget_at, now);
        Ok(None)
    }

    fn give_back(&self, key: &str, bucket: &Bucket, forget_after: Duration) -> Result<(), Error> {
        let now = Instant::now();
        let mut entries = self.lock();
        if let Some(State::Bucket { tokens, at }) = Self::live(&entries, key, now) {
            let tokens = (refilled(bucket, tokens, at, now) + 1.0).min(f64::from(bucket.burst));
            let forget_at = bucket_forget_at(bucket, tokens, now, forget_after);
            self.store(&mut entries, key, State::Bucket { tokens, at: now }, forget_at, now);
        }
        Ok(())
    }

    fn begin_attempt(
        &self,
        key: &str,
        backoff: &Backoff,
        forget_after: Duration,
    ) -> Result<Option<Duration>, Error> {
        let now = Instant::now();
        let mut entries = self.lock();
        let failures = match Self::live(&entries, key, now) {
            Some(State::Backoff { next, .. }) if next > now => return Ok(Some(next - now)),
            Some(State::Backoff { failures, .. }) => failures,
            _ => 0,
        } + 1;
        let next = now + backoff_wait(backoff, failures);
        self.store(&mut entries, key, State::Backoff { failures, next }, next + forget_after, now);
        Ok(None)
    }

    fn reset(&self, key: &str) -> Result<(), Error> {
        self.lock().remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_keys_is_bounded_and_the_newest_are_kept() {
        let memory = Memory::with_capacity(10);
        let backoff =
            Backoff { free_failures: 0, base: Duration::from_secs(60), cap: Duration::from_secs(60) };
        for n in 0..1000 {
            memory.begin_attempt(&format!("account:{n}"), &backoff, Duration::from_secs(3600)).unwrap();
            assert!(memory.lock().len() <= 10, "{} counters after {n}", memory.lock().len());
        }
        // The last one counted is still there, and still makes its account wait.
        assert!(memory.begin_attempt("account:999", &backoff, Duration::from_secs(3600)).unwrap().is_some());
    }
}
