//! One [`Etcd`] handle per store: an `etcd-client` [`Client`] (a gRPC channel balanced over the
//! members, reconnecting by itself after a member went away, so an etcd restart never needs a cim
//! restart) and the deadline every request runs under. Every etcd error becomes a
//! [`cim_core::Error`] here, at the edge, with the operation named.
//!
//! The deadline is kept here rather than left to the gRPC channel: while no member is reachable
//! the balanced channel holds requests until one is, so only a deadline around the whole call
//! guarantees that an operation fails promptly instead of hanging.

use std::future::Future;
use std::time::Duration;

use cim_core::{Error, Result};
use etcd_client::{
    Client, ConnectOptions, GetOptions, KvClient, LeaseClient, Txn, TxnOpResponse, TxnResponse,
    WatchClient,
};

use crate::EtcdConfig;

/// The gRPC status codes this module tells apart (`tonic::Code` as numbers, so that this crate
/// needs no direct dependency on tonic).
mod code {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

/// How often an open connection is pinged: well above etcd's default minimum of 5 s.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A connected etcd: the client and the configuration it was opened with.
#[derive(Clone)]
pub(crate) struct Etcd {
    client: Client,
    config: EtcdConfig,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.config.endpoints)
            .field("user", &self.config.user)
            .finish()
    }
}

impl Etcd {
    /// Opens a client for `config.endpoints` and checks that etcd answers a read under `root`;
    /// fails with `Config` for bad settings and `Unavailable` when no member can be reached.
    pub(crate) async fn connect(config: &EtcdConfig, root: &str) -> Result<Etcd> {
        config.validate()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            // HTTP/2 pings notice a member that vanished without closing the connection (a
            // network partition), which would otherwise leave a watch waiting forever. etcd
            // closes connections that ping more often than every 5 s, or at all without an open
            // stream (its --grpc-keepalive-min-time and gRPC's policy), so: every 10 s, only
            // while a stream is open.
            .with_keep_alive(KEEP_ALIVE_INTERVAL, config.request_timeout)
            .with_keep_alive_while_idle(false);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options
                .with_user(user.clone(), password.expose())
                .with_auto_token_refresh(true);
        }
        // Without credentials this only builds the channel; with them it also authenticates.
        let connect = Client::connect(&config.endpoints, Some(options));
        let client = match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                return Err(
                    convert(error, "connect").with_context("endpoints", config.endpoints.join(","))
                );
            }
            Err(_) => return Err(unreachable(config)),
        };
        let etcd = Etcd {
            client,
            config: config.clone(),
        };
        // One read proves a member answers (and that the user may read here).
        let mut kv = etcd.kv();
        let probe = kv.get(root, Some(GetOptions::new().with_count_only()));
        match tokio::time::timeout(config.connect_timeout, probe).await {
            Ok(Ok(_)) => Ok(etcd),
            Ok(Err(error)) => {
                Err(convert(error, "connect").with_context("endpoints", config.endpoints.join(",")))
            }
            Err(_) => Err(unreachable(config)),
        }
    }

    /// A KV client (a cheap clone sharing the channel).
    pub(crate) fn kv(&self) -> KvClient {
        self.client.kv_client()
    }

    /// A lease client (a cheap clone sharing the channel).
    pub(crate) fn lease(&self) -> LeaseClient {
        self.client.lease_client()
    }

    /// A watch client (a cheap clone sharing the channel).
    pub(crate) fn watcher(&self) -> WatchClient {
        self.client.watch_client()
    }

    /// Runs one request under `request_timeout`, converting its error.
    pub(crate) async fn call<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.config.request_timeout, request).await {
            Ok(outcome) => outcome.map_err(|e| convert(e, operation)),
            Err(_) => Err(Error::timeout(format!(
                "etcd did not answer within request_timeout ({:?}); check that a majority of \
                 its members run and that endpoints is right",
                self.config.request_timeout
            ))
            .with_context("backend", "etcd")
            .with_context("operation", operation)),
        }
    }

    /// Runs `txn`; see [`Etcd::call`].
    pub(crate) async fn txn(&self, operation: &'static str, txn: Txn) -> Result<TxnResponse> {
        self.call(operation, self.kv().txn(txn)).await
    }
}

