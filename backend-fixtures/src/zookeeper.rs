//! A throwaway standalone ZooKeeper on a free loopback port, in its own temporary directory,
//! tuned for tests: a 100 ms tick, so that sessions may be as short as 200 ms (cim's suite keeps
//! its TTLs around a second to make expiry cases fast), and sessions up to 60 s allowed (the
//! default maximum of 20 ticks would cap them at 2 s).
//!
//! It is started the way Debian's package is meant to be run, `zkServer.sh start-foreground
//! /ABSOLUTE/zoo.cfg` (Debian's `zkEnv.sh` ignores `ZOOCFGDIR`, so only an absolute path works),
//! which execs the JVM: the child's pid is the server's. JMX is off and the JVM is kept small, so
//! it answers in well under a second. Readiness is ZooKeeper's own `ruok` (then `srvr`, which
//! only a serving server answers with its mode).
//!
//! [`ZooKeeperServer::stop`] kills the JVM, as a crash would. [`ZooKeeperServer::restart`] starts
//! it again on the same port and data directory: ZooKeeper restores its nodes and sessions from
//! its transaction log and gives each restored session a fresh timeout, so clients that come back
//! in time keep their sessions. [`ZooKeeperServer::restart_empty`] starts it with its data gone,
//! as after losing the disk: every session is unknown to it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use crate::FixtureError;
use crate::process::{find_program, free_port, kill, spawn_logged, wait_ready};

/// The environment variable naming an existing ZooKeeper (a connect string, `host:port`) to test
/// against instead of starting one.
pub const ZOOKEEPER_ENV: &str = "CIM_TEST_ZOOKEEPER";

/// Where Debian installs `zkServer.sh` (not on `PATH`).
const INSTALL_DIR: &str = "/usr/share/zookeeper/bin";

/// The server's tick: sessions can be as short as two of them.
pub const TICK: Duration = Duration::from_millis(100);

/// The shortest session timeout the server grants (two ticks).
pub const MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(200);

/// The longest session timeout the server grants.
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// A ZooKeeper server child process owned by the test. Dropping it kills the server (also when
/// the test panics) and removes its directory.
#[derive(Debug)]
pub struct ZooKeeperServer {
    script: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl ZooKeeperServer {
    /// Starts a server and waits until it serves.
    pub fn start() -> Result<ZooKeeperServer, FixtureError> {
        let missing = |program| FixtureError::Missing {
            program,
            install: "apt-get install zookeeper",
            env: ZOOKEEPER_ENV,
        };
        let script = find_program("zkServer.sh", &[PathBuf::from(INSTALL_DIR)])
            .ok_or(missing("zkServer.sh"))?;
        find_program("java", &[]).ok_or(missing("java"))?;
        let dir = tempfile::Builder::new()
            .prefix("cim-zookeeper-")
            .tempdir()
            .map_err(|source| FixtureError::io("a temporary directory for zookeeper", source))?;
        let mut server = ZooKeeperServer {
            script,
            port: free_port()?,
            dir,
            child: None,
        };
        server.write_config()?;
        server.launch()?;
        Ok(server)
    }

    /// The connect string, `127.0.0.1:PORT`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server, as a crash would. Its data stays on disk.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Stops the server if it runs, then starts it again on the same port and data directory
    /// and waits until it serves.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        self.launch()
    }

