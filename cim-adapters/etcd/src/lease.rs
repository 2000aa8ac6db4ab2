//! Leases, as both stores hold them: etcd deletes every key attached to a lease when the lease
//! expires or is revoked, so "alive" is simply "the lease is renewed", and a dead process needs
//! nobody to clean up after it.
//!
//! A [`Renewer`] keeps one keep-alive stream open per lease and sends one request per renewal on
//! it; a stream that broke or did not answer in time is dropped and opened again at the next
//! renewal, so an etcd restart costs one failed renewal at most. etcd answers a renewal of an
//! unknown lease with a TTL of 0 (or, when the stream opens, with "lease not found"): that is
//! [`Renewal::Lost`], and the owner then acquires a new lease.

use std::time::Duration;

use cim_core::Result;
use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use crate::connection::{Etcd, lease_lost};

/// A lease etcd granted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Granted {
    /// The lease id.
    pub(crate) id: i64,
    /// The TTL etcd granted: the one asked for, or etcd's minimum if that is longer.
    pub(crate) ttl: Duration,
}

/// Grants a lease of `seconds`.
pub(crate) async fn grant(etcd: &Etcd, seconds: i64) -> Result<Granted> {
    let response = etcd
        .call("grant lease", etcd.lease().grant(seconds, None))
        .await?;
    let ttl = u64::try_from(response.ttl().max(seconds)).unwrap_or(u64::MAX);
    Ok(Granted {
        id: response.id(),
        ttl: Duration::from_secs(ttl),
    })
}

/// Revokes lease `id`, deleting its keys; false if it was gone already.
pub(crate) async fn revoke(etcd: &Etcd, id: i64) -> Result<bool> {
    match etcd.call("revoke lease", etcd.lease().revoke(id)).await {
        Ok(_) => Ok(true),
        Err(error) if lease_lost(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Revokes lease `id` if etcd can be reached; otherwise it simply expires. For cleaning up after
/// a failed operation, where the operation's own error is the one to report.
pub(crate) async fn revoke_quietly(etcd: &Etcd, id: i64) {
    if let Err(error) = revoke(etcd, id).await {
        tracing::debug!(%error, lease = id, "etcd: could not revoke an unused lease; it will expire");
    }
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The lease is alive for another TTL.
    Alive,
    /// The lease no longer exists: it expired or was revoked, and its keys are gone.
    Lost,
}

/// Renews one lease over a keep-alive stream that it reopens when needed.
pub(crate) struct Renewer {
    id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("id", &self.id)
            .field("open", &self.stream.is_some())
            .finish()
    }
}

impl Renewer {
    /// A renewer for lease `id`; the stream opens at the first renewal.
    pub(crate) fn new(id: i64) -> Renewer {
        Renewer { id, stream: None }
    }

    /// The lease this renewer renews.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// Renews the lease once: `Alive`, `Lost`, or an `Unavailable`/`Timeout` error when etcd
    /// could not say.
    pub(crate) async fn renew(&mut self, etcd: &Etcd) -> Result<Renewal> {
        if let Some((keeper, stream)) = &mut self.stream {
            let exchange = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            if let Ok(Some(response)) = etcd.call("renew lease", exchange).await {
                return Ok(if response.ttl() > 0 {
                    Renewal::Alive
                } else {
                    Renewal::Lost
                });
            }
            // Broken, closed or late (a late answer could be read as the next one's): reopen.
            self.stream = None;
        }
        // Opening the stream sends the first renewal and reads its answer.
        match etcd
            .call("renew lease", etcd.lease().keep_alive(self.id))
            .await
        {
            Ok(opened) => {
                self.stream = Some(opened);
                Ok(Renewal::Alive)
            }
            Err(error) if lease_lost(&error) => Ok(Renewal::Lost),
            Err(error) => Err(error),
        }
    }
}
