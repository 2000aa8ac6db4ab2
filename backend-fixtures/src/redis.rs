//! A throwaway `redis-server` on a free loopback port, in its own temporary directory, without
//! persistence: fast to start, and nothing outlives the test. [`RedisServer::stop`] and
//! [`RedisServer::restart`] let failure tests take it away and bring it back on the same address.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};

use tempfile::TempDir;

use crate::process::{find_program, free_port, kill, probe, spawn_ready, temp_dir};
use crate::{FixtureError, Server, Target};

/// The environment variable naming an existing Redis (`redis://host:port[/db]`) to test against
/// instead of starting one.
pub const REDIS_URL_ENV: &str = "CIM_TEST_REDIS_URL";

/// A `redis-server` child process owned by the test. Dropping it kills the server (also when
/// the test panics) and removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    program: PathBuf,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> Result<RedisServer, FixtureError> {
        let program = find_program("redis-server", &[PathBuf::from("/usr/sbin")]).ok_or(
            FixtureError::Missing {
                program: "redis-server",
                install: "apt-get install redis-server",
                env: REDIS_URL_ENV,
            },
        )?;
        let dir = temp_dir("redis")?;
        let mut server = RedisServer {
            program,
            port: free_port()?,
            dir,
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server, as a crash would. Its data is gone (it runs without persistence).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Stops the server if it runs, then starts it again on the same port and directory and
    /// waits until it answers.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(&self.program);
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let what = format!("redis-server on {addr}");
        self.child = Some(spawn_ready(&what, command, &log, || answers_ping(addr))?);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a Redis at `addr` answers `PING` with `PONG`.
pub(crate) fn answers_ping(addr: SocketAddr) -> bool {
    let Some(mut stream) = probe(addr) else {
        return false;
    };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Server for RedisServer {
    const NAME: &'static str = "redis-server";
    const ENV: &'static str = REDIS_URL_ENV;

    /// [`RedisServer::url`].
    fn address(&self) -> String {
        self.url()
    }
}

/// The Redis a test runs against: one this process started, or an existing one named by
/// [`REDIS_URL_ENV`] (its URL is the [`Target::address`]).
pub type RedisTarget = Target<RedisServer>;

/// The Redis named by [`REDIS_URL_ENV`] if set, else a freshly started one.
pub fn redis_target() -> Result<RedisTarget, FixtureError> {
    Target::from_env(RedisServer::start)
}

/// [`redis_target`] through [`crate::require_or_skip`]: `None` (after printing why) when no
/// Redis is available outside CI; panics inside CI.
pub fn redis() -> Option<RedisTarget> {
    crate::require_or_skip(redis_target())
}
