//! Rate limits: a [`TokenBucket`], and [`Keyed`] buckets (one per user, per account, per source
//! address) shared by every entry point.
//!
//! Every message costs the store a write and the cluster a fan-out, so one user must not be able
//! to send without bound, whichever way they send: all their connections to a server, and the
//! HTTP send API of the same process, draw from one bucket per user. (Each process keeps its own
//! buckets: a user sending through k servers and routes at once can reach k times the limit.
//! That bounds the damage per node, which is what protects the node's other users.)
//!
//! A token bucket allows short bursts (a client flushing its outbox after a reconnect) and a
//! sustained rate. A refusal says how long until the next token, which HTTP turns into
//! `Retry-After`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cim_core::UserId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A sustained rate and a burst: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate, per second (at least 1).
    pub per_second: u32,
    /// Bucket size: how many at once after a quiet period (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` sustained, `burst` at once.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

/// A slow allowance: `burst` at once, one more every `refill` (for what is counted per minute
/// or hour rather than per second: failed logins, sign-ups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    /// How many at once after a quiet period (at least 1).
    pub burst: u32,
    /// How long until one more is allowed. Written like `1m`.
    #[serde(with = "humantime_serde")]
    pub refill: Duration,
}

impl Allowance {
    /// `burst` at once, one more every `refill`.
    pub const fn new(burst: u32, refill: Duration) -> Self {
        Allowance { burst, refill }
    }
}

/// The shape of a bucket: how many tokens it holds and how fast it refills.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refill {
    capacity: f64,
    per_second: f64,
}

impl From<RateLimit> for Refill {
    fn from(limit: RateLimit) -> Self {
        Refill {
            capacity: f64::from(limit.burst.max(1)),
            per_second: f64::from(limit.per_second.max(1)),
        }
    }
}

impl From<Allowance> for Refill {
    fn from(allowance: Allowance) -> Self {
        let every = allowance.refill.as_secs_f64().max(1e-3);
        Refill {
            capacity: f64::from(allowance.burst.max(1)),
            per_second: 1.0 / every,
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit` (a [`RateLimit`] or an [`Allowance`]).
    pub fn new(limit: impl Into<Refill>, now: Instant) -> Self {
        let Refill {
            capacity,
            per_second,
        } = limit.into();
        TokenBucket {
            capacity,
            per_second,
            tokens: capacity,
            updated: now,
        }
    }

    /// When there is no token at `now`, how long until there is (without taking any).
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }

    /// Takes one token at `now`; when there is none, how long until there is.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - self.tokens) / self.per_second,
        ))
    }

    /// Whether the bucket has filled up again by `now` (its user has been quiet long enough
    /// that forgetting the bucket changes nothing).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
    }
}

/// Buckets kept per shard before the full ones are forgotten.
const SWEEP_AT: usize = 1024;
/// Independent locks, so that senders on different cores rarely wait for each other.
const SHARDS: usize = 16;

/// One [`TokenBucket`] per key (a user, an account name, a source address), created on first
/// use and forgotten once full again, so memory follows the keys active in the last
/// `burst / rate` seconds.
#[derive(Debug)]
pub struct Keyed<K> {
    refill: Refill,
    hasher: RandomState,
    shards: Vec<Mutex<Shard<K>>>,
}

/// Buckets per user: the message limit of every entry point.
pub type PerUser = Keyed<UserId>;

#[derive(Debug)]
struct Shard<K> {
    buckets: HashMap<K, TokenBucket>,
    sweep_at: usize,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// Buckets of `limit` (a [`RateLimit`] or an [`Allowance`]), none yet.
    pub fn new(limit: impl Into<Refill>) -> Self {
        Keyed {
            refill: limit.into(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
        }
    }

    /// Takes a token from `key`'s bucket; when empty, how long until the next token.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.with_bucket(key, now, |bucket| bucket.take(now))
    }

    /// Whether `key`'s bucket has a token (taking none); when empty, how long until it has.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.with_bucket(key, now, |bucket| bucket.check(now))
    }

    /// Whether `key`'s bucket is full at `now`: it has taken nothing lately.
    pub fn is_full(&self, key: &K, now: Instant) -> bool {
        self.with_bucket(key, now, |bucket| bucket.is_full(now))
    }

    fn with_bucket<T>(&self, key: &K, now: Instant, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        // Every critical section is one map operation: a panic cannot leave it half-done.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.buckets.len() >= shard.sweep_at {
            shard.buckets.retain(|_, bucket| !bucket.is_full(now));
            shard.sweep_at = (shard.buckets.len() * 2).max(SWEEP_AT);
        }
        let refill = self.refill;
        let bucket = shard
            .buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(refill, now));
        f(bucket)
    }

    /// How many keys have a bucket now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .buckets
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(10, 3), start);
        for _ in 0..3 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(100));
        assert_eq!(bucket.take(start + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn a_quiet_bucket_fills_up_to_its_burst_only() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit::new(1, 2), start);
        bucket.take(start).expect("first");
        assert!(!bucket.is_full(start));
        let later = start + Duration::from_secs(60);
        assert!(bucket.is_full(later));
        assert_eq!(bucket.take(later), Ok(()));
        assert_eq!(bucket.take(later), Ok(()));
        assert!(bucket.take(later).is_err(), "no more than the burst");
    }

    #[test]
    fn users_have_separate_buckets() {
        let now = Instant::now();
        let limits = PerUser::new(RateLimit::new(1, 1));
        assert_eq!(limits.take(&UserId(1), now), Ok(()));
        assert!(limits.take(&UserId(1), now).is_err());
        assert_eq!(limits.take(&UserId(2), now), Ok(()), "another user");
    }

    #[test]
    fn an_allowance_refills_slowly_and_check_takes_nothing() {
        let start = Instant::now();
        let failures = Keyed::<String>::new(Allowance::new(2, Duration::from_secs(60)));
        let alice = "alice".to_string();
        assert_eq!(failures.check(&alice, start), Ok(()));
        assert!(failures.is_full(&alice, start));
        failures.take(&alice, start).expect("first");
        failures.take(&alice, start).expect("second");
        let wait = failures.check(&alice, start).expect_err("empty");
        assert_eq!(wait, Duration::from_secs(60));
        assert!(
            failures
                .check(&alice, start + Duration::from_secs(59))
                .is_err()
        );
        assert_eq!(
            failures.check(&alice, start + Duration::from_secs(60)),
            Ok(())
        );
        assert!(!failures.is_full(&alice, start + Duration::from_secs(60)));
    }

    #[test]
    fn full_buckets_are_forgotten_so_memory_follows_active_keys() {
        let start = Instant::now();
        let limits = PerUser::new(RateLimit::new(1000, 1));
        let keys = (SWEEP_AT * SHARDS * 2) as u64;
        for user in 0..keys {
            limits.take(&UserId(user), start).expect("first message");
        }
        assert_eq!(limits.tracked(), keys as usize, "all of them are active");
        // A second later those buckets are full again; the sweeps that four times as many new
        // users cause forget every one of them.
        let later = start + Duration::from_secs(1);
        for user in keys..5 * keys {
            limits.take(&UserId(user), later).expect("new user");
        }
        assert_eq!(
            limits.tracked(),
            4 * keys as usize,
            "only the users active now are tracked"
        );
    }
}