    /// Stops the server if it runs, deletes its data, and starts it again on the same port: a
    /// server that lost every node and session.
    pub fn restart_empty(&mut self) -> Result<(), FixtureError> {
        self.stop();
        let data = self.data_dir();
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|source| {
                FixtureError::io(format!("removing {}", data.display()), source)
            })?;
        }
        self.launch()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("zoo.cfg")
    }

    fn write_config(&self) -> Result<(), FixtureError> {
        let config = format!(
            "tickTime={tick}\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout={min}\n\
             maxSessionTimeout={max}\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr\n",
            tick = TICK.as_millis(),
            data = self.data_dir().display(),
            port = self.port,
            min = MIN_SESSION_TIMEOUT.as_millis(),
            max = MAX_SESSION_TIMEOUT.as_millis(),
        );
        let path = self.config_path();
        std::fs::write(&path, config)
            .map_err(|source| FixtureError::io(format!("writing {}", path.display()), source))
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = self.dir.path().join("zookeeper.log");
        let mut command = Command::new(&self.script);
        command
            .arg("start-foreground")
            .arg(self.config_path())
            .env("JMXDISABLE", "true")
            .env("JVMFLAGS", jvm_flags(self.dir.path()));
        let mut child = spawn_logged(command, &log)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let what = format!("zookeeper on {addr}");
        let ready = wait_ready(&what, &mut child, &log, || serves(addr));
        self.child = Some(child);
        if ready.is_err() {
            self.stop();
        }
        ready
    }
}

/// A small JVM that starts fast, logging into `dir` instead of `/var/log/zookeeper`.
fn jvm_flags(dir: &Path) -> String {
    format!(
        "-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dzookeeper.log.dir={}",
        dir.display()
    )
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The answer of ZooKeeper at `addr` to the four-letter word `command`, if any.
fn four_letter(addr: SocketAddr, command: &[u8; 4]) -> Option<String> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(command).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// Whether the ZooKeeper at `addr` is up (`ruok` is `imok`) and serving (`srvr` shows its mode).
fn serves(addr: SocketAddr) -> bool {
    four_letter(addr, b"ruok").is_some_and(|reply| reply == "imok")
        && four_letter(addr, b"srvr").is_some_and(|reply| reply.contains("Mode:"))
}

/// The ZooKeeper a test runs against: one this process started, or an existing one named by
/// [`ZOOKEEPER_ENV`].
#[derive(Debug)]
pub enum ZooKeeperTarget {
    /// A server this process started and owns.
    Started(ZooKeeperServer),
    /// An existing server, from [`ZOOKEEPER_ENV`].
    External {
        /// Its connect string, as given.
        connect: String,
    },
}

impl ZooKeeperTarget {
    /// The connect string.
    pub fn connect_string(&self) -> String {
        match self {
            ZooKeeperTarget::Started(server) => server.connect_string(),
            ZooKeeperTarget::External { connect } => connect.clone(),
        }
    }

    /// The owned server, for tests that stop and restart it (`None` for an external one).
    pub fn server_mut(&mut self) -> Option<&mut ZooKeeperServer> {
        match self {
            ZooKeeperTarget::Started(server) => Some(server),
            ZooKeeperTarget::External { .. } => None,
        }
    }
}

/// The ZooKeeper named by [`ZOOKEEPER_ENV`] if set, else a freshly started one.
pub fn zookeeper_target() -> Result<ZooKeeperTarget, FixtureError> {
    match std::env::var(ZOOKEEPER_ENV) {
        Ok(connect) if !connect.is_empty() => Ok(ZooKeeperTarget::External { connect }),
        _ => ZooKeeperServer::start().map(ZooKeeperTarget::Started),
    }
}

/// [`zookeeper_target`] through [`crate::require_or_skip`]: `None` (after printing why) when no
/// ZooKeeper is available outside CI; panics inside CI.
pub fn zookeeper() -> Option<ZooKeeperTarget> {
    crate::require_or_skip(zookeeper_target())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_server_serves_until_stopped_and_again_after_restart() {
        let Some(mut server) = crate::require_or_skip(ZooKeeperServer::start()) else {
            return;
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port()));
        assert!(serves(addr));

        server.stop();
        assert!(!serves(addr), "a stopped server must not answer");

        server.restart().expect("restarts on the same port");
        assert!(serves(addr));
        server.restart_empty().expect("restarts without its data");
        assert!(serves(addr));
        assert_eq!(
            server.connect_string(),
            format!("127.0.0.1:{}", addr.port())
        );
    }
}
