//! [`ZooKeeper`]: one ZooKeeper session, replaced when it ends.
//!
//! A `zookeeper_client::Client` *is* a session: it reconnects by itself after a lost connection,
//! but once the session expired (ZooKeeper was unreachable for longer than 1.4 session timeouts,
//! or told the client so) it is dead for good. Everything this adapter keeps in ZooKeeper hangs on
//! sessions (ephemeral nodes), so this wrapper opens a new session on demand; the stores put back
//! what the old one held.
//!
//! Operations never wait for a connection forever: [`ZooKeeper::client`] waits at most
//! `request_timeout` for a lost connection to come back and fails with `Unavailable` (nothing was
//! sent), and [`ZooKeeper::within`] bounds each request by the same timeout (`Timeout`: the effect
//! is unknown). Every ZooKeeper error becomes a [`cim_core::Error`] here, at the edge.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cim_core::{Error, Result};
use zookeeper_client::{self as zk, Acls, Client, CreateMode, MultiWriteError, SessionState};

use crate::ZooKeeperConfig;

/// A ZooKeeper session that is replaced by a new one when it expires.
pub(crate) struct ZooKeeper {
    config: ZooKeeperConfig,
    session_timeout: Duration,
    current: Mutex<Option<Client>>,
    /// Held while a new session is opened, so that concurrent callers open only one.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ZooKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeper")
            .field("connect", &self.config.connect)
            .field("root", &self.config.root)
            .field("session", &self.peek().map(|c| c.session_id()))
            .finish()
    }
}

impl ZooKeeper {
    /// A handle that opens its first session on first use, asking for `session_timeout`.
    pub(crate) fn new(config: &ZooKeeperConfig, session_timeout: Duration) -> ZooKeeper {
        ZooKeeper {
            config: config.clone(),
            session_timeout,
            current: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// A handle with its session open: fails now, with `Unavailable` or `Config`, if ZooKeeper
    /// cannot be reached or `connect` is malformed.
    pub(crate) async fn open(
        config: &ZooKeeperConfig,
        session_timeout: Duration,
    ) -> Result<ZooKeeper> {
        let zk = ZooKeeper::new(config, session_timeout);
        zk.client().await?;
        Ok(zk)
    }

    /// The configuration this handle was made with.
    pub(crate) fn config(&self) -> &ZooKeeperConfig {
        &self.config
    }

    /// The session timeout ZooKeeper granted (it clamps the asked one to its
    /// `minSessionTimeout`..`maxSessionTimeout`), or the asked one before the first session.
    pub(crate) fn session_timeout(&self) -> Duration {
        self.peek()
            .map_or(self.session_timeout, |client| client.session_timeout())
    }

    /// The current session's client, whatever its state, without opening one.
    pub(crate) fn peek(&self) -> Option<Client> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A connected client: the current session's, or a new session's if the current one ended.
    /// Waits at most `request_timeout` for a lost connection to come back.
    pub(crate) async fn client(&self) -> Result<Client> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        // A session that ends while we wait for it is replaced once.
        for _ in 0..2 {
            let client = self.session().await?;
            let mut states = client.state_watcher();
            loop {
                match states.peek_state() {
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        return Ok(client);
                    }
                    SessionState::Disconnected => {
                        if tokio::time::timeout_at(deadline, states.changed())
                            .await
                            .is_err()
                        {
                            return Err(self.unreachable());
                        }
                    }
                    // Ended: replace it.
                    _ => break,
                }
            }
        }
        Err(self.unreachable())
    }

    fn unreachable(&self) -> Error {
        Error::unavailable(format!(
            "lost the connection to ZooKeeper at {} and it did not come back within \
             request_timeout ({:?}); retry once ZooKeeper is reachable",
            self.config.connect, self.config.request_timeout
        ))
        .with_context("backend", "zookeeper")
    }

