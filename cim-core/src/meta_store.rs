//! [`MetaStore`]: server registration and discovery.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{Result, ServerId, ServerInfo};

/// What a [`MetaStore`] backend can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetaCapabilities {
    /// [`MetaStore::watch`] is available.
    pub watch: bool,
    /// The shortest lease TTL the backend can keep (ZooKeeper: twice its tick time).
    pub min_ttl: Duration,
}

impl MetaCapabilities {
    /// Nothing optional: start from this and switch on what the backend honours, so that a
    /// capability added to cim later is never claimed by accident.
    pub const NONE: MetaCapabilities = MetaCapabilities {
        watch: false,
        min_ttl: Duration::ZERO,
    };

    /// Everything: watch supported, no lower bound on the TTL.
    pub const ALL: MetaCapabilities = MetaCapabilities {
        watch: true,
        min_ttl: Duration::ZERO,
    };
}

/// One change seen by [`MetaStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaEvent {
    /// The complete set of live servers. Always the first event; sent again (a resync) whenever
    /// the store may have missed changes, and then it replaces everything the watcher knew.
    Snapshot(Vec<ServerInfo>),
    /// A server registered.
    Added(ServerInfo),
    /// A live server changed its registration (load, weight, metadata...).
    Updated(ServerInfo),
    /// A server deregistered, or its lease expired.
    Removed(ServerId),
}

/// The stream returned by [`MetaStore::watch`].
pub type MetaWatch = BoxStream<'static, Result<MetaEvent>>;

/// Server registration and discovery.
///
/// # Contract
///
/// - **Registration and leases.** [`register`](Self::register) adds a server and returns a
///   [`Registration`] whose lease the store renews in the background for as long as the
///   registration value lives. The lease TTL is part of the store's configuration (`[meta] ttl`);
///   [`Registration::ttl`] reports the one in force.
///   - [`Registration::deregister`] removes the server at once.
///   - Dropping the registration without deregistering stops the renewals, as the owner's death
///     does: the server disappears from `list()` and watchers see it removed within the TTL (plus
///     the backend's own tolerance, at most one more TTL).
///   - Registering an id that has a live registration fails with
///     [`AlreadyExists`](crate::ErrorKind::AlreadyExists), retryable: a restarted server waits for
///     its predecessor's lease to expire rather than two processes sharing an id.
///   - If the backend loses the lease (session expiry, network partition) while the
///     `Registration` lives, the store registers the server again as soon as it can.
/// - **Listing.** [`list`](Self::list) returns the live servers, ordered by id.
/// - **Watching.** [`watch`](Self::watch) yields [`MetaEvent::Snapshot`] first, then `Added`,
///   `Updated` and `Removed` events in the order the changes happened. Folding the events (a
///   snapshot replaces the state) always converges to what `list()` returns. When the store
///   cannot guarantee it saw every change (a lost connection, compacted history, a slow watcher
///   that fell behind) it sends a fresh `Snapshot` instead of silently skipping events. The
///   stream ends only when the store is dropped; errors in it are transient (the next item may be
///   a snapshot).
/// - **Errors.** `Unavailable` / `Timeout` when the backend cannot be reached, `InvalidInput` for
///   a registration that cannot be stored, `Unsupported` for `watch` when not in the capabilities.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// What this backend can honour.
    fn capabilities(&self) -> MetaCapabilities;

    /// Registers `info` and keeps it alive until the returned registration is deregistered or
    /// dropped.
    async fn register(&self, info: ServerInfo) -> Result<Registration>;

    /// The live servers, ordered by id.
    async fn list(&self) -> Result<Vec<ServerInfo>>;

    /// A stream of changes, starting with a snapshot.
    async fn watch(&self) -> Result<MetaWatch>;
}

/// The backend's side of a [`Registration`]: what an adapter implements to hold a lease.
#[async_trait]
pub trait Lease: Send + Sync + 'static {
    /// The registered server's id.
    fn server_id(&self) -> &ServerId;

    /// The TTL the lease is kept with.
    fn ttl(&self) -> Duration;

    /// Replaces the registered information (same id); watchers see `Updated`.
    async fn update(&self, info: ServerInfo) -> Result<()>;

    /// Removes the registration now and stops renewing.
    async fn deregister(self: Box<Self>) -> Result<()>;
}

/// A live server registration. Renewed in the background while it lives; see [`MetaStore`].
pub struct Registration {
    lease: Box<dyn Lease>,
}

impl Registration {
    /// Wraps a backend's lease. Dropping the lease must stop its renewals.
    pub fn new(lease: Box<dyn Lease>) -> Self {
        Registration { lease }
    }

    /// The registered server's id.
    pub fn server_id(&self) -> &ServerId {
        self.lease.server_id()
    }

    /// The TTL in force.
    pub fn ttl(&self) -> Duration {
        self.lease.ttl()
    }

    /// Replaces the registered information; `info.id` must be this registration's id.
    pub async fn update(&self, info: ServerInfo) -> Result<()> {
        if &info.id != self.server_id() {
            return Err(crate::Error::invalid_input(format!(
                "cannot update registration of {} with information for {}",
                self.server_id(),
                info.id
            )));
        }
        self.lease.update(info).await
    }

    /// Removes the registration now.
    pub async fn deregister(self) -> Result<()> {
        self.lease.deregister().await
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("server_id", self.server_id())
            .field("ttl", &self.ttl())
            .finish()
    }
}
