//! The server set the strategies keep, and the one eligibility rule they all apply.
//!
//! Every strategy must agree on what "eligible" means (not in the caller's `exclude`, weight
//! above 0) and fail the same way when nothing is, or the route would behave differently
//! depending on the configured strategy; so that rule lives here once. The servers are kept
//! sorted by id, without duplicate ids, so that round robin walks them in the same order on every
//! replica of the route and consistent hashing can index its ring by position.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use crate::{Error, Result, ServerId, ServerInfo};

/// The servers last given to `set_servers`, for the strategies that need nothing derived.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    servers: RwLock<Vec<ServerInfo>>,
}

impl Candidates {
    /// An empty set: every pick fails until [`Candidates::replace`] is called.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Replaces the servers (see [`sorted_by_id`]).
    pub(super) fn replace(&self, servers: Vec<ServerInfo>) {
        let servers = sorted_by_id(servers);
        // A writer only ever swaps the whole vector, so a panic elsewhere while the lock was
        // held cannot have left it half-updated: a poisoned lock is still safe to use.
        *self.servers.write().unwrap_or_else(PoisonError::into_inner) = servers;
    }

    /// Lets `choose` pick among the eligible servers (sorted by id, never empty) and returns a
    /// copy of its choice; with no eligible server, or if `choose` declines, fails with
    /// [`no_live_server`].
    pub(super) fn pick<F>(&self, exclude: &[ServerId], choose: F) -> Result<ServerInfo>
    where
        F: for<'s> FnOnce(&[&'s ServerInfo]) -> Option<&'s ServerInfo>,
    {
        let servers = self.servers.read().unwrap_or_else(PoisonError::into_inner);
        let eligible: Vec<&ServerInfo> = servers
            .iter()
            .filter(|server| is_eligible(server, exclude))
            .collect();
        let chosen = match eligible.is_empty() {
            true => None,
            false => choose(&eligible),
        };
        chosen
            .cloned()
            .ok_or_else(|| no_live_server(&servers, exclude))
    }
}

/// `servers` sorted by id; when an id appears more than once, the last registration wins.
pub(super) fn sorted_by_id(servers: Vec<ServerInfo>) -> Vec<ServerInfo> {
    let by_id: BTreeMap<ServerId, ServerInfo> = servers
        .into_iter()
        .map(|server| (server.id.clone(), server))
        .collect();
    by_id.into_values().collect()
}

/// Whether `server` may receive a new user: the caller did not exclude it and its weight is
/// above 0 (weight 0 is how an operator drains a server).
pub(super) fn is_eligible(server: &ServerInfo, exclude: &[ServerId]) -> bool {
    server.weight > 0 && !exclude.contains(&server.id)
}

/// The [`Unavailable`](crate::ErrorKind::Unavailable) error of a pick that found no eligible
/// server among `servers`, saying why.
pub(super) fn no_live_server(servers: &[ServerInfo], exclude: &[ServerId]) -> Error {
    let excluded = servers
        .iter()
        .filter(|server| exclude.contains(&server.id))
        .count();
    let drained = servers
        .iter()
        .filter(|server| server.weight == 0 && !exclude.contains(&server.id))
        .count();
    let message = match servers.is_empty() {
        true => {
            "no live server available: none is registered; start a cim server and check that it \
             reaches the meta store"
        }
        false => {
            "no live server available: every known server is excluded as unreachable or has \
             weight 0; retry once a server is back or raise a weight"
        }
    };
    Error::unavailable(message)
        .with_context("servers", servers.len())
        .with_context("excluded", excluded)
        .with_context("weight_zero", drained)
}

/// A registration for tests: `id` with the given weight and load.
#[cfg(test)]
pub(super) fn test_server(id: &str, weight: u32, load: u64) -> ServerInfo {
    let mut server = ServerInfo::new(
        ServerId::new(id).expect("valid id"),
        "127.0.0.1",
        7000,
        7001,
    );
    server.weight = weight;
    server.load = load;
    server
}

/// The id `id`, for tests.
#[cfg(test)]
pub(super) fn test_id(id: &str) -> ServerId {
    ServerId::new(id).expect("valid id")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn a_repeated_id_keeps_its_last_registration_and_ids_come_out_sorted() {
        let servers = sorted_by_id(vec![
            test_server("b", 100, 1),
            test_server("a", 100, 0),
            test_server("b", 100, 2),
        ]);
        let ids: Vec<&str> = servers.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(servers[1].load, 2);
    }

    #[test]
    fn the_error_counts_known_excluded_and_drained_servers() {
        let servers = [
            test_server("a", 100, 0),
            test_server("b", 0, 0),
            test_server("c", 100, 0),
        ];
        let err = no_live_server(&servers, &[test_id("a"), test_id("c"), test_id("zz")]);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        assert_eq!(
            err.context(),
            [
                ("servers", "3".to_string()),
                ("excluded", "2".to_string()),
                ("weight_zero", "1".to_string())
            ]
        );
    }

    #[test]
    fn choose_is_never_called_without_an_eligible_server() {
        let candidates = Candidates::new();
        candidates.replace(vec![test_server("a", 0, 0)]);
        let err = candidates
            .pick(&[], |_| panic!("called with no eligible server"))
            .expect_err("nothing eligible");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
}
