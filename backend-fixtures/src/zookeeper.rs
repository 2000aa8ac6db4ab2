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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ask, find_program, free_port, kill, spawn_ready, temp_dir};
use crate::{FixtureError, Server, Target};

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
        let dir = temp_dir("zookeeper")?;
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
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let what = format!("zookeeper on {addr}");
        self.child = Some(spawn_ready(&what, command, &log, || serves(addr))?);
        Ok(())
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

/// Whether the ZooKeeper at `addr` is up (`ruok` is `imok`) and serving (`srvr` shows its mode).
fn serves(addr: SocketAddr) -> bool {
    ask(addr, b"ruok").is_some_and(|reply| reply == "imok")
        && ask(addr, b"srvr").is_some_and(|reply| reply.contains("Mode:"))
}

impl Server for ZooKeeperServer {
    const NAME: &'static str = "ZooKeeper";
    const ENV: &'static str = ZOOKEEPER_ENV;

    /// [`ZooKeeperServer::connect_string`].
    fn address(&self) -> String {
        self.connect_string()
    }
}

/// The ZooKeeper a test runs against: one this process started, or an existing one named by
/// [`ZOOKEEPER_ENV`] (its connect string is the [`Target::address`]).
pub type ZooKeeperTarget = Target<ZooKeeperServer>;

/// The ZooKeeper named by [`ZOOKEEPER_ENV`] if set, else a freshly started one.
pub fn zookeeper_target() -> Result<ZooKeeperTarget, FixtureError> {
    Target::from_env(ZooKeeperServer::start)
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
