//! [`Throttle`]: how often, and how many at once, password checks and sign-ups may run.
//!
//! A password check is argon2id: tens of milliseconds of a core and 19 MiB on purpose, so that
//! guessing is expensive. The same cost makes it the easiest way to deny service: checks queue
//! behind one permit per core, first come first served, and 2,000 wrong logins in flight made a
//! correct one wait 34 s. So the route decides *before* queueing a check:
//!
//! - **Failures are counted** per account and source address together, per account, and per
//!   source ([`Allowance`]s of `[route.logins]`). A login whose allowance is used up is refused
//!   with `429` and `Retry-After` without a password check at all: an attacker's guesses cost
//!   them time, not the route CPU. The per-account-and-source allowance is the tight one, so
//!   that a distributed attack on one account cannot lock its owner out as quickly as it
//!   throttles the attackers.
//! - **Checks in flight are bounded** per account, per source, and in all, so no single client
//!   can fill the queue, and the route's memory stays bounded under any storm.
//! - **Suspects get a share, not the queue.** A check for an account or from a source with
//!   recent failures first takes one of a few *suspect* permits (half the cores, at least
//!   one), so at any time at most that many suspect checks compete with everyone else's: a
//!   correct login for an account nobody attacks waits behind at most a core's worth of
//!   attackers, however many there are.
//!
//! Sign-ups hash a password too: they are limited per source, and share the in-flight bounds.
//! Each route keeps its own counts (several routes in front of a cluster each apply them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cim_core::{Error, Result, canonical_name};
use cim_pipeline::rate_limit::Keyed;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::LoginLimits;

/// What is counted in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Source(IpAddr),
    All,
}

/// The throttle of one route.
#[derive(Debug)]
pub(crate) struct Throttle {
    limits: LoginLimits,
    pair_failures: Keyed<(String, Option<IpAddr>)>,
    account_failures: Keyed<String>,
    source_failures: Keyed<IpAddr>,
    signups: Keyed<IpAddr>,
    in_flight: Arc<Mutex<HashMap<Key, usize>>>,
    suspects: Arc<Semaphore>,
}

/// A password check let through: it counts as in flight until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    keys: Vec<Key>,
    in_flight: Arc<Mutex<HashMap<Key, usize>>>,
    _suspect: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            if let Some(count) = in_flight.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    in_flight.remove(key);
                }
            }
        }
    }
}

