//! A Consul for the Consul adapter's tests, the realest one available:
//!
//! 1. an existing agent named by [`CONSUL_HTTP_ADDR_ENV`] (`http://127.0.0.1:8500`);
//! 2. else a `consul agent -dev` child process, if a `consul` binary is on `PATH`: free loopback
//!    ports, a temporary directory for its config, ready once `/v1/status/leader` names a
//!    leader;
//! 3. else [`ConsulStandIn`], cim's in-process stand-in for Consul's HTTP API, **which is not
//!    Consul** (see [`standin`]). Consul cannot be installed on the machines cim is developed
//!    and tested on (no Debian package, no downloads), so there, and in CI, the stand-in counts
//!    as the available backend; the fixture then prints, once per process and straight to
//!    stderr so the test harness cannot swallow it:
//!    `NOTE: no Consul agent here: testing against cim's Consul HTTP API stand-in
//!    (backend-fixtures/src/consul), NOT a real Consul`.
//!
//! Both the agent and the stand-in are set up with `session_ttl_min` =
//! [`SESSION_TTL_MIN`] (Consul's default is 10 s), so that session expiry cases run in seconds.
//! Either can be stopped and restarted on the same port for failure tests; a restart loses every
//! key and session, as a dev agent's restart does.

pub mod standin;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, Once, PoisonError, Weak};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ask, find_program, free_port, kill, spawn_ready, temp_dir};
use crate::{FixtureError, Server, Target};
pub use standin::{ConsulStandIn, StandInOptions};

/// The environment variable naming an existing Consul agent's HTTP address
/// (`http://host:8500`) to test against instead of starting one.
pub const CONSUL_HTTP_ADDR_ENV: &str = "CIM_TEST_CONSUL_HTTP_ADDR";

/// The `session_ttl_min` the fixture gives the agents it starts and the stand-in: short enough
/// for one-second session TTLs.
pub const SESSION_TTL_MIN: Duration = Duration::from_millis(100);

/// What the fixture prints when it falls back to the stand-in.
const STAND_IN_NOTE: &str = "NOTE: no Consul agent here: testing against cim's Consul HTTP API \
                             stand-in (backend-fixtures/src/consul), NOT a real Consul";

/// A `consul agent -dev` child process owned by the test: a one-node cluster that keeps
/// everything in memory. Dropping it kills the agent.
#[derive(Debug)]
pub struct ConsulAgent {
    program: PathBuf,
    http_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl ConsulAgent {
    /// Starts an agent in dev mode on free loopback ports and waits until it has a leader.
    pub fn start() -> Result<ConsulAgent, FixtureError> {
        let program = find_program("consul", &[]).ok_or(FixtureError::Missing {
            program: "consul",
            install: "the consul binary from https://developer.hashicorp.com/consul/install",
            env: CONSUL_HTTP_ADDR_ENV,
        })?;
        let dir = temp_dir("consul")?;
        let http_port = free_port()?;
        // Every port the dev agent would open by default gets a free one (or none), so that
        // several agents can run at once. `grpc_tls` (8503 in dev mode) exists since 1.14;
        // older agents refuse the key.
        let grpc_tls = if knows_grpc_tls(&program) {
            "  grpc_tls = -1\n"
        } else {
            ""
        };
        let config = format!(
            "session_ttl_min = \"{}ms\"\nports {{\n  http = {http_port}\n  dns = -1\n  \
             grpc = -1\n{grpc_tls}  serf_lan = {}\n  serf_wan = {}\n  server = {}\n}}\n",
            SESSION_TTL_MIN.as_millis(),
            free_port()?,
            free_port()?,
            free_port()?,
        );
        let config_file = dir.path().join("cim-test.hcl");
        std::fs::write(&config_file, config).map_err(|source| {
            FixtureError::io(format!("consul config {}", config_file.display()), source)
        })?;
        let mut agent = ConsulAgent {
            program,
            http_port,
            dir,
            child: None,
        };
        agent.launch()?;
        Ok(agent)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Kills the agent, as a crash would. Its data is gone (dev mode keeps it in memory).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Stops the agent if it runs, then starts it again on the same ports and waits until it
    /// has a leader.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = self.dir.path().join("consul.log");
        let mut command = Command::new(&self.program);
        command
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .args(["-node", "cim-test"])
            .arg("-config-file")
            .arg(self.dir.path().join("cim-test.hcl"));
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let what = format!("consul agent -dev on {addr}");
        self.child = Some(spawn_ready(&what, command, &log, || has_leader(addr))?);
        Ok(())
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `consul version` says 1.14 or newer (or cannot be read: assume a current one).
fn knows_grpc_tls(program: &Path) -> bool {
    let Ok(output) = Command::new(program).arg("version").output() else {
        return true;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))
        .map(|v| {
            v.split('.')
                .filter_map(|n| n.parse::<u32>().ok())
                .collect::<Vec<_>>()
        });
    match version.as_deref() {
        Some([major, minor, ..]) => (*major, *minor) >= (1, 14),
        _ => true,
    }
}

/// Whether the agent at `addr` answers `GET /v1/status/leader` with a leader's address.
fn has_leader(addr: SocketAddr) -> bool {
    let request = "GET /v1/status/leader HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let Some(reply) = ask(addr, request.as_bytes()) else {
        return false;
    };
    let Some((head, body)) = reply.split_once("\r\n\r\n") else {
        return false;
    };
    let body = body.trim();
    head.split_whitespace().nth(1) == Some("200") && body.starts_with('"') && body.len() > 2
}

/// A Consul this process started and owns: a real agent, or the stand-in.
#[derive(Debug)]
pub enum ConsulServer {
    /// A `consul agent -dev`.
    Agent(ConsulAgent),
    /// cim's stand-in for Consul's HTTP API (**not Consul**).
    StandIn(ConsulStandIn),
}

impl ConsulServer {
    /// Stops it at once, as a crash would.
    pub fn stop(&mut self) {
        match self {
            ConsulServer::Agent(agent) => agent.stop(),
            ConsulServer::StandIn(stand_in) => stand_in.stop(),
        }
    }

