//! Round robin: each pick takes the next eligible server in id order.
//!
//! The simplest even spread of new connections, with no notion of load or weight beyond
//! weight 0 (drained). One shared counter keeps picks lock-free apart from the read lock on the
//! server list; when `exclude` differs between calls the cycle is over each call's own eligible
//! list, so it stays even only as long as the eligible set is stable, which is the common case.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use super::candidates::Candidates;
use crate::registry::{BackendOptions, BalancerFactory, BuildFuture};
use crate::{BalancerCapabilities, LoadBalancer, Result, ServerId, ServerInfo, UserId};

/// Hands out the eligible servers in turn, ordered by id.
///
/// Ignores the user: a reconnecting user may land elsewhere (see
/// [`ConsistentHash`](super::ConsistentHash) for stickiness). Configured with
/// `[balancer] strategy = "round_robin"`; it has no keys of its own.
#[derive(Debug, Default)]
pub struct RoundRobin {
    candidates: Candidates,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A balancer with no servers yet.
    pub fn new() -> Self {
        RoundRobin {
            candidates: Candidates::new(),
            next: AtomicUsize::new(0),
        }
    }
}

impl LoadBalancer for RoundRobin {
    fn name(&self) -> &str {
        "round_robin"
    }

    fn capabilities(&self) -> BalancerCapabilities {
        BalancerCapabilities { sticky: false }
    }

    fn set_servers(&self, servers: Vec<ServerInfo>) {
        self.candidates.replace(servers);
    }

    fn pick(&self, _user: UserId, exclude: &[ServerId]) -> Result<ServerInfo> {
        self.candidates.pick(exclude, |eligible| {
            // Only the count matters, not the order between threads: Relaxed is enough. The
            // counter wraps at usize::MAX, a harmless skip once in a very long while.
            let turn = self.next.fetch_add(1, Ordering::Relaxed);
            eligible.get(turn % eligible.len()).copied()
        })
    }
}

/// The keys of `[balancer]` for this strategy: none.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RoundRobinOptions {}

fn build_round_robin(options: BackendOptions) -> BuildFuture<dyn LoadBalancer> {
    Box::pin(async move {
        let RoundRobinOptions {} = options.parse()?;
        Ok(Arc::new(RoundRobin::new()) as Arc<dyn LoadBalancer>)
    })
}

inventory::submit! {
    BalancerFactory::new(
        "round_robin",
        "each new user gets the next live server in turn",
        build_round_robin,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ErrorKind;
    use crate::balancer::candidates::{test_id, test_server};

    fn three_servers() -> RoundRobin {
        let balancer = RoundRobin::new();
        balancer.set_servers(vec![
            test_server("c", 100, 0),
            test_server("a", 100, 0),
            test_server("b", 100, 0),
        ]);
        balancer
    }

    fn picked_id(balancer: &RoundRobin, exclude: &[ServerId]) -> String {
        balancer
            .pick(UserId(1), exclude)
            .expect("a server")
            .id
            .to_string()
    }

    #[test]
    fn cycles_through_the_servers_in_id_order() {
        let balancer = three_servers();
        let picks: Vec<String> = (0..6).map(|_| picked_id(&balancer, &[])).collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn spreads_picks_evenly() {
        let balancer = three_servers();
        let mut counts = BTreeMap::new();
        for user in 0..300 {
            let server = balancer.pick(UserId(user), &[]).expect("a server");
            *counts.entry(server.id.to_string()).or_insert(0) += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [100, 100, 100]
        );
    }

    #[test]
    fn picks_only_among_the_servers_last_set() {
        let balancer = three_servers();
        balancer.set_servers(vec![test_server("d", 100, 0), test_server("e", 100, 0)]);
        for _ in 0..10 {
            let id = picked_id(&balancer, &[]);
            assert!(
                id == "d" || id == "e",
                "picked {id}, which is no longer set"
            );
        }
    }

    #[test]
    fn never_picks_an_excluded_server() {
        let balancer = three_servers();
        for _ in 0..10 {
            assert_eq!(picked_id(&balancer, &[test_id("a"), test_id("c")]), "b");
        }
    }

    #[test]
    fn never_picks_a_server_of_weight_zero() {
        let balancer = RoundRobin::new();
        balancer.set_servers(vec![test_server("a", 0, 0), test_server("b", 1, 0)]);
        for _ in 0..10 {
            assert_eq!(picked_id(&balancer, &[]), "b");
        }
    }

    #[test]
    fn fails_unavailable_with_no_server_left() {
        let balancer = RoundRobin::new();
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
        let options = BackendOptions::new("balancer", "round_robin");
        let balancer = crate::registry::build::<dyn LoadBalancer>(options.clone())
            .await
            .expect("builds");
        assert_eq!(balancer.name(), "round_robin");
        assert!(!balancer.capabilities().sticky);

        let err =
            crate::registry::build::<dyn LoadBalancer>(options.with_option("virtual_nodes", 8))
                .await
                .err()
                .expect("round_robin has no keys");
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}
