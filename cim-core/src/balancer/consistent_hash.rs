//! Consistent hashing: a user keeps landing on the same server, and a change of the server set
//! moves only the users it must.
//!
//! This is cim's default strategy because a reconnecting user (a flaky mobile link, a client
//! restart) returns to the server that already holds their state, and because scaling out by one
//! server moves only about 1/(N+1) of the users, all of them onto the new server, instead of
//! reshuffling everyone. Each server is hashed onto a ring at `virtual_nodes` points; a user goes
//! to the first point clockwise from the hash of their id whose server is eligible, so excluding
//! or draining a server (weight 0) sends only that server's users to their next point, and they
//! come back when it returns. Weights above 0 do not change a server's share: weighted rings
//! would move users whenever an operator tunes a weight.
//!
//! The route may run several replicas, and they must agree on every user's server: the hash is
//! xxh3-64 of fixed byte strings (`"<server id>#<i>"` for points, the user id's little-endian
//! bytes for keys), the same on every process, machine and release. Never change those inputs,
//! and never use std's randomly seeded hasher here: either would silently move every user.
//!
//! Building the ring costs `servers x virtual_nodes` hashes and a sort, so it is rebuilt only
//! when the set of server ids changes; registrations that only update a load or a weight reuse it.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64;

use super::candidates::{is_eligible, no_live_server, sorted_by_id};
use crate::registry::{BackendOptions, BalancerFactory, BuildFuture};
use crate::{BalancerCapabilities, Error, LoadBalancer, Result, ServerId, ServerInfo, UserId};

/// Maps each user to a server through a hash ring, so that a user sticks to one server while the
/// set of servers is unchanged.
///
/// Configured with `[balancer] strategy = "consistent_hash"` (the default) and one optional key,
/// `virtual_nodes` (default [`ConsistentHash::DEFAULT_VIRTUAL_NODES`]): more points per server
/// spread users more evenly, at the cost of memory and rebuild time.
pub struct ConsistentHash {
    virtual_nodes: u32,
    state: RwLock<State>,
}

/// The servers and the ring built from their ids, swapped together so that a pick never sees a
/// ring whose indices refer to another server list.
struct State {
    /// The servers last set, sorted by id: `ring.ids` in the same order.
    servers: Vec<ServerInfo>,
    ring: Arc<Ring>,
}

/// The hash ring: `virtual_nodes` points per server, sorted by hash.
#[derive(Debug, Default)]
struct Ring {
    /// The ids the ring was built from, sorted; a point's `server` indexes this list.
    ids: Vec<ServerId>,
    points: Vec<Point>,
}

/// One point of the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    hash: u64,
    server: usize,
}

impl ConsistentHash {
    /// The number of points per server when the config does not say: enough that 10 servers
    /// each get within a few percent of an even share.
    pub const DEFAULT_VIRTUAL_NODES: u32 = 160;

    /// The most points per server accepted, which bounds the ring's memory (16 bytes a point)
    /// and rebuild time; far beyond the point where more stop evening out the spread.
    pub const MAX_VIRTUAL_NODES: u32 = 10_000;

    /// A balancer with no servers yet and `virtual_nodes` points per server; fails with
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) unless it is between 1 and
    /// [`Self::MAX_VIRTUAL_NODES`].
    pub fn new(virtual_nodes: u32) -> Result<Self> {
        if !(1..=Self::MAX_VIRTUAL_NODES).contains(&virtual_nodes) {
            return Err(Error::invalid_input(format!(
                "consistent hashing needs 1 to {} virtual nodes per server, got {virtual_nodes}; \
                 {} is a good default",
                Self::MAX_VIRTUAL_NODES,
                Self::DEFAULT_VIRTUAL_NODES
            )));
        }
        Ok(ConsistentHash {
            virtual_nodes,
            state: RwLock::new(State {
                servers: Vec::new(),
                ring: Arc::new(Ring::default()),
            }),
        })
    }

    /// The number of points each server has on the ring.
    pub fn virtual_nodes(&self) -> u32 {
        self.virtual_nodes
    }

    /// The current ring, to check in tests when it was rebuilt.
    #[cfg(test)]
    fn ring(&self) -> Arc<Ring> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&state.ring)
    }
}