    /// Restarts it on the same address, empty.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        match self {
            ConsulServer::Agent(agent) => agent.restart(),
            ConsulServer::StandIn(stand_in) => stand_in.restart(),
        }
    }

    /// A dev agent if `consul` is installed, else the stand-in (announced on stderr once per
    /// process).
    fn start() -> Result<ConsulServer, FixtureError> {
        if find_program("consul", &[]).is_some() {
            return ConsulAgent::start().map(ConsulServer::Agent);
        }
        static NOTE: Once = Once::new();
        NOTE.call_once(|| {
            // Straight to stderr, not `eprintln!`: the harness captures the macros' output of
            // passing tests, and this must be seen.
            let _ = writeln!(std::io::stderr(), "{STAND_IN_NOTE}");
        });
        ConsulStandIn::start_with(stand_in_options()).map(ConsulServer::StandIn)
    }
}

impl Server for ConsulServer {
    const NAME: &'static str = "Consul";
    const ENV: &'static str = CONSUL_HTTP_ADDR_ENV;

    /// The HTTP address, `http://127.0.0.1:PORT`.
    fn address(&self) -> String {
        match self {
            ConsulServer::Agent(agent) => agent.address(),
            ConsulServer::StandIn(stand_in) => stand_in.address(),
        }
    }
}

/// The Consul a test runs against: an agent or stand-in this process started, or an existing
/// agent named by [`CONSUL_HTTP_ADDR_ENV`] (its HTTP address is the [`Target::address`]).
pub type ConsulTarget = Target<ConsulServer>;

impl ConsulTarget {
    /// Whether this is the stand-in rather than a real Consul.
    pub fn is_stand_in(&self) -> bool {
        matches!(self, Target::Started(ConsulServer::StandIn(_)))
    }
}

/// How the fixture sets up the stand-in: Consul's defaults but [`SESSION_TTL_MIN`].
pub fn stand_in_options() -> StandInOptions {
    StandInOptions {
        session_ttl_min: SESSION_TTL_MIN,
        ..StandInOptions::default()
    }
}

/// The agent named by [`CONSUL_HTTP_ADDR_ENV`] if set, else a dev agent if `consul` is
/// installed, else the stand-in (announced on stderr once per process).
pub fn consul_target() -> Result<ConsulTarget, FixtureError> {
    Target::from_env(ConsulServer::start)
}

/// One Consul for all the tests of a process that do not stop it: started on first use (as
/// [`consul`] does) and stopped when its last user drops it; a later user starts another.
/// Tests that stop or restart their Consul must own it: use [`consul`].
pub fn shared_consul() -> Option<Arc<ConsulTarget>> {
    static SHARED: Mutex<Weak<ConsulTarget>> = Mutex::new(Weak::new());
    // Held while starting, so that concurrent first users wait for one start.
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(target) = shared.upgrade() {
        return Some(target);
    }
    let target = Arc::new(consul()?);
    *shared = Arc::downgrade(&target);
    Some(target)
}

/// [`consul_target`] through [`crate::require_or_skip`]. The stand-in is always available, so
/// this is `None` only when an installed `consul` fails to start (outside CI).
pub fn consul() -> Option<ConsulTarget> {
    crate::require_or_skip(consul_target())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpStream;

    use super::*;

    /// One HTTP/1.0 exchange: the status code and the body.
    fn exchange(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("receive");
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    #[test]
    fn a_stopped_stand_in_is_silent_and_a_restarted_one_answers_empty_on_the_same_port() {
        let mut stand_in = ConsulStandIn::start_with(stand_in_options()).expect("start");
        let addr = SocketAddr::from(([127, 0, 0, 1], stand_in.port()));
        assert!(has_leader(addr), "ready as soon as started");
        assert_eq!(exchange(addr, "PUT", "/v1/kv/cimtest/k", "v").0, 200);
        assert_eq!(
            exchange(addr, "GET", "/v1/kv/cimtest/k?raw", ""),
            (200, "v".into())
        );

        stand_in.stop();
        // Not "nothing listens": a fixture running beside this test may take the freed port.
        assert!(!has_leader(addr), "a stopped stand-in no longer answers");

        stand_in.restart().expect("restart");
        assert_eq!(stand_in.address(), format!("http://{addr}"));
        assert!(has_leader(addr));
        assert_eq!(
            exchange(addr, "GET", "/v1/kv/cimtest/k", "").0,
            404,
            "a restart loses every key, like a dev agent's"
        );
    }

    #[test]
    fn the_stand_in_says_what_it_is_not_for_endpoints_it_lacks() {
        let stand_in = ConsulStandIn::start().expect("start");
        let addr = SocketAddr::from(([127, 0, 0, 1], stand_in.port()));
        let (status, body) = exchange(addr, "GET", "/v1/catalog/services", "");
        assert_eq!(status, 404);
        assert!(body.contains("not Consul"), "{body}");
    }
}