impl Throttle {
    /// A throttle with `limits` and nothing counted yet.
    pub(crate) fn new(limits: LoginLimits) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        Throttle {
            pair_failures: Keyed::new(limits.failures_per_account_and_source),
            account_failures: Keyed::new(limits.failures_per_account),
            source_failures: Keyed::new(limits.failures_per_source),
            signups: Keyed::new(limits.signups_per_source),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            suspects: Arc::new(Semaphore::new((cores / 2).max(1))),
            limits,
        }
    }

    /// Lets a password check for `account` from `source` through, or refuses it with
    /// `RateLimited`: the account or the source failed too often lately, or too many checks
    /// are in flight. Waits while the check is a suspect's and the suspects' share is taken.
    pub(crate) async fn admit_login(
        &self,
        account: &str,
        source: Option<IpAddr>,
    ) -> Result<Admitted> {
        let now = Instant::now();
        let account = canonical_name(account);
        let pair = (account.clone(), source);
        let mut wait = self.pair_failures.check(&pair, now).err();
        wait = wait.or(self.account_failures.check(&account, now).err());
        if let Some(source) = source {
            wait = wait.or(self.source_failures.check(&source, now).err());
        }
        if let Some(wait) = wait {
            return Err(Error::rate_limited(
                "too many failed logins for this account or from this address; wait before \
                 trying again",
                wait,
            ));
        }
        let suspect = !self.pair_failures.is_full(&pair, now)
            || !self.account_failures.is_full(&account, now)
            || source.is_some_and(|source| !self.source_failures.is_full(&source, now));
        let mut keys = vec![Key::All, Key::Account(account)];
        keys.extend(source.map(Key::Source));
        let mut admitted = self.enter(keys)?;
        if suspect {
            let permit = Arc::clone(&self.suspects)
                .acquire_owned()
                .await
                .map_err(|_| Error::internal("the login throttle is closed"))?;
            admitted._suspect = Some(permit);
        }
        Ok(admitted)
    }

    /// Counts a failed password check of `account` from `source`.
    pub(crate) fn failed(&self, account: &str, source: Option<IpAddr>) {
        let now = Instant::now();
        let account = canonical_name(account);
        // The allowances were checked before the attempt; a failure takes the token (or, when
        // several attempts raced, finds none left, which is the same refusal next time).
        let _ = self.pair_failures.take(&(account.clone(), source), now);
        let _ = self.account_failures.take(&account, now);
        if let Some(source) = source {
            let _ = self.source_failures.take(&source, now);
        }
    }

    /// Lets a sign-up from `source` through (it hashes a password), or refuses it with
    /// `RateLimited`.
    pub(crate) fn admit_signup(&self, source: Option<IpAddr>) -> Result<Admitted> {
        let mut keys = vec![Key::All];
        if let Some(source) = source {
            self.signups.take(&source, Instant::now()).map_err(|wait| {
                Error::rate_limited(
                    "too many sign-ups from this address; wait before creating another account",
                    wait,
                )
            })?;
            keys.push(Key::Source(source));
        }
        self.enter(keys)
    }

    /// Counts one more check in flight under every key, unless one of them is at its bound.
    fn enter(&self, keys: Vec<Key>) -> Result<Admitted> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for key in &keys {
            let bound = match key {
                Key::All => self.limits.max_checks,
                Key::Account(_) => self.limits.checks_per_account,
                Key::Source(_) => self.limits.checks_per_source,
            };
            if in_flight.get(key).copied().unwrap_or(0) >= bound.max(1) {
                return Err(Error::rate_limited(
                    "too many password checks in flight for this account, from this address or \
                     in all; try again in a moment",
                    Duration::from_secs(1),
                ));
            }
        }
        for key in &keys {
            *in_flight.entry(key.clone()).or_default() += 1;
        }
        Ok(Admitted {
            keys,
            in_flight: Arc::clone(&self.in_flight),
            _suspect: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use cim_pipeline::rate_limit::Allowance;

    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            failures_per_account_and_source: Allowance::new(2, Duration::from_secs(60)),
            failures_per_account: Allowance::new(3, Duration::from_secs(60)),
            failures_per_source: Allowance::new(10, Duration::from_secs(60)),
            checks_per_account: 1,
            checks_per_source: 2,
            max_checks: 3,
            signups_per_source: Allowance::new(1, Duration::from_secs(60)),
        }
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[tokio::test]
    async fn failures_from_one_source_throttle_it_before_they_throttle_the_account() {
        let throttle = Throttle::new(limits());
        for _ in 0..2 {
            drop(throttle.admit_login("Alice", ip(2)).await.expect("allowed"));
            throttle.failed("alice", ip(2));
        }
        let refused = throttle
            .admit_login("ALICE", ip(2))
            .await
            .expect_err("throttled");
        assert_eq!(refused.kind(), cim_core::ErrorKind::RateLimited);
        assert!(refused.retry_after().is_some());
        // From elsewhere, alice may still log in, until the account's own allowance is used.
        drop(
            throttle
                .admit_login("alice", ip(3))
                .await
                .expect("another source"),
        );
        throttle.failed("alice", ip(3));
        assert!(
            throttle.admit_login("alice", ip(4)).await.is_err(),
            "the account's three"
        );
        drop(
            throttle
                .admit_login("bob", ip(2))
                .await
                .expect("bob is not alice"),
        );
    }

    #[tokio::test]
    async fn checks_in_flight_are_bounded_per_account_per_source_and_in_all() {
        let throttle = Throttle::new(limits());
        let first = throttle.admit_login("alice", ip(2)).await.expect("first");
        assert!(
            throttle.admit_login("alice", ip(3)).await.is_err(),
            "one per account"
        );
        let second = throttle.admit_login("bob", ip(2)).await.expect("second");
        assert!(
            throttle.admit_login("carol", ip(2)).await.is_err(),
            "two per source"
        );
        let third = throttle.admit_login("carol", ip(3)).await.expect("third");
        assert!(
            throttle.admit_login("dave", ip(4)).await.is_err(),
            "three in all"
        );
        drop((first, second, third));
        drop(
            throttle
                .admit_login("dave", ip(4))
                .await
                .expect("room again"),
        );
    }

    #[tokio::test]
    async fn sign_ups_are_limited_per_source() {
        let throttle = Throttle::new(limits());
        drop(throttle.admit_signup(ip(2)).expect("first"));
        let refused = throttle.admit_signup(ip(2)).expect_err("second");
        assert_eq!(refused.kind(), cim_core::ErrorKind::RateLimited);
        drop(throttle.admit_signup(ip(3)).expect("another source"));
    }
}
