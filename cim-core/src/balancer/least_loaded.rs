//! Least loaded: each pick takes the eligible server reporting the fewest connected clients.
//!
//! Evens out servers that drifted apart (one restarted empty, one kept its long-lived clients),
//! which round robin and random never correct. The load is the one each server last announced,
//! as given to `set_servers`; nothing is counted locally, so every replica of the route sees the
//! same numbers and picks the same server. The price: between two load updates every pick goes to
//! the same server, so a burst of connections shortly after an update lands on one node. Prefer
//! it when servers report their load often relative to the arrival rate of new users.

use std::cmp::Reverse;
use std::sync::Arc;

use serde::Deserialize;

use super::candidates::Candidates;
use crate::registry::{BackendOptions, BalancerFactory, BuildFuture};
use crate::{BalancerCapabilities, LoadBalancer, Result, ServerId, ServerInfo, UserId};

/// Picks the eligible server with the lowest [`ServerInfo::load`].
///
/// Ties go to the server of the higher [`weight`](ServerInfo::weight) (the lower load per unit
/// of capacity), then to the lowest id, so that the choice is deterministic. Configured with
/// `[balancer] strategy = "least_loaded"`; it has no keys of its own.
#[derive(Debug, Default)]
pub struct LeastLoaded {
    candidates: Candidates,
}

impl LeastLoaded {
    /// A balancer with no servers yet.
    pub fn new() -> Self {
        LeastLoaded {
            candidates: Candidates::new(),
        }
    }
}

impl LoadBalancer for LeastLoaded {
    fn name(&self) -> &str {
        "least_loaded"
    }

    fn capabilities(&self) -> BalancerCapabilities {
        BalancerCapabilities { sticky: false }
    }

    fn set_servers(&self, servers: Vec<ServerInfo>) {
        self.candidates.replace(servers);
    }

    fn pick(&self, _user: UserId, exclude: &[ServerId]) -> Result<ServerInfo> {
        self.candidates.pick(exclude, |eligible| {
            // `min_by_key` keeps the first of equal minima, and the servers are sorted by id:
            // the lowest id wins the last tie.
            eligible
                .iter()
                .copied()
                .min_by_key(|server| (server.load, Reverse(server.weight)))
        })
    }
}

/// The keys of `[balancer]` for this strategy: none.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LeastLoadedOptions {}

fn build_least_loaded(options: BackendOptions) -> BuildFuture<dyn LoadBalancer> {
    Box::pin(async move {
        let LeastLoadedOptions {} = options.parse()?;
        Ok(Arc::new(LeastLoaded::new()) as Arc<dyn LoadBalancer>)
    })
}

inventory::submit! {
    BalancerFactory::new(
        "least_loaded",
        "each new user gets the live server reporting the fewest connected clients",
        build_least_loaded,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::balancer::candidates::{test_id, test_server};

    fn picked_id(balancer: &LeastLoaded, exclude: &[ServerId]) -> String {
        balancer
            .pick(UserId(1), exclude)
            .expect("a server")
            .id
            .to_string()
    }

    #[test]
    fn picks_the_server_with_the_lowest_load() {
        let balancer = LeastLoaded::new();
        balancer.set_servers(vec![
            test_server("a", 100, 30),
            test_server("b", 100, 10),
            test_server("c", 100, 20),
        ]);
        assert_eq!(picked_id(&balancer, &[]), "b");
    }

    #[test]
    fn follows_load_updates() {
        let balancer = LeastLoaded::new();
        balancer.set_servers(vec![test_server("a", 100, 5), test_server("b", 100, 10)]);
        assert_eq!(picked_id(&balancer, &[]), "a");

        balancer.set_servers(vec![test_server("a", 100, 50), test_server("b", 100, 10)]);
        assert_eq!(picked_id(&balancer, &[]), "b");
    }

    #[test]
    fn breaks_ties_by_higher_weight_then_lowest_id() {
        let balancer = LeastLoaded::new();
        balancer.set_servers(vec![
            test_server("c", 100, 7),
            test_server("b", 100, 7),
            test_server("d", 50, 7),
        ]);
        assert_eq!(picked_id(&balancer, &[]), "b");

        balancer.set_servers(vec![
            test_server("c", 200, 7),
            test_server("b", 100, 7),
            test_server("d", 50, 7),
        ]);
        assert_eq!(picked_id(&balancer, &[]), "c");
    }

    #[test]
    fn picks_only_among_the_servers_last_set() {
        let balancer = LeastLoaded::new();
        balancer.set_servers(vec![test_server("a", 100, 0), test_server("b", 100, 9)]);
        balancer.set_servers(vec![test_server("b", 100, 9), test_server("c", 100, 3)]);
        assert_eq!(picked_id(&balancer, &[]), "c");
    }

    #[test]
    fn never_picks_an_excluded_server() {
        let balancer = LeastLoaded::new();
        balancer.set_servers(vec![
            test_server("a", 100, 1),
            test_server("b", 100, 2),
            test_server("c", 100, 3),
        ]);
        assert_eq!(picked_id(&balancer, &[test_id("a"), test_id("b")]), "c");
    }

    #[test]
    fn never_picks_a_server_of_weight_zero() {
        let balancer = LeastLoaded::new();
        balancer.set_servers(vec![
            test_server("idle", 0, 0),
            test_server("busy", 1, 1_000),
        ]);
        assert_eq!(picked_id(&balancer, &[]), "busy");
    }

    #[test]
    fn fails_unavailable_with_no_server_left() {
        let balancer = LeastLoaded::new();
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
        let options = BackendOptions::new("balancer", "least_loaded");
        let balancer = crate::registry::build::<dyn LoadBalancer>(options.clone())
            .await
            .expect("builds");
        assert_eq!(balancer.name(), "least_loaded");
        assert!(!balancer.capabilities().sticky);

        let err = crate::registry::build::<dyn LoadBalancer>(options.with_option("window", 1))
            .await
            .err()
            .expect("least_loaded has no keys");
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