fn unreachable(config: &EtcdConfig) -> Error {
    Error::unavailable(format!(
        "cannot reach etcd within connect_timeout ({:?}); check that it runs and that endpoints \
         is right",
        config.connect_timeout
    ))
    .with_context("backend", "etcd")
    .with_context("endpoints", config.endpoints.join(","))
}

/// Converts an etcd error from `operation` into a cim error of the matching kind.
///
/// `NotFound` means one thing in this crate: the lease named in the request no longer exists
/// (it expired or was revoked). Callers that hold a lease look for that kind.
pub(crate) fn convert(error: etcd_client::Error, operation: &'static str) -> Error {
    use etcd_client::Error as E;
    let base = match &error {
        E::GRpcStatus(status) => match status.code() as i32 {
            code::UNAVAILABLE => Error::unavailable(
                "cannot reach etcd; check that it runs and that endpoints is right",
            ),
            code::DEADLINE_EXCEEDED => {
                Error::timeout("etcd did not answer in time (see request_timeout)")
            }
            code::CANCELLED if status.message().contains("imeout") => {
                Error::timeout("etcd did not answer in time (see request_timeout)")
            }
            code::CANCELLED => Error::unavailable("the request to etcd was cut off; retry"),
            code::NOT_FOUND => Error::not_found("the etcd lease is gone (expired or revoked)"),
            code::UNAUTHENTICATED | code::PERMISSION_DENIED => Error::unauthenticated(
                "etcd refused the credentials or the permission; check user, password and the \
                 user's role on the prefix",
            ),
            code::RESOURCE_EXHAUSTED => Error::unavailable(
                "etcd is out of space or overloaded (its quota alarm may be raised); retry later",
            ),
            // etcd answers bad or missing credentials with InvalidArgument.
            code::INVALID_ARGUMENT
                if status.message().contains("authentication")
                    || status.message().contains("user name") =>
            {
                Error::unauthenticated(
                    "etcd refused the credentials; check user and password (etcd has \
                     authentication enabled)",
                )
            }
            code::INVALID_ARGUMENT | code::FAILED_PRECONDITION => {
                Error::internal("etcd rejected a request")
            }
            code::UNKNOWN if status.message().contains("transport") => Error::unavailable(
                "cannot reach etcd; check that it runs and that endpoints is right",
            ),
            _ => Error::unavailable("etcd failed the request; retry"),
        },
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => {
            Error::unavailable("cannot reach etcd; check that it runs and that endpoints is right")
        }
        E::LeaseKeepAliveError(message) if message.contains("not found") => {
            Error::not_found("the etcd lease is gone (expired or revoked)")
        }
        E::LeaseKeepAliveError(_) => {
            Error::unavailable("the lease keep-alive stream to etcd broke; retry")
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => {
            Error::config("the etcd endpoints are not valid; write http://host:port")
        }
        _ => Error::internal("the etcd client failed"),
    };
    base.with_context("backend", "etcd")
        .with_context("operation", operation)
        .with_source(error)
}

/// Whether `error` says the lease it used is gone (see [`convert`]).
pub(crate) fn lease_lost(error: &Error) -> bool {
    error.kind() == cim_core::ErrorKind::NotFound
}

/// The key-value pairs of the `index`-th operation of a transaction's response (a range),
/// empty if it was no range.
pub(crate) fn range_result(response: &TxnResponse, index: usize) -> Vec<etcd_client::KeyValue> {
    match response.op_responses().into_iter().nth(index) {
        Some(TxnOpResponse::Get(mut get)) => get.take_kvs(),
        _ => Vec::new(),
    }
}

/// Zero-padded decimal, so that etcd's byte order of keys is numeric order for every `u64`.
pub(crate) fn padded(id: u64) -> String {
    format!("{id:020}")
}

/// The first key after every key that starts with `prefix`: the end of a prefix range.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0]
}

/// A TTL in whole seconds for etcd, rounded up (etcd's leases have a granularity of one second),
/// at least 1.
pub(crate) fn lease_seconds(ttl: Duration) -> i64 {
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(whole.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_seconds(Duration::from_secs(2)), 2);
        assert_eq!(lease_seconds(Duration::from_millis(2001)), 3);
        assert_eq!(lease_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/cim/a/"), b"/cim/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn padded_ids_sort_numerically() {
        assert!(padded(9) < padded(10));
        assert_eq!(padded(u64::MAX).len(), 20);
    }
}
