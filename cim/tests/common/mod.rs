//! What the multi-process cluster tests share: starting `cim` roles from a config file, and
//! clients that log in through the route.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cim_client::{Client, ClientBuilder, Event, Events, ReconnectPolicy};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// A running `cim standalone` and the addresses it printed.
pub struct Standalone {
    /// The process.
    pub child: Child,
    /// `http://host:port` of the route.
    pub route_url: String,
    /// `host:port` of the server's client listener.
    pub tcp: String,
}

/// How to start a `cim standalone`.
pub struct StandaloneOptions<'a> {
    data_dir: &'a Path,
    http: String,
    tcp: String,
    internal: String,
    config: Option<PathBuf>,
    open_files: Option<u64>,
}

impl<'a> StandaloneOptions<'a> {
    /// Data in `data_dir`, every listener on a port of the system's choosing.
    pub fn new(data_dir: &'a Path) -> Self {
        StandaloneOptions {
            data_dir,
            http: "127.0.0.1:0".into(),
            tcp: "127.0.0.1:0".into(),
            internal: "127.0.0.1:0".into(),
            config: None,
            open_files: None,
        }
    }

    /// These listen addresses (to restart a node where its clients expect it).
    pub fn addresses(mut self, http: &str, tcp: &str, internal: &str) -> Self {
        self.http = http.into();
        self.tcp = tcp.into();
        self.internal = internal.into();
        self
    }

    /// `--config file`.
    pub fn config(mut self, file: PathBuf) -> Self {
        self.config = Some(file);
        self
    }

    /// The process may open at most `limit` files (soft and hard limit), as on a machine
    /// whose default is low.
    pub fn open_files(mut self, limit: u64) -> Self {
        self.open_files = Some(limit);
        self
    }

    /// Starts it and waits until it prints its addresses.
    pub async fn start(self) -> Standalone {
        let binary = env!("CARGO_BIN_EXE_cim");
        let mut command = match self.open_files {
            Some(limit) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary);
                sh
            }
            None => Command::new(binary),
        };
        command
            .args(["standalone", "--http", &self.http, "--tcp", &self.tcp])
            .args(["--internal", &self.internal, "--data-dir"])
            .arg(self.data_dir);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .env("CIM_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the cim binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (route_url, tcp) = timeout(STEP, async {
            let mut route = None;
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                let line = line.trim();
                if let Some(url) = line.strip_prefix("route (HTTP API): ") {
                    route = Some(url.to_string());
                }
                if let Some(tcp) = line.strip_prefix("server (clients): ") {
                    return (route.expect("the route is printed first"), tcp.to_string());
                }
            }
            panic!("cim standalone exited without printing its addresses");
        })
        .await
        .expect("cim standalone prints its addresses");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Standalone {
            child,
            route_url,
            tcp,
        }
    }
}

impl Standalone {
    /// A standalone with data in `data_dir` and ports of the system's choosing.
    pub async fn start(data_dir: &Path) -> Standalone {
        StandaloneOptions::new(data_dir).start().await
    }

    /// A client for `name` (password "correct horse"), registering it first if `register`.
    pub async fn client(&self, name: &str, register: bool) -> (Client, Events) {
        let client = ClientBuilder::new(&self.route_url)
            .credentials(name, "correct horse")
            .register(register)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"));
        let events = client.events().expect("the event stream is taken once");
        (client, events)
    }

    /// SIGKILL, as a crash or the OOM killer would, and waits for the exit.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL cim standalone");
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
        timeout(STEP, self.child.wait())
            .await
            .expect("cim standalone exits after SIGTERM")
            .expect("wait for the child")
    }
}

/// Bound on any single step, so a bug fails the test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(60);

/// A loopback port free now, for a process started later to listen on (from below the
/// ephemeral range, see the fixture's `free_port`).
pub fn free_port() -> u16 {
    cim_backend_fixtures::process::free_port().expect("a free loopback port")
}

