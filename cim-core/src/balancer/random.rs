//! Random: each pick draws an eligible server at random, in proportion to its weight.
//!
//! Needs no shared state between picks (no counter to contend on) and spreads users the way the
//! operator sized the servers: weight is the relative capacity a server announces, so a server
//! of weight 200 gets twice the new users of one of weight 100. With the default weights (all
//! equal) the draw is uniform. Like round robin it ignores the user, so it is not sticky.

use std::sync::Arc;

use rand::Rng;
use serde::Deserialize;

use super::candidates::Candidates;
use crate::registry::{BackendOptions, BalancerFactory, BuildFuture};
use crate::{BalancerCapabilities, LoadBalancer, Result, ServerId, ServerInfo, UserId};

/// Draws an eligible server at random, weighted by [`ServerInfo::weight`].
///
/// Configured with `[balancer] strategy = "random"`; it has no keys of its own.
#[derive(Debug, Default)]
pub struct Random {
    candidates: Candidates,
}

impl Random {
    /// A balancer with no servers yet.
    pub fn new() -> Self {
        Random {
            candidates: Candidates::new(),
        }
    }
}

impl LoadBalancer for Random {
    fn name(&self) -> &str {
        "random"
    }

    fn capabilities(&self) -> BalancerCapabilities {
        BalancerCapabilities { sticky: false }
    }

    fn set_servers(&self, servers: Vec<ServerInfo>) {
        self.candidates.replace(servers);
    }

    fn pick(&self, _user: UserId, exclude: &[ServerId]) -> Result<ServerInfo> {
        self.candidates.pick(exclude, |eligible| {
            // Eligible servers have weight >= 1, so the total is >= 1 and the range not empty.
            // Summed as u64 it cannot overflow short of 2^32 servers of the maximal weight.
            let total: u64 = eligible.iter().map(|s| u64::from(s.weight)).sum();
            let mut ticket = rand::rng().random_range(0..total);
            eligible.iter().copied().find(|server| {
                let weight = u64::from(server.weight);
                if ticket < weight {
                    return true;
                }
                ticket -= weight;
                false
            })
        })
    }
}

/// The keys of `[balancer]` for this strategy: none.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RandomOptions {}

fn build_random(options: BackendOptions) -> BuildFuture<dyn LoadBalancer> {
    Box::pin(async move {
        let RandomOptions {} = options.parse()?;
        Ok(Arc::new(Random::new()) as Arc<dyn LoadBalancer>)
    })
}

inventory::submit! {
    BalancerFactory::new(
        "random",
        "each new user gets a live server drawn at random, in proportion to its weight",
        build_random,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ErrorKind;
    use crate::balancer::candidates::{test_id, test_server};

    fn counts(balancer: &Random, picks: u64, exclude: &[ServerId]) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for user in 0..picks {
            let server = balancer.pick(UserId(user), exclude).expect("a server");
            *counts.entry(server.id.to_string()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn picks_only_among_the_servers_last_set() {
        let balancer = Random::new();
        balancer.set_servers(vec![test_server("a", 100, 0), test_server("b", 100, 0)]);
        balancer.set_servers(vec![test_server("c", 100, 0), test_server("d", 100, 0)]);
        let counts = counts(&balancer, 1_000, &[]);
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["c", "d"]);
    }

    #[test]
    fn equal_weights_draw_roughly_uniformly() {
        let balancer = Random::new();
        balancer.set_servers(vec![
            test_server("a", 100, 0),
            test_server("b", 100, 0),
            test_server("c", 100, 0),
            test_server("d", 100, 0),
        ]);
        // Expected 2,500 each; the standard deviation is about 43, so 2,000..3,000 cannot fail
        // by chance in practice.
        for (id, count) in counts(&balancer, 10_000, &[]) {
            assert!(
                (2_000..3_000).contains(&count),
                "{id} got {count} of 10,000"
            );
        }
    }

    #[test]
    fn draws_in_proportion_to_weight() {
        let balancer = Random::new();
        balancer.set_servers(vec![
            test_server("big", 300, 0),
            test_server("small", 100, 0),
        ]);
        let counts = counts(&balancer, 10_000, &[]);
        // Expected 7,500 for "big"; the standard deviation is about 43.
        let big = counts.get("big").copied().unwrap_or(0);
        assert!((7_000..8_000).contains(&big), "big got {big} of 10,000");
    }

    #[test]
    fn never_picks_an_excluded_server() {
        let balancer = Random::new();
        balancer.set_servers(vec![
            test_server("a", 100, 0),
            test_server("b", 100, 0),
            test_server("c", 100, 0),
        ]);
        let counts = counts(&balancer, 1_000, &[test_id("a"), test_id("c")]);
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn never_picks_a_server_of_weight_zero() {
        let balancer = Random::new();
        balancer.set_servers(vec![test_server("a", 0, 0), test_server("b", 1, 0)]);
        let counts = counts(&balancer, 1_000, &[]);
        assert_eq!(counts.keys().collect::<Vec<_>>(), ["b"]);
    }

    #[test]
    fn fails_unavailable_with_no_server_left() {
        let balancer = Random::new();
        let err = balancer.pick(UserId(1), &[]).expect_err("no servers set");
        assert_eq!(err.kind(), ErrorKind::Unavailable);

        balancer.set_servers(vec![test_server("a", 100, 0), test_server("b", 0, 0)]);
        let err = balancer
            .pick(UserId(1), &[test_id("a")])
            .expect_err("a excluded, b drained");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn is_registered_and_rejects_unknown_keys() {
        let options = BackendOptions::new("balancer", "random");
        let balancer = crate::registry::build::<dyn LoadBalancer>(options.clone())
            .await
            .expect("builds");
        assert_eq!(balancer.name(), "random");
        assert!(!balancer.capabilities().sticky);

        let err = crate::registry::build::<dyn LoadBalancer>(options.with_option("seed", 1))
            .await
            .err()
            .expect("random has no keys");
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
