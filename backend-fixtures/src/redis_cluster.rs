//! A throwaway Redis Cluster on loopback: `primaries × (1 + replicas)` processes of
//! `redis-server --cluster-enabled yes`, each on a free port in its own directory, joined by
//! `redis-cli --cluster create`, and ready once every node reports `cluster_state:ok` and every
//! replica follows its primary. Failure tests kill one primary ([`RedisCluster::kill`]) and
//! wait for its replica to take over ([`RedisCluster::await_primary_of`]); nodes time out after
//! [`NODE_TIMEOUT_MS`], so a failover takes a couple of seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{READY_TIMEOUT, find_program, free_port, kill, spawn_ready, temp_dir};
use crate::redis::answers_ping;
use crate::{FixtureError, Server, Target};

/// The environment variable naming the nodes of an existing Redis Cluster
/// (`redis://host:port,redis://host:port,...`) to test against instead of starting one.
pub const REDIS_CLUSTER_NODES_ENV: &str = "CIM_TEST_REDIS_CLUSTER_NODES";

/// `cluster-node-timeout` of every node: how long a primary may be silent before its replica
/// is promoted.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A Redis Cluster owned by the test. Dropping it kills every node and removes the directory.
#[derive(Debug)]
pub struct RedisCluster {
    cli: PathBuf,
    dir: TempDir,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each (Redis Cluster needs at least
    /// 3 primaries) and waits until the cluster is formed and healthy.
    pub fn start(primaries: usize, replicas: usize) -> Result<RedisCluster, FixtureError> {
        let missing = |program, install| FixtureError::Missing {
            program,
            install,
            env: REDIS_CLUSTER_NODES_ENV,
        };
        let server = find_program("redis-server", &[PathBuf::from("/usr/sbin")])
            .ok_or_else(|| missing("redis-server", "apt-get install redis-server"))?;
        let cli = find_program("redis-cli", &[])
            .ok_or_else(|| missing("redis-cli", "apt-get install redis-tools"))?;
        let dir = temp_dir("redis-cluster")?;
        let mut cluster = RedisCluster {
            cli,
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..primaries * (1 + replicas) {
            let node = cluster.launch_on_free_ports(&server)?;
            cluster.nodes.push(node);
        }
        cluster.create(replicas)?;
        cluster.await_healthy(primaries * replicas)?;
        Ok(cluster)
    }

    /// Starts a node on two free ports (clients, cluster bus), on other ports again if another
    /// process took one of them before the node bound it.
    fn launch_on_free_ports(&self, server: &Path) -> Result<Node, FixtureError> {
        let mut attempts = 0;
        loop {
            let (port, bus_port) = (free_port()?, free_port()?);
            match self.launch(server, port, bus_port) {
                Ok(child) => {
                    return Ok(Node {
                        port,
                        child: Some(child),
                    });
                }
                Err(FixtureError::NotReady { .. }) if attempts < 2 => attempts += 1,
                Err(error) => return Err(error),
            }
        }
    }

    fn launch(&self, server: &Path, port: u16, bus_port: u16) -> Result<Child, FixtureError> {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|source| FixtureError::io(format!("directory {}", dir.display()), source))?;
        let mut command = Command::new(server);
        command
            .arg("--port")
            .arg(port.to_string())
            // The bus port is chosen like the client port: by default it would be port + 10000,
            // inside the range the kernel hands out to outbound connections.
            .arg("--cluster-port")
            .arg(bus_port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .arg("--cluster-node-timeout")
            .arg(NODE_TIMEOUT_MS.to_string())
            // A replica may always take over, however long it was out of touch.
            .args(["--cluster-replica-validity-factor", "0"])
            .arg("--dir")
            .arg(&dir);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let what = format!("redis-server (cluster node) on {addr}");
        spawn_ready(&what, command, &dir.join("redis.log"), || {
            answers_ping(addr)
        })
    }

    /// `redis-cli --cluster create` over every node.
    fn create(&self, replicas: usize) -> Result<(), FixtureError> {
        let output = Command::new(&self.cli)
            .arg("--cluster")
            .arg("create")
            .args(
                self.nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port)),
            )
            .arg("--cluster-replicas")
            .arg(replicas.to_string())
            .arg("--cluster-yes")
            .output()
            .map_err(|source| FixtureError::Spawn {
                program: self.cli.clone(),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(FixtureError::NotReady {
            what: "redis-cli --cluster create".to_string(),
            waited: Duration::ZERO,
            reason: format!("it exited with {}", output.status),
            log: String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        })
    }

    /// Waits until every node says `cluster_state:ok` and `replicas` replicas are connected.
    fn await_healthy(&self, replicas: usize) -> Result<(), FixtureError> {
        self.await_condition("the new redis cluster", || {
            let all_ok = self.live_ports().all(|port| {
                self.cli_output(port, &["cluster", "info"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            let linked = self
                .live_ports()
                .next()
                .and_then(|port| self.cluster_nodes(port));
            all_ok
                && linked.is_some_and(|nodes| {
                    nodes.iter().filter(|n| !n.primary && n.connected).count() == replicas
                })
        })
    }

    /// The URL of every node still running (`redis://127.0.0.1:PORT`).
    pub fn urls(&self) -> Vec<String> {
        self.live_ports()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The index (in start order) of the primary that serves `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> Result<usize, FixtureError> {
        let port = self
            .live_ports()
            .next()
            .ok_or_else(|| self.gone("no node runs"))?;
        let slot = self
            .cli_output(port, &["cluster", "keyslot", key])
            .and_then(|out| out.trim().parse::<u16>().ok())
            .ok_or_else(|| self.gone("CLUSTER KEYSLOT did not answer"))?;
        self.serving(slot)
            .ok_or_else(|| self.gone(&format!("no live primary serves slot {slot}")))
    }

    /// Waits until every replica of primary `index` has everything the primary has written so
    /// far (its replication offset), so that a failover after this loses nothing written before.
    pub fn await_replicated(&self, index: usize) -> Result<(), FixtureError> {
        let port = self
            .nodes
            .get(index)
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
            .ok_or_else(|| self.gone(&format!("node {index} does not run")))?;
        let replication = || self.cli_output(port, &["info", "replication"]);
        let target = replication()
            .as_deref()
            .and_then(|info| info_field(info, "master_repl_offset"))
            .ok_or_else(|| self.gone("INFO replication did not answer"))?;
        self.await_condition(&format!("the replicas of node {index}"), || {
            replication().is_some_and(|info| {
                let offsets: Vec<u64> = info
                    .lines()
                    .filter(|line| line.starts_with("slave"))
                    .filter_map(|line| {
                        let offset = line.split(',').find_map(|f| f.strip_prefix("offset="))?;
                        offset.trim().parse().ok()
                    })
                    .collect();
                !offsets.is_empty() && offsets.iter().all(|&offset| offset >= target)
            })
        })
    }

    /// Kills node `index` with SIGKILL, as a crash would.
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            kill(&mut node.child);
        }
    }

    /// Waits until a running primary other than `dead` serves `key`'s slot and every running
    /// node says `cluster_state:ok`; returns that primary's index.
    pub fn await_primary_of(&self, key: &str, dead: usize) -> Result<usize, FixtureError> {
        let what = format!("a replica taking over {key:?} from node {dead}");
        self.await_condition(&what, || {
            self.primary_of(key).is_ok_and(|index| index != dead)
                && self.live_ports().all(|port| {
                    self.cli_output(port, &["cluster", "info"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                })
        })?;
        self.primary_of(key)
    }

    /// The index of the running primary that `CLUSTER NODES` (asked of running nodes) says
    /// serves `slot`.
    fn serving(&self, slot: u16) -> Option<usize> {
        self.live_ports().find_map(|port| {
            let nodes = self.cluster_nodes(port)?;
            let owner = nodes
                .iter()
                .find(|n| n.primary && !n.failed && n.slots.iter().any(|r| r.contains(&slot)))?;
            let index = self.nodes.iter().position(|n| n.port == owner.port)?;
            self.nodes[index].child.is_some().then_some(index)
        })
    }

    fn live_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .map(|node| node.port)
    }

    fn cluster_nodes(&self, port: u16) -> Option<Vec<NodeLine>> {
        let text = self.cli_output(port, &["cluster", "nodes"])?;
        Some(text.lines().filter_map(NodeLine::parse).collect())
    }

    /// What `redis-cli -p PORT args...` printed, if it ran and succeeded.
    fn cli_output(&self, port: u16, args: &[&str]) -> Option<String> {
        let output = Command::new(&self.cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Polls `ready` until it holds or [`READY_TIMEOUT`] passes.
    fn await_condition(
        &self,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), FixtureError> {
        let started = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if started.elapsed() >= READY_TIMEOUT {
                return Err(FixtureError::NotReady {
                    what: what.to_string(),
                    waited: started.elapsed(),
                    reason: "the cluster never got there".to_string(),
                    log: self
                        .live_ports()
                        .next()
                        .and_then(|port| self.cli_output(port, &["cluster", "nodes"]))
                        .unwrap_or_default(),
                });
            }
            // Polling, not synchronisation: the cluster's own state is the event awaited.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn gone(&self, reason: &str) -> FixtureError {
        FixtureError::NotReady {
            what: "the redis cluster".to_string(),
            waited: Duration::ZERO,
            reason: reason.to_string(),
            log: String::new(),
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            kill(&mut node.child);
        }
    }
}

/// The number after `name:` in an `INFO` answer.
fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

/// One line of `CLUSTER NODES`: `id ip:port@bus flags primary ping pong epoch link slots...`.
#[derive(Debug)]
struct NodeLine {
    port: u16,
    primary: bool,
    failed: bool,
    connected: bool,
    slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl NodeLine {
    fn parse(line: &str) -> Option<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let address = fields.get(1)?.split('@').next()?;
        let port = address.rsplit(':').next()?.parse().ok()?;
        let flags = fields.get(2)?;
        let slots = fields
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|range| match range.split_once('-') {
                Some((low, high)) => Some(low.parse().ok()?..=high.parse().ok()?),
                None => range.parse().ok().map(|slot| slot..=slot),
            })
            .collect();
        Some(NodeLine {
            port,
            primary: flags.contains("master"),
            failed: flags.contains("fail"),
            connected: fields.get(7) == Some(&"connected"),
            slots,
        })
    }
}

impl Server for RedisCluster {
    const NAME: &'static str = "redis cluster";
    const ENV: &'static str = REDIS_CLUSTER_NODES_ENV;

    /// [`RedisCluster::urls`], joined by commas.
    fn address(&self) -> String {
        self.urls().join(",")
    }
}

/// The Redis Cluster a test runs against: one this process started, or the existing one named
/// by [`REDIS_CLUSTER_NODES_ENV`] (its comma-separated node URLs are the [`Target::address`]).
pub type RedisClusterTarget = Target<RedisCluster>;

/// The cluster named by [`REDIS_CLUSTER_NODES_ENV`] if set, else a freshly started one of three
/// primaries with a replica each.
pub fn redis_cluster_target() -> Result<RedisClusterTarget, FixtureError> {
    Target::from_env(|| RedisCluster::start(3, 1))
}

/// [`redis_cluster_target`] through [`crate::require_or_skip`]: `None` (after printing why)
/// when no Redis Cluster is available outside CI; panics inside CI.
pub fn redis_cluster() -> Option<RedisClusterTarget> {
    crate::require_or_skip(redis_cluster_target())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_give_port_role_state_and_slots() {
        let primary = NodeLine::parse(
            "07c3 127.0.0.1:30004@40004 myself,master - 0 0 1 connected 0-5460 7000 [5461->-e7d1]",
        )
        .expect("a primary's line");
        assert_eq!(primary.port, 30004);
        assert!(primary.primary && !primary.failed && primary.connected);
        assert_eq!(primary.slots, vec![0..=5460, 7000..=7000]);

        let replica =
            NodeLine::parse("e7d1 127.0.0.1:30005@40005 slave,fail 07c3 1700 1690 2 disconnected")
                .expect("a replica's line");
        assert_eq!(replica.port, 30005);
        assert!(!replica.primary && replica.failed && !replica.connected);
        assert!(replica.slots.is_empty());
        assert!(NodeLine::parse("garbage").is_none());
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Replication\r\nrole:master\r\nmaster_repl_offset:4242\r\n";
        assert_eq!(info_field(info, "master_repl_offset"), Some(4242));
        assert_eq!(info_field(info, "missing"), None);
    }
}
