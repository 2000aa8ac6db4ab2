//! The cluster under test: Redis, PostgreSQL, the route and the cim servers, each a
//! [`Managed`] child process, the servers in their network namespaces, and the one `cim.toml`
//! they all read.
//!
//! The cluster is a deployment in miniature, configured by its file alone (plus each server's
//! id and addresses in its environment), with the few settings a soak needs: leases and
//! sessions that expire in seconds, so that failover happens many times in a two-minute run;
//! heartbeats that notice a silent (stopped, partitioned) server within seconds; and login and
//! message limits raised, because every soak client comes from the same address and a throttled
//! soak measures the throttle, not the cluster.
//!
//! Dropping the [`Cluster`] kills every process first and only then removes the network (see
//! [`Network`] for why that order matters), then the work directory, unless it was kept for a
//! person to read ([`Cluster::keep_dir`]).

use std::fmt;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backends::Programs;
use crate::error::{Result, SoakError};
use crate::network::Network;
use crate::process::{Managed, Readiness, Spec, State, create_dir};

/// The file that marks a work directory to keep (stale-directory cleanup leaves it alone).
pub const KEEP_MARKER: &str = "KEEP";

/// The client port of every server (each has its own namespace, so they can share it).
const SERVER_PORT: u16 = 7000;
/// The internal (server-to-server, route-to-server) port of every server.
const INTERNAL_PORT: u16 = 7001;

/// One of the cluster's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proc {
    /// Redis (meta and sessions).
    Redis,
    /// PostgreSQL (accounts and messages).
    Postgres,
    /// The route.
    Route,
    /// Server `n` (0-based; its id is `node-{n+1}`).
    Server(usize),
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proc::Redis => f.write_str("redis"),
            Proc::Postgres => f.write_str("postgres"),
            Proc::Route => f.write_str("route"),
            Proc::Server(n) => write!(f, "node-{}", n + 1),
        }
    }
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    keep: bool,
    route_url: String,
    redis_port: u16,
    postgres_port: u16,
    servers: Vec<Managed>,
    route: Managed,
    redis: Managed,
    postgres: Managed,
    // Last: dropped after every process is gone.
    network: Network,
}

impl Cluster {
    /// Builds the network, starts the backends, the servers and the route, and waits until all
    /// are ready. `cim` is the `cim` binary; the work directory is created under `work_root`.
    pub fn start(cim: &Path, servers: usize, work_root: &Path) -> Result<Cluster> {
        let programs = Programs::find()?;
        let pid = std::process::id();
        let dir = work_root.join(format!("cim-soak-{pid}"));
        create_dir(&dir)?;
        // PostgreSQL runs as its own user and must reach its directory inside this one.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| SoakError::io(format!("chmod {}", dir.display()), e))?;
        let logs = dir.join("logs");
        create_dir(&logs)?;

        let network = Network::create(pid, servers)?;
        let ip = network.host_ip();
        let subnet = format!("{}/24", Ipv4Addr::from(u32::from(ip) & 0xffff_ff00));
        let redis_port = free_port(ip)?;
        let postgres_port = free_port(ip)?;
        let route_port = free_port(ip)?;
        let redis = programs.redis(&dir.join("redis"), ip, redis_port)?;
        let postgres = programs.postgres(&dir.join("postgres"), ip, postgres_port, &subnet)?;

        let config = dir.join("cim.toml");
        let toml = cim_toml(
            &format!("redis://{ip}:{redis_port}"),
            &format!("postgres://postgres@{ip}:{postgres_port}/postgres"),
            &format!("{ip}:{route_port}"),
        );
        fs::write(&config, toml)
            .map_err(|e| SoakError::io(format!("writing {}", config.display()), e))?;

        let route = Managed::new(
            "route",
            Spec::new(cim)
                .args(["route", "--config"])
                .args([config.as_os_str()])
                .env("CIM_LOG", "info"),
            Readiness::LogLine("cim route is running".into()),
            logs.join("route.log"),
        );
        let servers = (0..servers)
            .map(|n| {
                let node = network.node(n);
                let id = Proc::Server(n).to_string();
                let mut spec = Spec::new(cim)
                    .args(["server", "--config"])
                    .args([config.as_os_str()])
                    .env("CIM_LOG", "info")
                    .env("CIM_SERVER__ID", id.clone())
                    .env("CIM_SERVER__LISTEN", format!("0.0.0.0:{SERVER_PORT}"))
                    .env(
                        "CIM_SERVER__INTERNAL_LISTEN",
                        format!("0.0.0.0:{INTERNAL_PORT}"),
                    )
                    .env("CIM_SERVER__ADVERTISED_HOST", node.ip.to_string());
                spec.netns = Some(node.netns.clone());
                Managed::new(
                    id.clone(),
                    spec,
                    Readiness::LogLine(format!("cim server {id} is running")),
                    logs.join(format!("{id}.log")),
                )
            })
            .collect();

        let mut cluster = Cluster {
            dir,
            keep: false,
            route_url: format!("http://{ip}:{route_port}"),
            redis_port,
            postgres_port,
            servers,
            route,
            redis,
            postgres,
            network,
        };
        cluster.redis.spawn()?;
        cluster.postgres.spawn()?;
        cluster.redis.wait_ready()?;
        cluster.postgres.wait_ready()?;
        // One server first: it runs the migrations, which the others would otherwise race.
        cluster.servers[0].spawn()?;
        cluster.servers[0].wait_ready()?;
        for server in &mut cluster.servers[1..] {
            server.spawn()?;
        }
        for server in &mut cluster.servers[1..] {
            server.wait_ready()?;
        }
        cluster.route.spawn()?;
        cluster.route.wait_ready()?;
        Ok(cluster)
    }

