//! [`LoadBalancer`]: which server a user gets.
//!
//! The built-in strategies live in [`crate::balancer`]; custom ones register a
//! [`BalancerFactory`](crate::registry::BalancerFactory) and are chosen by `[balancer] strategy`.

use crate::{Result, ServerId, ServerInfo, UserId};

/// What a [`LoadBalancer`] strategy promises beyond the basic contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BalancerCapabilities {
    /// Sticky: while the server set is unchanged a user always gets the same server, and adding
    /// one server to N moves only about 1/(N+1) of the users, all of them to the new server.
    pub sticky: bool,
}

impl BalancerCapabilities {
    /// Nothing beyond the basic contract.
    pub const NONE: BalancerCapabilities = BalancerCapabilities { sticky: false };
    /// Every promise (sticky).
    pub const ALL: BalancerCapabilities = BalancerCapabilities { sticky: true };
}

/// Chooses a server for a user among the live ones.
///
/// Picking is a pure in-memory decision, on the route's hot path, so it is synchronous: it must
/// not block or do I/O.
///
/// # Contract
///
/// - [`set_servers`](Self::set_servers) gives the balancer the current live servers. The route
///   calls it when the set or a registration changes (from [`MetaStore::watch`]), never per
///   pick; a strategy that needs a derived structure (the consistent-hash ring) rebuilds it there,
///   and only when the set of server ids changed.
/// - [`pick`](Self::pick) returns one of the servers last set, never one in `exclude` (servers the
///   caller found unreachable) and never one of weight 0. With none left it fails with
///   [`Unavailable`](crate::ErrorKind::Unavailable).
/// - It is safe to call from many threads at once.
///
/// [`MetaStore::watch`]: crate::MetaStore::watch
pub trait LoadBalancer: Send + Sync + 'static {
    /// The strategy's registered name (`round_robin`, `consistent_hash`...).
    fn name(&self) -> &str;

    /// What this strategy promises.
    fn capabilities(&self) -> BalancerCapabilities;

    /// Replaces the candidate servers.
    fn set_servers(&self, servers: Vec<ServerInfo>);

    /// Picks a server for `user`, skipping `exclude`.
    fn pick(&self, user: UserId, exclude: &[ServerId]) -> Result<ServerInfo>;
}