/// Starts `cim <role>` with `config` and waits for the line announcing it runs.
pub async fn start(role: &str, config: &Path, env: &[(&str, String)], ready: &str) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cim"));
    command
        .arg(role)
        .arg("--config")
        .arg(config)
        .env("CIM_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the cim binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    timeout(STEP, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains(ready) {
                return;
            }
        }
        panic!("cim {role} exited before printing {ready:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("cim {role} prints {ready:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// A backend fixture (`cim_backend_fixtures::redis::redis` ...), started on a blocking thread
/// since starting a server waits for it; `None` when it is skipped.
pub async fn fixture<T: Send + 'static>(start: fn() -> Option<T>) -> Option<T> {
    tokio::task::spawn_blocking(start)
        .await
        .expect("fixture task")
}

/// Writes the `cim.toml` of a cluster into `dir` and returns its path: `[meta]` and
/// `[sessions]` as given (TOML lines), accounts and messages in the PostgreSQL at `postgres`,
/// round-robin balancing, one-second refreshes, and the route on `route_port`.
pub fn cluster_config(
    dir: &Path,
    namespace: &str,
    meta: &str,
    sessions: &str,
    postgres: &str,
    route_port: u16,
) -> PathBuf {
    let on_postgres = format!("backend = \"postgres\"\nurl = \"{postgres}\"");
    cluster_config_with(
        dir,
        namespace,
        [meta, sessions, &on_postgres, &on_postgres],
        route_port,
    )
}

/// [`cluster_config`] with every store as given: the TOML lines of `[meta]`, `[sessions]`,
/// `[accounts]` and `[messages]`, in that order.
pub fn cluster_config_with(
    dir: &Path,
    namespace: &str,
    [meta, sessions, accounts, messages]: [&str; 4],
    route_port: u16,
) -> PathBuf {
    let config = dir.join("cim.toml");
    std::fs::write(
        &config,
        format!(
            r#"
namespace = "{namespace}"
[auth]
secret = "{secret}"
[meta]
{meta}
[sessions]
{sessions}
[accounts]
{accounts}
[messages]
{messages}
[balancer]
strategy = "round_robin"
[server]
session_refresh = "1s"
load_report = "1s"
[route]
listen = "127.0.0.1:{route_port}"
[route.logins]
# Every test client signs up from 127.0.0.1.
signups_per_source = {{ burst = 1000, refill = "1ms" }}
"#,
            secret = "x".repeat(32),
        ),
    )
    .expect("write the config");
    config
}

/// A server's environment: its id and ports.
pub fn server_env(id: &str, port: u16, internal: u16) -> Vec<(&'static str, String)> {
    vec![
        ("CIM_SERVER__ID", id.to_string()),
        ("CIM_SERVER__LISTEN", format!("127.0.0.1:{port}")),
        (
            "CIM_SERVER__INTERNAL_LISTEN",
            format!("127.0.0.1:{internal}"),
        ),
    ]
}

/// A new user `name` (password "correct horse"), registered and logged in, reconnecting by
/// itself.
pub async fn connect(route: &str, name: &str) -> (Client, Events) {
    log_in(route, name, true).await
}

/// `name` logged in (registered first if `register`), reconnecting by itself; an existing
/// account logging in again is a second device or a move to another server.
pub async fn log_in(route: &str, name: &str, register: bool) -> (Client, Events) {
    let client = ClientBuilder::new(route)
        .credentials(name, "correct horse")
        .register(register)
        .reconnect(ReconnectPolicy::default())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{name} logs in: {e}"));
    let events = client.events().expect("the event stream is taken once");
    (client, events)
}

pub async fn next_body(events: &mut Events) -> String {
    timeout(STEP, async {
        loop {
            match events.recv().await {
                Some(Event::Message(message)) => return message.body,
                Some(_) => continue,
                None => panic!("the event stream ended"),
            }
        }
    })
    .await
    .expect("a message arrives")
}