impl Default for ConsistentHash {
    /// A balancer with [`ConsistentHash::DEFAULT_VIRTUAL_NODES`] points per server.
    fn default() -> Self {
        ConsistentHash {
            virtual_nodes: Self::DEFAULT_VIRTUAL_NODES,
            state: RwLock::new(State {
                servers: Vec::new(),
                ring: Arc::new(Ring::default()),
            }),
        }
    }
}

impl fmt::Debug for ConsistentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ConsistentHash")
            .field("virtual_nodes", &self.virtual_nodes)
            .field("servers", &state.ring.ids)
            .field("ring_points", &state.ring.points.len())
            .finish()
    }
}

impl LoadBalancer for ConsistentHash {
    fn name(&self) -> &str {
        "consistent_hash"
    }

    fn capabilities(&self) -> BalancerCapabilities {
        BalancerCapabilities { sticky: true }
    }

    fn set_servers(&self, servers: Vec<ServerInfo>) {
        let servers = sorted_by_id(servers);
        let current = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(&state.ring)
        };
        let same_ids = current.ids.len() == servers.len()
            && current.ids.iter().zip(&servers).all(|(id, s)| *id == s.id);
        // Built outside the lock so picks go on meanwhile. The ring installed is always the one
        // compared with, or built from, these very servers, so concurrent calls cannot pair a
        // server list with another list's ring.
        let ring = match same_ids {
            true => current,
            false => {
                let ring = Ring::build(&servers, self.virtual_nodes);
                tracing::debug!(
                    servers = ring.ids.len(),
                    points = ring.points.len(),
                    "rebuilt the consistent-hash ring"
                );
                Arc::new(ring)
            }
        };
        // Poisoning cannot leave the state half-updated: it is only ever replaced whole.
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = State { servers, ring };
    }

    fn pick(&self, user: UserId, exclude: &[ServerId]) -> Result<ServerInfo> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .ring
            .clockwise_from(key_hash(user))
            .filter_map(|index| state.servers.get(index))
            .find(|server| is_eligible(server, exclude))
            .cloned()
            .ok_or_else(|| no_live_server(&state.servers, exclude))
    }
}

impl Ring {
    /// The ring of `servers` (sorted by id, distinct), `virtual_nodes` points each.
    fn build(servers: &[ServerInfo], virtual_nodes: u32) -> Ring {
        let mut points: Vec<Point> = servers
            .iter()
            .enumerate()
            .flat_map(|(server, info)| {
                (0..virtual_nodes).map(move |i| Point {
                    hash: point_hash(&info.id, i),
                    server,
                })
            })
            .collect();
        // Sorting by (hash, server) also orders colliding hashes the same way everywhere.
        points.sort_unstable();
        Ring {
            ids: servers.iter().map(|s| s.id.clone()).collect(),
            points,
        }
    }

    /// The server index of every point, clockwise from the first point at or after `hash`,
    /// wrapping around once.
    fn clockwise_from(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|point| point.hash < hash);
        let (before, after) = self.points.split_at(start);
        after.iter().chain(before).map(|point| point.server)
    }
}

/// Where server `id`'s `i`-th point sits on the ring. Part of the routing contract between
/// replicas and releases: never change it.
fn point_hash(id: &ServerId, i: u32) -> u64 {
    xxh3_64(format!("{id}#{i}").as_bytes())
}

/// Where `user` sits on the ring. Part of the routing contract between replicas and releases:
/// never change it.
fn key_hash(user: UserId) -> u64 {
    xxh3_64(&user.0.to_le_bytes())
}

/// The keys of `[balancer]` for this strategy.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ConsistentHashOptions {
    /// Points per server on the ring.
    virtual_nodes: u32,
}

