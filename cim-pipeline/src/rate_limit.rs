//! Rate limits: a [`TokenBucket`], and [`PerUser`] buckets shared by every entry point.
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

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket for `limit`.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        let capacity = f64::from(limit.burst.max(1));
        TokenBucket {
            capacity,
            per_second: f64::from(limit.per_second.max(1)),
            tokens: capacity,
            updated: now,
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

/// One [`TokenBucket`] per user, created on first use and forgotten once full again, so memory
/// follows the users active in the last `burst / per_second` seconds.
#[derive(Debug)]
pub struct PerUser {
    limit: RateLimit,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Debug)]
struct Shard {
    buckets: HashMap<UserId, TokenBucket>,
    sweep_at: usize,
}

impl PerUser {
    /// Buckets of `limit`, none yet.
    pub fn new(limit: RateLimit) -> Self {
        PerUser {
            limit,
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

    /// The limit every bucket has.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token from `user`'s bucket; when empty, how long until the next token.
    pub fn take(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        let index = usize::try_from(user.0 % SHARDS as u64).unwrap_or(0);
        // Every critical section is one map operation: a panic cannot leave it half-done.
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.buckets.len() >= shard.sweep_at {
            shard.buckets.retain(|_, bucket| !bucket.is_full(now));
            shard.sweep_at = (shard.buckets.len() * 2).max(SWEEP_AT);
        }
        let limit = self.limit;
        shard
            .buckets
            .entry(user)
            .or_insert_with(|| TokenBucket::new(limit, now))
            .take(now)
    }

    /// How many users have a bucket now (for tests and metrics).
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
        assert_eq!(limits.take(UserId(1), now), Ok(()));
        assert!(limits.take(UserId(1), now).is_err());
        assert_eq!(limits.take(UserId(2), now), Ok(()), "another user");
    }

    #[test]
    fn full_buckets_are_forgotten_so_memory_follows_active_users() {
        let start = Instant::now();
        let limits = PerUser::new(RateLimit::new(1000, 1));
        for user in 0..(SWEEP_AT * SHARDS) as u64 {
            limits.take(UserId(user), start).expect("first message");
        }
        assert_eq!(limits.tracked(), SWEEP_AT * SHARDS);
        // A second later every bucket is full again; the next takes sweep them.
        let later = start + Duration::from_secs(1);
        for user in 0..SHARDS as u64 {
            limits
                .take(UserId(1_000_000 + user), later)
                .expect("new user");
        }
        assert_eq!(limits.tracked(), SHARDS, "only the users active now");
    }
}
