//! Discovery: the route's view of the live servers, kept current from the MetaStore.
//!
//! The load balancer wants the server set handed to it when it changes, never looked up per
//! login (the original cim rebuilt its hash ring on every login), and so do the internal links
//! to the servers. One task per route folds the MetaStore's watch events into the current set
//! and publishes every change to both, and to a `watch` channel that `GET /api/v1/servers` reads.
//!
//! The watch stream's errors are transient by contract (a snapshot follows), so the task only
//! logs them. If the stream ends or cannot be opened, the last known set stays in force and the
//! task watches again after `discovery_interval`; a MetaStore without watch support is listed
//! every `discovery_interval` instead.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cim_core::{LoadBalancer, MetaEvent, MetaStore, ServerId, ServerInfo};
use cim_pipeline::PeerPool;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The discovery task. Dropping this stops it.
#[derive(Debug)]
pub(crate) struct Discovery {
    task: JoinHandle<()>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where discovery publishes the live servers.
pub(crate) struct Subscribers {
    /// Picks a server at login.
    pub(crate) balancer: Arc<dyn LoadBalancer>,
    /// Internal links to the servers.
    pub(crate) peers: PeerPool,
    /// Everyone else (the `/servers` endpoint, tests, embedders).
    pub(crate) cluster: watch::Sender<Arc<Vec<ServerInfo>>>,
}

impl Discovery {
    /// Starts following `meta`, publishing to `subscribers`.
    pub(crate) fn spawn(
        meta: Arc<dyn MetaStore>,
        subscribers: Subscribers,
        interval: Duration,
    ) -> Discovery {
        let follower = Follower {
            meta,
            subscribers,
            interval,
            known: BTreeMap::new(),
        };
        Discovery {
            task: tokio::spawn(follower.run()),
        }
    }
}

/// The state of the discovery task.
struct Follower {
    meta: Arc<dyn MetaStore>,
    subscribers: Subscribers,
    interval: Duration,
    known: BTreeMap<ServerId, ServerInfo>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            if self.meta.capabilities().watch {
                self.follow_watch().await;
            } else {
                self.list_once().await;
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// Follows one watch stream until it ends.
    async fn follow_watch(&mut self) {
        let mut events = match self.meta.watch().await {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?self.interval, "cannot watch the servers");
                return;
            }
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    self.apply(event);
                    self.publish();
                }
                Err(error) => tracing::warn!(%error, "the server watch reported an error"),
            }
        }
        tracing::warn!(retry_in = ?self.interval, "the server watch ended; watching again");
    }

    /// Replaces the known servers with a fresh listing.
    async fn list_once(&mut self) {
        match self.meta.list().await {
            Ok(servers) => {
                self.apply(MetaEvent::Snapshot(servers));
                self.publish();
            }
            Err(error) => tracing::warn!(%error, "cannot list the servers"),
        }
    }

    fn apply(&mut self, event: MetaEvent) {
        match event {
            MetaEvent::Snapshot(servers) => {
                self.known = servers
                    .into_iter()
                    .map(|info| (info.id.clone(), info))
                    .collect();
            }
            MetaEvent::Added(info) | MetaEvent::Updated(info) => {
                self.known.insert(info.id.clone(), info);
            }
            MetaEvent::Removed(id) => {
                self.known.remove(&id);
            }
        }
    }

    /// Hands the known servers to every subscriber, if they changed.
    fn publish(&self) {
        let servers: Vec<ServerInfo> = self.known.values().cloned().collect();
        if **self.subscribers.cluster.borrow() == servers {
            return;
        }
        tracing::info!(
            servers = ?servers.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            "live servers changed"
        );
        self.subscribers.balancer.set_servers(servers.clone());
        self.subscribers.peers.set_servers(&servers);
        self.subscribers.cluster.send_replace(Arc::new(servers));
    }
}
