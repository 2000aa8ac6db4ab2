//! # THIS IS NOT CONSUL.
//!
//! [`ConsulStandIn`] is cim's in-process stand-in for the part of Consul's HTTP API that the
//! Consul adapter uses, written from Consul's API documentation (KV store, transactions,
//! sessions, blocking queries) and checked against Consul's own source where the documentation
//! is silent. It exists because no Consul agent can be installed on the machines cim is built
//! and tested on (Consul is not packaged in Debian, and nothing else may be downloaded there).
//! The fixture in [`crate::consul`] uses a real agent whenever one is reachable
//! (`CIM_TEST_CONSUL_HTTP_ADDR`, or a `consul` binary on `PATH`), and says loudly on stderr when
//! it falls back to this.
//!
//! A test that passes against the stand-in shows that the adapter is right *about Consul as the
//! stand-in models it*; it does not show that Consul behaves so. Run the tests against a real
//! agent before trusting a change of the adapter's protocol.
//!
//! ## What it models
//!
//! - `GET /v1/kv/<key>` with `?recurse`, `?keys` (and `separator`), `?raw`, and blocking
//!   queries (`?index=&wait=`, answered when the query's `X-Consul-Index` exceeds `index` or
//!   when `wait` passes, default 5 min, at most 10 min); 404 for nothing found; entries with
//!   `CreateIndex`, `ModifyIndex`, `LockIndex`, `Flags`, `Session` and base64 `Value`.
//! - `PUT /v1/kv/<key>` with `?flags=` and one of `?cas=` (0: create only), `?acquire=`,
//!   `?release=`; `DELETE /v1/kv/<key>` with `?recurse` or `?cas=`.
//! - `PUT /v1/txn`: KV verbs `set`, `cas`, `lock`, `unlock`, `get`, `get-tree`, `check-index`,
//!   `check-session`, `check-not-exists`, `delete`, `delete-cas`, `delete-tree`; at most 64
//!   operations; all or nothing; 409 with every error (`OpIndex`, `What`) on a rollback.
//! - Sessions: `create` (TTL checked against `session_ttl_min`, behaviours `release` and
//!   `delete`, lock delay), `renew` (404 once gone), `destroy`, `info`, `list`. A TTL session is
//!   invalidated **2 × TTL** after its creation or last renewal, as Consul's servers do (Consul
//!   promises only that a session lives *at least* its TTL); invalidation deletes or releases
//!   its keys and starts its lock delay.
//! - ACL tokens (`X-Consul-Token`, `Authorization: Bearer`, `?token=`) when started with one:
//!   403 otherwise. The datacenter is `dc1`; another `?dc=` is a 500, as an unknown one is.
//! - The newest Consul's checks on key names in KV URLs (letters, digits and `,-_./`; no
//!   leading `/`; no file-extension suffix such as `.json`).
//!
//! ## What it does not
//!
//! One node, no Raft, no persistence (a restart loses everything, like `consul agent -dev`), no
//! health checks (sessions are tied to no check; node checks in a request are ignored), no
//! jitter on `wait`, no blocking on session endpoints, no consistency modes (every read is
//! consistent), no tombstone reaping, no other endpoint (`/v1/catalog`, `/v1/agent`, ...
//! answer 404).

mod encoding;
mod http;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use self::http::{Shared, reap_sessions, router};
use self::state::Store;
use crate::FixtureError;

/// How the stand-in is set up. The defaults are Consul's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandInOptions {
    /// The shortest session TTL accepted (Consul's agent option `session_ttl_min`, 10 s unless
    /// configured).
    pub session_ttl_min: Duration,
    /// When set, every request must carry this ACL token.
    pub acl_token: Option<String>,
}

impl Default for StandInOptions {
    fn default() -> Self {
        StandInOptions {
            session_ttl_min: Duration::from_secs(10),
            acl_token: None,
        }
    }
}

/// cim's stand-in for a Consul agent's HTTP API (**not Consul**; see the module docs), serving
/// on a loopback port from a thread and tokio runtime of its own, so it keeps serving whatever
/// the test's runtime does. Dropping it stops it.
#[derive(Debug)]
pub struct ConsulStandIn {
    port: u16,
    options: StandInOptions,
    running: Option<Running>,
}

/// The serving thread and how to stop it.
#[derive(Debug)]
struct Running {
    shutdown: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl ConsulStandIn {
    /// Starts a stand-in with Consul's defaults on a free loopback port. It answers as soon as
    /// this returns.
    pub fn start() -> Result<ConsulStandIn, FixtureError> {
        Self::start_with(StandInOptions::default())
    }

    /// Starts a stand-in set up by `options` on a free loopback port.
    pub fn start_with(options: StandInOptions) -> Result<ConsulStandIn, FixtureError> {
        let (running, port) = launch(0, options.clone())?;
        Ok(ConsulStandIn {
            port,
            options,
            running: Some(running),
        })
    }

    /// `http://127.0.0.1:PORT`, what a Consul client's address would be.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops serving at once, as a crashed agent would: open connections are dropped mid-request
    /// and every key and session is gone.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            // The thread may have ended already; either way it is gone after the join.
            let _ = running.shutdown.send(());
            let _ = running.thread.join();
        }
    }

    /// Stops it if it runs, then serves again on the same port, empty (like a restarted
    /// `consul agent -dev`).
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        let (running, _) = launch(self.port, self.options.clone())?;
        self.running = Some(running);
        Ok(())
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the serving thread on `port` (0: any free one) and waits until it listens.
fn launch(port: u16, options: StandInOptions) -> Result<(Running, u16), FixtureError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<u16>>();
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("consul-stand-in".to_string())
        .spawn(move || serve(port, options, ready_tx, shutdown_rx))
        .map_err(|source| FixtureError::io("a thread for the Consul stand-in", source))?;
    let what = format!("the Consul stand-in's port 127.0.0.1:{port}");
    let bound = ready_rx
        .recv()
        .map_err(|_| FixtureError::io(what.clone(), std::io::Error::other("its thread died")))?
        .map_err(|source| FixtureError::io(what, source))?;
    Ok((Running { shutdown, thread }, bound))
}

/// The serving thread: a runtime of its own, the HTTP server and the session reaper, until told
/// to stop. Dropping the runtime afterwards drops every connection without a goodbye.
fn serve(
    port: u16,
    options: StandInOptions,
    ready: std::sync::mpsc::Sender<std::io::Result<u16>>,
    shutdown: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match listen(port) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        };
        let bound = listener.local_addr().map(|addr| addr.port());
        let Ok(bound) = bound else {
            let _ = ready.send(bound);
            return;
        };
        let shared = Arc::new(Shared::new(
            Store::new(options.session_ttl_min),
            options.acl_token,
        ));
        let app = router(Arc::clone(&shared));
        let _ = ready.send(Ok(bound));
        tokio::select! {
            _ = async { axum::serve(listener, app).await } => {}
            _ = reap_sessions(shared) => {}
            _ = shutdown => {}
        }
    });
    runtime.shutdown_timeout(Duration::ZERO);
}

/// A loopback listener with a deep backlog (tokio's default of 128 drops connection storms) that
/// can rebind a port its previous incarnation just left.
fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(4096)
}
