//! Following the cluster: which servers are alive, for the peer pool, and which of them died or
//! restarted, for this server's connections.
//!
//! A server acknowledges a message once it is stored and fans it out afterwards, off the
//! sender's task. If it dies in between (killed while its fan-out waited on a stalled session
//! store, say), the message is safe in the store but no other server hears of it, and its
//! recipients connected elsewhere would see it only at their next login. So every server
//! watches the others' registrations: when one disappears, or comes back under the same id
//! with a new [`incarnation`](ServerInfo::incarnation), each local connection catches up
//! from the store ([`Control::CatchUp`](cim_pipeline::mailbox::Control::CatchUp)), spread over a
//! few seconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cim_core::{MetaEvent, ServerId, ServerInfo};
use futures::StreamExt;
use tokio::time::sleep;

use crate::server::Shared;

/// How long to wait before watching the MetaStore again after the watch failed or ended; also
/// the polling period of a MetaStore that cannot watch.
const REWATCH_DELAY: Duration = Duration::from_secs(1);

/// Keeps the peer pool's server list equal to the MetaStore's live servers, and makes the local
/// connections catch up when another server dies or restarts.
pub(crate) async fn watch(shared: Arc<Shared>) {
    let meta = Arc::clone(&shared.stores.meta);
    let mut known = Incarnations::default();
    let mut update = |list: &[ServerInfo]| {
        shared.pool.set_servers(list);
        let lost = known.update(list, &shared.id);
        if !lost.is_empty() {
            let told = shared.local.catch_up_all();
            tracing::info!(servers = ?lost, connections = told, "servers died or restarted; connections catch up from the store");
        }
    };
    let follow = async {
        loop {
            if meta.capabilities().watch {
                match meta.watch().await {
                    Ok(mut events) => {
                        let mut servers = BTreeMap::new();
                        while let Some(event) = events.next().await {
                            match event {
                                Ok(MetaEvent::Snapshot(all)) => {
                                    servers = all.into_iter().map(|s| (s.id.clone(), s)).collect();
                                }
                                Ok(MetaEvent::Added(info) | MetaEvent::Updated(info)) => {
                                    servers.insert(info.id.clone(), info);
                                }
                                Ok(MetaEvent::Removed(id)) => {
                                    servers.remove(&id);
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "cluster watch hiccup");
                                    continue;
                                }
                            }
                            let list: Vec<ServerInfo> = servers.values().cloned().collect();
                            update(&list);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot watch the cluster"),
                }
            } else {
                match meta.list().await {
                    Ok(list) => update(&list),
                    Err(e) => tracing::warn!(error = %e, "cannot list the cluster"),
                }
            }
            sleep(REWATCH_DELAY).await;
        }
    };
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        () = follow => {}
    }
}

/// The incarnation of every other live server, as last seen.
#[derive(Debug, Default)]
struct Incarnations {
    servers: HashMap<ServerId, u64>,
    /// Whether a list was seen yet: the first one says nothing about deaths.
    seen: bool,
}

impl Incarnations {
    /// Takes the current list of live servers; returns the servers that died (missing now) or
    /// restarted (another incarnation) since the last list. `own` is never reported.
    fn update(&mut self, list: &[ServerInfo], own: &ServerId) -> Vec<ServerId> {
        let now: HashMap<ServerId, u64> = list
            .iter()
            .filter(|server| server.id != *own)
            .map(|server| (server.id.clone(), server.incarnation))
            .collect();
        let mut lost: Vec<ServerId> = if self.seen {
            self.servers
                .iter()
                .filter(|(id, incarnation)| now.get(*id) != Some(*incarnation))
                .map(|(id, _)| id.clone())
                .collect()
        } else {
            Vec::new()
        };
        lost.sort();
        self.servers = now;
        self.seen = true;
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str, incarnation: u64) -> ServerInfo {
        ServerInfo {
            incarnation,
            ..ServerInfo::new(ServerId::new(id).expect("id"), "127.0.0.1", 1, 2)
        }
    }

    fn id(id: &str) -> ServerId {
        ServerId::new(id).expect("id")
    }

    #[test]
    fn a_server_that_vanishes_or_restarts_is_lost_but_load_reports_and_newcomers_are_not() {
        let own = id("me");
        let mut known = Incarnations::default();
        assert!(
            known
                .update(&[server("a", 1), server("b", 2), server("me", 9)], &own)
                .is_empty(),
            "the first list reports nothing"
        );
        let mut busier = server("a", 1);
        busier.load = 500;
        assert!(
            known
                .update(&[busier, server("b", 2), server("c", 3)], &own)
                .is_empty(),
            "a load report and a new server are no loss"
        );
        assert_eq!(
            known.update(&[server("a", 7), server("c", 3), server("me", 10)], &own),
            vec![id("a"), id("b")],
            "a restarted under a new incarnation, b vanished; this server's own restart is not reported"
        );
        assert!(
            known
                .update(&[server("a", 7), server("c", 3)], &own)
                .is_empty()
        );
    }
}