    /// The current session if it has not ended, else a new one.
    async fn session(&self) -> Result<Client> {
        let live = |client: &Option<Client>| {
            client
                .as_ref()
                .filter(|client| !client.state().is_terminated())
                .cloned()
        };
        if let Some(client) = live(&self.peek()) {
            return Ok(client);
        }
        let _opening = self.opening.lock().await;
        if let Some(client) = live(&self.peek()) {
            return Ok(client);
        }
        let ended = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(ended) = ended {
            tracing::info!(
                session = %ended.session_id(),
                state = %ended.state(),
                "zookeeper: session ended; opening a new one"
            );
        }
        let client = connect(&self.config, self.session_timeout).await?;
        if client.session_timeout().as_millis() != self.session_timeout.as_millis() {
            tracing::warn!(
                asked = ?self.session_timeout,
                granted = ?client.session_timeout(),
                "zookeeper: the server clamped the session timeout (the section's ttl) to its \
                 minSessionTimeout..maxSessionTimeout; what a dead node held lasts that long"
            );
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(client.clone());
        Ok(client)
    }

    /// Runs one request, bounded by `request_timeout`. The outer error is the timeout; the inner
    /// result is ZooKeeper's answer, for the caller to match on.
    pub(crate) async fn within<T, E>(
        &self,
        operation: &'static str,
        request: impl Future<Output = std::result::Result<T, E>>,
    ) -> Result<std::result::Result<T, E>> {
        self.bounded(operation, request).await
    }

    /// Awaits `requests`, bounded by `request_timeout`.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &'static str,
        requests: impl Future<Output = T>,
    ) -> Result<T> {
        let limit = self.config.request_timeout;
        tokio::time::timeout(limit, requests).await.map_err(|_| {
            Error::timeout(format!(
                "ZooKeeper did not answer within request_timeout ({limit:?})"
            ))
            .with_context("backend", "zookeeper")
            .with_context("operation", operation)
        })
    }

    /// Runs one request, bounded by `request_timeout`, converting every error.
    pub(crate) async fn call<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = std::result::Result<T, zk::Error>>,
    ) -> Result<T> {
        self.within(operation, request)
            .await?
            .map_err(|e| convert(e, operation))
    }

    /// The ACL of every node under `{root}/{namespace}`: the credentials' only when `digest` is
    /// set, else open.
    pub(crate) fn acls(&self) -> Acls<'static> {
        if self.config.digest.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }

    /// Creates `path` (below `root`) and its missing ancestors as persistent nodes: `root` and
    /// above open to every deployment, the nodes below with [`ZooKeeper::acls`].
    pub(crate) async fn ensure_path(&self, client: &Client, path: &str) -> Result<()> {
        let root = self.config.root.as_str();
        if root != "/" {
            let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
            self.within("create nodes", client.mkdir(root, &open))
                .await?
                .map_err(|e| mkdir_error(e, root))?;
        }
        let protected = CreateMode::Persistent.with_acls(self.acls());
        self.within("create nodes", client.mkdir(path, &protected))
            .await?
            .map_err(|e| mkdir_error(e, path))
    }
}

fn mkdir_error(error: zk::Error, path: &str) -> Error {
    match error {
        zk::Error::NoNode => Error::config(
            "the chroot in `connect` (host:port/chroot) does not exist in ZooKeeper; create it or \
             drop it from `connect`",
        )
        .with_context("backend", "zookeeper")
        .with_source(error),
        error => convert(error, "create nodes").with_context("path", path),
    }
}

/// Opens a new session, bounded by `connect_timeout`.
async fn connect(config: &ZooKeeperConfig, session_timeout: Duration) -> Result<Client> {
    let mut connector = Client::connector().with_session_timeout(session_timeout);
    if let Some(digest) = &config.digest {
        connector = connector.with_auth("digest", digest.expose().as_bytes());
    }
    match tokio::time::timeout(config.connect_timeout, connector.connect(&config.connect)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(zk::Error::BadArguments(why))) => Err(Error::config(format!(
            "connect = {:?} is not a ZooKeeper connect string ({why}); write \
             host:port[,host:port...][/chroot]",
            config.connect
        ))
        .with_context("backend", "zookeeper")),
        Ok(Err(error)) => Err(convert(error, "connect").with_context("connect", &config.connect)),
        Err(_) => Err(Error::unavailable(format!(
            "no ZooKeeper session could be established with {} within connect_timeout ({:?}); \
             check that ZooKeeper runs and that `connect` is right",
            config.connect, config.connect_timeout
        ))
        .with_context("backend", "zookeeper")),
    }
}

