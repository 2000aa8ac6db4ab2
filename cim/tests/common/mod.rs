//! What the multi-process cluster tests share: starting `cim` roles from a config file, and
//! clients that log in through the route.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cim_client::{Client, ClientBuilder, Event, Events, ReconnectPolicy};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Bound on any single step, so a bug fails the test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
backend = "postgres"
url = "{postgres}"
[messages]
backend = "postgres"
url = "{postgres}"
[balancer]
strategy = "round_robin"
[server]
session_refresh = "1s"
load_report = "1s"
[route]
listen = "127.0.0.1:{route_port}"
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

pub async fn connect(route: &str, name: &str) -> (Client, Events) {
    let client = ClientBuilder::new(route)
        .credentials(name, "correct horse")
        .register(true)
        .reconnect(ReconnectPolicy::default())
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{name} connects: {e}"));
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
