//! The systems under test: how each is started for a workload, where its clients connect, and
//! which processes count as "the server" when CPU time and memory are read.
//!
//! A workload describes what it needs in a [`Plan`] (how many users, which groups, how many
//! servers); [`deploy`] starts the system in a fresh temporary directory, prepares the users
//! (cim: accounts, groups and login tokens through the route's HTTP API; the others need
//! nothing, a user is a subject) and returns a [`Deployment`], which stops everything when
//! dropped.

pub mod cim;
pub mod peers;
pub mod vault;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use tempfile::TempDir;

use crate::process::{Pinning, Proc};
use crate::progress::Progress;

/// One of the systems the bench can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemKind {
    /// cim itself (`cim standalone`, or `cim route` + `cim server`s on Redis).
    Cim,
    /// `cim standalone` as a user runs it: the default config, messages and accounts on
    /// SQLite, each send acknowledged once committed (W1 only).
    CimDurable,
    /// The bench's own one-hop relay: the practical upper bound.
    Relay,
    /// NATS (`nats-server`).
    Nats,
    /// NATS JetStream (`nats-server -js`): a file-stored stream, every publish acknowledged
    /// once stored (W1 only).
    NatsJs,
    /// Mosquitto, MQTT 3.1.1 at QoS 0 (`mosquitto`).
    Mosquitto,
    /// Redis pub/sub (`redis-server`).
    Redis,
}

impl SystemKind {
    /// Every system, in the default order.
    pub const ALL: [SystemKind; 7] = [
        SystemKind::Cim,
        SystemKind::CimDurable,
        SystemKind::Relay,
        SystemKind::Nats,
        SystemKind::NatsJs,
        SystemKind::Mosquitto,
        SystemKind::Redis,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Cim => "cim",
            SystemKind::CimDurable => "cim-durable",
            SystemKind::Relay => "relay",
            SystemKind::Nats => "nats",
            SystemKind::NatsJs => "nats-js",
            SystemKind::Mosquitto => "mosquitto",
            SystemKind::Redis => "redis",
        }
    }

    /// Whether this is cim (in any configuration).
    pub fn is_cim(self) -> bool {
        matches!(self, SystemKind::Cim | SystemKind::CimDurable)
    }

    /// Whether the system stores every message before acknowledging it: such systems are
    /// measured on W1 against each other.
    pub fn is_durable(self) -> bool {
        matches!(self, SystemKind::CimDurable | SystemKind::NatsJs)
    }

    /// The system called `name`.
    pub fn parse(name: &str) -> Option<SystemKind> {
        SystemKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The external program this system needs and the package that installs it.
    pub fn program(self) -> Option<(&'static str, &'static str)> {
        match self {
            SystemKind::Cim | SystemKind::CimDurable | SystemKind::Relay => None,
            SystemKind::Nats | SystemKind::NatsJs => {
                Some(("nats-server", "apt-get install nats-server"))
            }
            SystemKind::Mosquitto => Some(("mosquitto", "apt-get install mosquitto")),
            SystemKind::Redis => Some(("redis-server", "apt-get install redis-server")),
        }
    }
}

impl fmt::Display for SystemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a run shares: where programs are, pinning, scratch space, the HTTP client.
#[derive(Debug)]
pub struct Env {
    /// The `cim` binary.
    pub cim_bin: PathBuf,
    /// This binary (the relay runs as `cim-bench relay`).
    pub self_bin: PathBuf,
    /// Where the servers and the generator run.
    pub pinning: Pinning,
    /// Scratch space for configs and logs of this run.
    pub work_dir: TempDir,
    /// Where the account vault is kept between runs.
    pub cache_dir: PathBuf,
    /// HTTP client for the cim route.
    pub http: reqwest::Client,
    /// Progress output.
    pub progress: Progress,
    /// The account vault, started on first use.
    pub vault: tokio::sync::Mutex<Option<vault::Vault>>,
    /// How long a server may take to become ready.
    pub ready_timeout: Duration,
    /// Where to write `perf record` profiles of the servers' measured phases, if anywhere.
    pub perf_dir: Option<PathBuf>,
    /// Before a measured phase, wait up to this long for other processes on the machine to
    /// use less than [`Env::quiet_cores`] of CPU.
    pub max_quiet_wait: Duration,
    /// What counts as quiet, in cores used by processes that are not the bench's.
    pub quiet_cores: f64,
}