/// Converts a ZooKeeper error from `operation` into a cim error of the matching kind.
pub(crate) fn convert(error: zk::Error, operation: &'static str) -> Error {
    use zk::Error as Zk;
    let base = match &error {
        Zk::Timeout => Error::timeout("ZooKeeper did not answer in time (see request_timeout)"),
        Zk::ConnectionLoss
        | Zk::NoHosts
        | Zk::SessionExpired
        | Zk::SessionMoved
        | Zk::ClientClosed
        | Zk::Throttled
        | Zk::NotReadOnly => Error::unavailable(
            "lost the connection or the session to ZooKeeper; retry once it is reachable",
        ),
        Zk::NoAuth | Zk::AuthFailed => Error::unauthenticated(
            "ZooKeeper refused access: these nodes belong to other credentials (see `digest`)",
        ),
        Zk::NoNode => Error::not_found("a ZooKeeper node is missing"),
        Zk::NodeExists => Error::already_exists("a ZooKeeper node exists already"),
        Zk::BadVersion | Zk::RuntimeInconsistent => {
            Error::conflict("a ZooKeeper node changed concurrently; retry").set_retryable(true)
        }
        Zk::BadArguments(_) | Zk::InvalidAcl => {
            Error::invalid_input("ZooKeeper refused the request's arguments")
        }
        Zk::Unimplemented => {
            Error::unsupported("this ZooKeeper request (the adapter needs ZooKeeper 3.6 or later)")
        }
        _ => Error::internal("ZooKeeper failed the request"),
    };
    base.with_context("backend", "zookeeper")
        .with_context("operation", operation)
        .with_source(error)
}

/// Which operation of a transaction failed, and how.
pub(crate) fn failed_op(error: &MultiWriteError) -> Option<(usize, &zk::Error)> {
    match error {
        MultiWriteError::OperationFailed { index, source } => Some((*index, source)),
        MultiWriteError::RequestFailed { .. } => None,
    }
}

/// Converts a failed transaction from `operation`.
pub(crate) fn convert_multi(error: MultiWriteError, operation: &'static str) -> Error {
    match error {
        MultiWriteError::OperationFailed { index, source } => {
            convert(source, operation).with_context("step", index)
        }
        MultiWriteError::RequestFailed { source } => convert(source, operation),
    }
}

/// `{root}/{namespace}`: where one deployment keeps everything. `Config` errors name the key.
pub(crate) fn deployment_path(config: &ZooKeeperConfig, namespace: &str) -> Result<String> {
    let root = config.root.as_str();
    let root_ok = root == "/"
        || (root.starts_with('/')
            && !root.ends_with('/')
            && root[1..].split('/').all(valid_node_name));
    if !root_ok {
        return Err(Error::config(format!(
            "root = {root:?} is not a ZooKeeper path: write an absolute path without a trailing \
             '/', such as \"/cim\""
        )));
    }
    if !valid_node_name(namespace) {
        return Err(Error::config(format!(
            "namespace {namespace:?} cannot name a ZooKeeper node: use letters, digits, '_', '-' \
             or '.', without '/'"
        )));
    }
    Ok(if root == "/" {
        format!("/{namespace}")
    } else {
        format!("{root}/{namespace}")
    })
}

/// Whether `name` can be one component of a ZooKeeper path.
pub(crate) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| {
            let u = u32::from(c);
            u <= 0x1f
                || (0x7f..=0x9f).contains(&u)
                || (0xd800..=0xf8ff).contains(&u)
                || (0xfff0..=0xffff).contains(&u)
        })
}

/// Fails with `InvalidInput` for a server id that cannot name a node (`.` and `..`, which
/// [`cim_core::ServerId`] allows).
pub(crate) fn check_server_id(id: &cim_core::ServerId) -> Result<()> {
    if valid_node_name(id.as_str()) {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "server id {id:?} cannot name a ZooKeeper node; pick another server id"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_paths_join_root_and_namespace() {
        let config = |root: &str| ZooKeeperConfig {
            root: root.to_string(),
            ..ZooKeeperConfig::default()
        };
        assert_eq!(
            deployment_path(&config("/cim"), "prod").expect("valid"),
            "/cim/prod"
        );
        assert_eq!(
            deployment_path(&config("/"), "prod").expect("valid"),
            "/prod"
        );
        assert_eq!(
            deployment_path(&config("/a/b"), "x").expect("valid"),
            "/a/b/x"
        );
        for bad_root in ["cim", "/cim/", "//cim", "/a/../b", ""] {
            let err = deployment_path(&config(bad_root), "prod").expect_err(bad_root);
            assert_eq!(err.kind(), cim_core::ErrorKind::Config, "{bad_root:?}");
            assert!(err.message().contains("root"), "{err}");
        }
        for bad_namespace in ["", "a/b", ".", ".."] {
            let err = deployment_path(&config("/cim"), bad_namespace).expect_err(bad_namespace);
            assert_eq!(err.kind(), cim_core::ErrorKind::Config);
        }
    }
}