impl Default for ConsistentHashOptions {
    fn default() -> Self {
        ConsistentHashOptions {
            virtual_nodes: ConsistentHash::DEFAULT_VIRTUAL_NODES,
        }
    }
}

fn build_consistent_hash(options: BackendOptions) -> BuildFuture<dyn LoadBalancer> {
    Box::pin(async move {
        let ConsistentHashOptions { virtual_nodes } = options.parse()?;
        // A bad value in the config file is a configuration error, named by its key.
        let balancer = ConsistentHash::new(virtual_nodes).map_err(|e| {
            Error::config(format!(
                "{}.virtual_nodes: {}",
                options.section(),
                e.message()
            ))
        })?;
        Ok(Arc::new(balancer) as Arc<dyn LoadBalancer>)
    })
}

inventory::submit! {
    BalancerFactory::new(
        "consistent_hash",
        "each user sticks to one server; adding a server moves only its share of the users",
        build_consistent_hash,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ErrorKind;
    use crate::balancer::candidates::{test_id, test_server};

    const USERS: u64 = 10_000;

    fn servers(count: usize) -> Vec<ServerInfo> {
        (0..count)
            .map(|i| test_server(&format!("server-{i}"), 100, 0))
            .collect()
    }

    fn balancer_with(servers: Vec<ServerInfo>) -> ConsistentHash {
        let balancer = ConsistentHash::default();
        balancer.set_servers(servers);
        balancer
    }

    /// Which server each of the first [`USERS`] users gets.
    fn assignment(balancer: &ConsistentHash, exclude: &[ServerId]) -> Vec<ServerId> {
        (0..USERS)
            .map(|user| balancer.pick(UserId(user), exclude).expect("a server").id)
            .collect()
    }

    #[test]
    fn a_user_gets_the_same_server_across_calls_and_instances() {
        let first = balancer_with(servers(5));
        let mut reversed = servers(5);
        reversed.reverse();
        let second = balancer_with(reversed);

        let once = assignment(&first, &[]);
        assert_eq!(assignment(&first, &[]), once, "same instance, later calls");
        assert_eq!(assignment(&second, &[]), once, "independent instance");
    }

    #[test]
    fn hashes_are_pinned_so_every_replica_and_release_agrees() {
        // xxh3-64 is specified, so these values are the same on every machine. If this test
        // fails, the ring layout changed and an upgrade would move every user.
        assert_eq!(key_hash(UserId(42)), xxh3_64(&[42, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(point_hash(&test_id("server-1"), 7), xxh3_64(b"server-1#7"));
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn picks_only_among_the_servers_last_set() {
        let balancer = balancer_with(servers(3));
        balancer.set_servers(vec![test_server("x", 100, 0), test_server("y", 100, 0)]);
        for id in assignment(&balancer, &[]) {
            assert!(id.as_str() == "x" || id.as_str() == "y", "picked {id}");
        }
    }

    #[test]
    fn excluding_a_server_moves_only_its_users() {
        let balancer = balancer_with(servers(4));
        let before = assignment(&balancer, &[]);
        let gone = test_id("server-2");
        let after = assignment(&balancer, std::slice::from_ref(&gone));
        for (was, is) in before.iter().zip(&after) {
            assert_ne!(*is, gone);
            if *was != gone {
                assert_eq!(was, is, "a user of another server moved");
            }
        }
    }

    #[test]
    fn never_picks_a_server_of_weight_zero_and_its_users_return_with_its_weight() {
        let balancer = balancer_with(servers(4));
        let before = assignment(&balancer, &[]);

        let mut drained = servers(4);
        drained[1].weight = 0;
        balancer.set_servers(drained);
        let during = assignment(&balancer, &[]);
        assert!(during.iter().all(|id| id.as_str() != "server-1"));

        balancer.set_servers(servers(4));
        assert_eq!(assignment(&balancer, &[]), before);
    }

    #[test]
    fn fails_unavailable_with_no_server_left() {
        let balancer = ConsistentHash::default();
        let err = balancer.pick(UserId(1), &[]).expect_err("no servers set");
        assert_eq!(err.kind(), ErrorKind::Unavailable);

        balancer.set_servers(vec![test_server("a", 100, 0), test_server("b", 0, 0)]);
        let err = balancer
            .pick(UserId(1), &[test_id("a")])
            .expect_err("a excluded, b drained");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn the_ring_is_rebuilt_only_when_the_server_ids_change() {
        let balancer = balancer_with(servers(3));
        let ring = balancer.ring();

        let mut busier = servers(3);
        busier[0].load = 500;
        busier[2].weight = 0;
        busier.reverse();
        balancer.set_servers(busier);
        assert!(
            Arc::ptr_eq(&ring, &balancer.ring()),
            "only loads and weights changed"
        );
        let updated = balancer.pick(UserId(0), &[]).expect("a server");
        let stored = if updated.id.as_str() == "server-0" {
            500
        } else {
            0
        };
        assert_eq!(updated.load, stored, "the new registrations are served");

        balancer.set_servers(servers(4));
        assert!(!Arc::ptr_eq(&ring, &balancer.ring()), "a server was added");
    }

    #[test]
    fn adding_a_server_moves_about_one_share_of_users_all_to_it() {
        let balancer = balancer_with(servers(10));
        let before = assignment(&balancer, &[]);
        balancer.set_servers(servers(11));
        let after = assignment(&balancer, &[]);

        let newcomer = test_id("server-10");
        let mut moved = 0;
        for (was, is) in before.iter().zip(&after) {
            if was != is {
                assert_eq!(*is, newcomer, "a user moved between old servers");
                moved += 1;
            }
        }
        let fraction = moved as f64 / USERS as f64;
        assert!(
            (0.05..0.14).contains(&fraction),
            "moved {fraction}, expected about 1/11"
        );
    }

    #[test]
    fn virtual_nodes_spread_users_evenly() {
        let balancer = balancer_with(servers(10));
        let mut counts: BTreeMap<ServerId, u64> = BTreeMap::new();
        for id in assignment(&balancer, &[]) {
            *counts.entry(id).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 10);
        for (id, count) in counts {
            let share = count as f64 / USERS as f64;
            assert!(
                (0.05..0.15).contains(&share),
                "{id} got {share} of the users"
            );
        }
    }

    #[test]
    fn virtual_nodes_must_be_between_one_and_the_maximum() {
        for bad in [0, ConsistentHash::MAX_VIRTUAL_NODES + 1] {
            let err = ConsistentHash::new(bad).expect_err("out of range");
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
        let balancer = ConsistentHash::new(1).expect("one point per server is valid");
        balancer.set_servers(servers(2));
        assert!(balancer.pick(UserId(1), &[]).is_ok());
        assert_eq!(balancer.ring().points.len(), 2);
    }

    #[tokio::test]
    async fn is_registered_and_reads_virtual_nodes() {
        let options = BackendOptions::new("balancer", "consistent_hash");
        let balancer = crate::registry::build::<dyn LoadBalancer>(options.clone())
            .await
            .expect("builds with defaults");
        assert_eq!(balancer.name(), "consistent_hash");
        assert!(balancer.capabilities().sticky);

        let one_point = options.clone().with_option("virtual_nodes", 1);
        let balancer = crate::registry::build::<dyn LoadBalancer>(one_point)
            .await
            .expect("builds with virtual_nodes = 1");
        balancer.set_servers(servers(1));
        assert!(balancer.pick(UserId(1), &[]).is_ok());

        for bad in [
            options.clone().with_option("virtual_nodes", 0),
            options.clone().with_option("virtual_nodes", -1),
            options.with_option("vnodes", 8),
        ] {
            let err = crate::registry::build::<dyn LoadBalancer>(bad)
                .await
                .err()
                .expect("a bad key or value");
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        }
    }
}
