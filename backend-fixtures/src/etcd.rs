//! A throwaway single-member etcd on free loopback ports (one for clients, one for peers), its
//! data directory inside a temporary directory. Ready means `GET /health` on the client port
//! answers `{"health":"true"}`, which etcd only says once the member has elected itself leader
//! and can serve writes; a listening port alone is not enough.
//!
//! Failure tests take the server away and bring it back in two ways. [`EtcdServer::restart`]
//! keeps the data directory, as a crashed member coming back does: keys and leases survive (etcd
//! even extends every lease by its TTL when the new leader takes over). [`EtcdServer::restart_empty`]
//! starts over with an empty data directory, as a cluster rebuilt from nothing: every key and
//! lease is gone, which is how a test makes a client lose its lease without reaching into etcd.
//!
//! etcd's minimum lease TTL is 1.5 times its election timeout, rounded up to whole seconds: 2 s
//! with the default 1 s election timeout that this fixture keeps.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};

use tempfile::TempDir;

use crate::process::{ask, find_program, free_port, kill, spawn_ready, temp_dir};
use crate::{FixtureError, Server, Target};

/// The environment variable naming an existing etcd to test against instead of starting one:
/// its client URLs, comma-separated (`http://10.0.0.7:2379,http://10.0.0.8:2379`).
pub const ETCD_ENDPOINTS_ENV: &str = "CIM_TEST_ETCD_ENDPOINTS";

/// The member name, also used in `--initial-cluster`.
const MEMBER: &str = "cim-test";

/// An `etcd` child process owned by the test. Dropping it kills the server (also when the test
/// panics) and removes its directory.
#[derive(Debug)]
pub struct EtcdServer {
    program: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    /// How many times the data directory was started afresh; names the current one.
    generation: u32,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a server and waits until it reports itself healthy.
    pub fn start() -> Result<EtcdServer, FixtureError> {
        let program =
            find_program("etcd", &[PathBuf::from("/usr/bin")]).ok_or(FixtureError::Missing {
                program: "etcd",
                install: "apt-get install etcd-server",
                env: ETCD_ENDPOINTS_ENV,
            })?;
        let dir = temp_dir("etcd")?;
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let mut server = EtcdServer {
            program,
            client_port,
            peer_port,
            dir,
            generation: 0,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URLs, as an etcd client takes them (here just [`EtcdServer::url`]).
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.url()]
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// Kills the server, as a crash would. Its data directory stays for [`EtcdServer::restart`].
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Stops the server if it runs, then starts it again on the same ports and data directory
    /// and waits until it is healthy: keys and leases are still there.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        self.launch()
    }

    /// Stops the server if it runs, then starts it on the same ports with a new, empty data
    /// directory: every key, lease and revision is gone, as if the cluster had been rebuilt.
    pub fn restart_empty(&mut self) -> Result<(), FixtureError> {
        self.stop();
        let old = self.data_dir();
        self.generation += 1;
        // Only to save space: the new generation never reads the old directory.
        let _ = std::fs::remove_dir_all(old);
        self.launch()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join(format!("data-{}", self.generation))
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = self.dir.path().join("etcd.log");
        let client_url = self.url();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.program);
        command
            .arg("--name")
            .arg(MEMBER)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("{MEMBER}={peer_url}"))
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        if let Some(arch) = unsupported_arch() {
            // etcd 3.4 refuses to start on architectures it does not officially support unless
            // told the exact GOARCH.
            command.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let what = format!("etcd on {addr}");
        self.child = Some(spawn_ready(&what, command, &log, || is_healthy(addr))?);
        Ok(())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The GOARCH to name in `ETCD_UNSUPPORTED_ARCH`, for architectures etcd 3.4 does not support
/// without it (it supports amd64 and ppc64le; arm64 only from 3.5).
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" | "powerpc64" => None,
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "s390x" => Some("s390x"),
        "arm" => Some("arm"),
        other => Some(other),
    }
}

/// Whether the etcd client endpoint at `addr` answers `GET /health` with `"health":"true"`.
fn is_healthy(addr: SocketAddr) -> bool {
    // HTTP/1.0: the server closes the connection after the response.
    let request = format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let Some(response) = ask(addr, request.as_bytes()) else {
        return false;
    };
    let ok = response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200");
    let compact: String = response.chars().filter(|c| !c.is_whitespace()).collect();
    ok && compact.contains(r#""health":"true""#)
}

impl Server for EtcdServer {
    const NAME: &'static str = "etcd";
    const ENV: &'static str = ETCD_ENDPOINTS_ENV;

    /// [`EtcdServer::url`].
    fn address(&self) -> String {
        self.url()
    }
}

/// The etcd a test runs against: one this process started, or an existing cluster named by
/// [`ETCD_ENDPOINTS_ENV`] (its comma-separated client URLs are the [`Target::address`]).
pub type EtcdTarget = Target<EtcdServer>;

impl EtcdTarget {
    /// Where to connect: the client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Target::Started(server) => server.endpoints(),
            Target::External { address } => address
                .split(',')
                .map(str::trim)
                .filter(|endpoint| !endpoint.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }
}

/// The etcd named by [`ETCD_ENDPOINTS_ENV`] if set, else a freshly started one.
pub fn etcd_target() -> Result<EtcdTarget, FixtureError> {
    Target::from_env(EtcdServer::start)
}

/// [`etcd_target`] through [`crate::require_or_skip`]: `None` (after printing why) when no etcd
/// is available outside CI; panics inside CI.
pub fn etcd() -> Option<EtcdTarget> {
    crate::require_or_skip(etcd_target())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_addr(server: &EtcdServer) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], server.port()))
    }

    #[test]
    fn a_started_server_is_healthy_until_stopped_and_again_after_restarts() {
        let Some(mut server) = crate::require_or_skip(EtcdServer::start()) else {
            return;
        };
        let port = server.port();
        assert!(is_healthy(client_addr(&server)));

        server.stop();
        assert!(!is_healthy(client_addr(&server)));

        server
            .restart()
            .expect("restarts on the same ports and data");
        assert!(is_healthy(client_addr(&server)));

        server
            .restart_empty()
            .expect("restarts on the same ports, empty");
        assert!(is_healthy(client_addr(&server)));
        assert_eq!(server.port(), port);
    }
}