impl Env {
    /// A fresh directory for one deployment's configs and logs, inside the run's scratch
    /// space (removed at the end of the run unless `--keep-logs`).
    pub fn deployment_dir(&self, prefix: &str) -> Result<PathBuf> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.work_dir.path().join(format!("{n:03}-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// How a cim deployment gets its users' accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounts {
    /// Created now in the server's own memory store, then logged in through the route
    /// (tokens ready before the measured phase).
    Fresh,
    /// Taken from the vault (a Redis holding accounts created once), with the tokens the route
    /// issued when they were created.
    VaultWithTokens,
    /// Taken from the vault, without tokens: the workload logs in through the route itself.
    VaultLoginLater,
    /// None yet: each user has a token the application minted (HS256 with [`cim::APP_SECRET`]),
    /// and their first login creates the account (every backend in memory).
    AppTokens,
}

/// What a workload needs deployed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Users 0..users.
    pub users: usize,
    /// Per group: the receiving members (user indices).
    pub groups: Vec<Vec<usize>>,
    /// Per group: the user who sends to it (cim makes it a member too; it receives nothing, as
    /// cim does not echo a sender's own messages).
    pub group_senders: Vec<usize>,
    /// Number of servers: 1 (a single node) or more (a cluster: cim, and core NATS joined by
    /// routes).
    pub servers: usize,
    /// Per user, which server it connects to (clusters; round robin if empty).
    pub placement: Vec<usize>,
    /// cim: where accounts come from.
    pub accounts: Accounts,
}

impl Plan {
    /// `users` users on one server, no groups, fresh accounts.
    pub fn users(users: usize) -> Plan {
        Plan {
            users,
            groups: Vec::new(),
            group_senders: Vec::new(),
            servers: 1,
            placement: Vec::new(),
            accounts: Accounts::Fresh,
        }
    }
}

/// A user as the workload addresses it.
#[derive(Debug, Clone)]
pub struct User {
    /// cim: the account name (the others: unused).
    pub name: String,
    /// The system's address for the user (cim user id, else the index).
    pub address: u64,
    /// The server it connects to (index into [`Deployment::servers`]).
    pub server: usize,
    /// cim: the token to log in with, if prepared.
    pub token: Option<String>,
}

/// A server process and where clients reach it.
#[derive(Debug)]
pub struct Server {
    /// Its client address.
    pub addr: SocketAddr,
    /// The process.
    pub proc: Proc,
}

/// A running system, ready for a workload. Dropping it kills its processes.
#[derive(Debug)]
pub struct Deployment {
    /// Which system.
    pub kind: SystemKind,
    /// The measured server processes.
    pub servers: Vec<Server>,
    /// Other processes (cim's route in a cluster), not measured as "the server".
    pub others: Vec<Proc>,
    /// Processes this deployment uses but does not own (the vault's Redis), counted with
    /// `others`.
    pub shared_pids: Vec<u32>,
    /// The users, by index.
    pub users: Vec<User>,
    /// The groups' addresses, by index.
    pub groups: Vec<u64>,
    /// cim: the route's base URL.
    pub route_url: Option<String>,
    /// What a reader of the results should know about this deployment.
    pub notes: Vec<String>,
    /// cim: the password of every account.
    pub password: String,
    /// Its configs and logs (kept with `--keep-logs`).
    #[allow(dead_code, reason = "kept for debugging: the deployment's directory")]
    pub dir: PathBuf,
    /// CPUs to pin the servers to before measuring (cim servers start unpinned for setup).
    pub pin_before_measuring: Option<String>,
}

impl Deployment {
    /// Pins the servers for the measured phase (a no-op for systems started pinned).
    pub fn pin_for_measurement(&self) -> Result<()> {
        if let Some(cpus) = &self.pin_before_measuring {
            for server in &self.servers {
                server.proc.pin(cpus)?;
            }
        }
        Ok(())
    }

    /// The server processes.
    pub fn server_pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.proc.pid()).collect()
    }

    /// The other processes: a cluster's route, the vault's Redis.
    pub fn other_pids(&self) -> Vec<u32> {
        self.others
            .iter()
            .map(Proc::pid)
            .chain(self.shared_pids.iter().copied())
            .collect()
    }

    /// The servers' resident memory now (sum), in bytes.
    pub fn server_rss(&self) -> Result<u64> {
        self.servers.iter().map(|s| s.proc.rss_bytes()).sum()
    }

    /// Whether every server still runs.
    pub fn check_alive(&mut self) -> Result<()> {
        for server in &mut self.servers {
            if !server.proc.is_running() {
                anyhow::bail!(
                    "{} died; its log:\n{}",
                    server.proc.name(),
                    server.proc.log_tail()
                );
            }
        }
        Ok(())
    }
}

/// Starts `kind` for `plan`. `Ok(Err(reason))`: the system cannot run this plan (reported as
/// skipped).
pub async fn deploy(
    env: &Env,
    kind: SystemKind,
    plan: &Plan,
) -> Result<Result<Deployment, String>> {
    if let Some((program, install)) = kind.program()
        && crate::process::find_program(program).is_none()
    {
        return Ok(Err(format!("skipped: {program} not installed ({install})")));
    }
    match kind {
        SystemKind::Cim | SystemKind::CimDurable => cim::deploy(env, kind, plan).await.map(Ok),
        _ if plan.servers > 1 && kind != SystemKind::Nats => Ok(Err(format!(
            "n/a: the bench runs {} as a single server only",
            kind.name()
        ))),
        _ => peers::deploy(env, kind, plan).await.map(Ok),
    }
}