    /// The route's URL (`http://ip:port`).
    pub fn route_url(&self) -> &str {
        &self.route_url
    }

    /// The backends' ports on the bridge address: Redis, PostgreSQL.
    pub fn backend_ports(&self) -> (u16, u16) {
        (self.redis_port, self.postgres_port)
    }

    /// How many servers there are.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// The network (for network faults).
    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The work directory (config, logs, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every process, in a stable order.
    pub fn all(&self) -> Vec<Proc> {
        let mut all = vec![Proc::Redis, Proc::Postgres, Proc::Route];
        all.extend((0..self.servers.len()).map(Proc::Server));
        all
    }

    /// One process.
    pub fn process(&mut self, which: Proc) -> &mut Managed {
        match which {
            Proc::Redis => &mut self.redis,
            Proc::Postgres => &mut self.postgres,
            Proc::Route => &mut self.route,
            Proc::Server(n) => &mut self.servers[n],
        }
    }

    /// Processes that should run but exited by themselves since the last call (a crash, or an
    /// exit cim decided on), with their exit status and log tail. They are then down; the
    /// caller restarts them.
    pub fn unexpected_exits(&mut self) -> Vec<(Proc, String, String)> {
        let mut exits = Vec::new();
        for which in self.all() {
            let process = self.process(which);
            let was = process.state();
            if matches!(was, State::Running | State::Stopped)
                && let Some(status) = process.exited()
            {
                exits.push((which, status.to_string(), process.log_tail()));
            }
        }
        exits
    }

    /// Keeps the work directory (logs, data) after the soak ends.
    pub fn keep_dir(&mut self) {
        self.keep = true;
        let _ = fs::write(
            self.dir.join(KEEP_MARKER),
            "kept by cim-soak for inspection\n",
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Clients of the backends first, so that nothing reconnects to a dying backend, then
        // the backends; the network goes with the last field.
        for server in &mut self.servers {
            server.kill();
        }
        self.route.kill();
        self.redis.kill();
        self.postgres.kill();
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A port nothing listens on at `ip` now (below the ephemeral range, like the fixtures').
fn free_port(ip: Ipv4Addr) -> Result<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = u16::try_from(std::process::id() % 9973).unwrap_or(0);
    for _ in 0..2000 {
        let offset = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed)) % 12_000;
        let port = 20_000 + offset;
        if TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(SoakError::Prerequisite(format!("no free port on {ip}")))
}

/// The cluster's `cim.toml`.
fn cim_toml(redis: &str, postgres: &str, route_listen: &str) -> String {
    let secret: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    format!(
        r#"# Written by cim-soak: a cluster on Redis and PostgreSQL, tuned to fail over fast.
namespace = "soak"

[auth]
secret = "{secret}"

[meta]
backend = "redis"
url = "{redis}"
ttl = "2s"

[sessions]
backend = "redis"
url = "{redis}"
ttl = "3s"

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
# A stopped or partitioned server goes silent without closing anything: notice within seconds.
heartbeat_interval = "2s"
idle_timeout = "8s"
register_wait = "30s"

# Every soak client sends from one address; the soak's own rate must never be throttled.
[limits.messages]
per_second = 1000
burst = 1000

[route]
listen = "{route_listen}"

[route.logins]
signups_per_source = {{ burst = 1000, refill = "1ms" }}
checks_per_source = 64
checks_per_account = 4
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_names_match_the_server_ids_the_cluster_uses() {
        assert_eq!(Proc::Server(0).to_string(), "node-1");
        assert_eq!(Proc::Server(2).to_string(), "node-3");
        assert_eq!(Proc::Postgres.to_string(), "postgres");
    }

    #[test]
    fn the_config_names_both_backends_and_raises_the_limits_one_source_would_hit() {
        let toml = cim_toml("redis://h:1", "postgres://p@h:2/postgres", "h:3");
        for expected in [
            "url = \"redis://h:1\"",
            "url = \"postgres://p@h:2/postgres\"",
            "listen = \"h:3\"",
            "signups_per_source",
            "[limits.messages]",
            "session_refresh = \"1s\"",
        ] {
            assert!(toml.contains(expected), "{expected} missing from\n{toml}");
        }
    }
}
