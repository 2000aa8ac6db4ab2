//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, then `postgres` on a
//! free loopback port with `fsync=off` (the tests need a real server, not a durable disk), its
//! Unix socket inside the same directory so it never collides with a system server.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (containers, CI), both
//! programs run as the `postgres` user through `setpriv`, which execs the program directly, so
//! the child's pid is the postmaster's and stopping it stops the server. The directory is
//! handed to that user first.
//!
//! [`PostgresServer::stop`] shuts the server down the fast way (`SIGINT`: open connections are
//! cut, as when a database host goes away) and [`PostgresServer::restart`] starts it again on
//! the same port and data directory, so failure tests see the same data come back.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::{find_program, free_port, kill, log_tail, spawn_logged, temp_dir, wait_ready};
use crate::{FixtureError, Server, Target};

/// The environment variable naming an existing PostgreSQL
/// (`postgres://user:password@host:port/database`) to test against instead of starting one. The
/// user needs the right to create schemas in that database.
pub const POSTGRES_URL_ENV: &str = "CIM_TEST_POSTGRES_URL";

/// Where Debian installs PostgreSQL's programs (not on `PATH`): one directory per major version.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// The unprivileged user the server runs as when the tests run as root.
const SERVICE_USER: &str = "postgres";

/// How long a fast shutdown may take before the server is killed outright.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL server child process owned by the test, superuser `postgres` with no password
/// (`trust` authentication, loopback only). Dropping it stops the server (also when the test
/// panics) and removes its directory.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory, starts the server, and waits until it
    /// accepts connections.
    pub fn start() -> Result<PostgresServer, FixtureError> {
        let bin = bin_dir().ok_or(FixtureError::Missing {
            program: "postgres",
            install: "apt-get install postgresql",
            env: POSTGRES_URL_ENV,
        })?;
        let run_as = if running_as_root() {
            Some(service_user()?)
        } else {
            None
        };
        let dir = temp_dir("postgres")?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|source| {
                FixtureError::io(
                    format!("{} for user {SERVICE_USER}", dir.path().display()),
                    source,
                )
            })?;
        }
        let mut server = PostgresServer {
            bin,
            run_as,
            port: free_port()?,
            dir,
            child: None,
        };
        server.init_cluster()?;
        server.launch()?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: connections are cut, committed data stays). Waits until
    /// the server has exited; kills it if it takes longer than a few seconds.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let interrupted = Command::new("kill")
            .args(["-s", "INT", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if interrupted {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                // Polling the child's exit, which has no blocking wait with a deadline.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        kill(&mut Some(child));
    }

    /// Stops the server if it runs, then starts it again on the same port and data directory
    /// and waits until it accepts connections.
    pub fn restart(&mut self) -> Result<(), FixtureError> {
        self.stop();
        self.launch()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// `program` from the install directory, as the service user when running as root.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match self.run_as {
            Some(_) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={SERVICE_USER}"))
                    .arg(format!("--regid={SERVICE_USER}"))
                    .arg("--init-groups")
                    .arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn init_cluster(&self) -> Result<(), FixtureError> {
        let log = self.dir.path().join("initdb.log");
        let mut command = self.command("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C.UTF-8"]);
        let mut child = spawn_logged(command, &log)?;
        let status = child
            .wait()
            .map_err(|source| FixtureError::io("waiting for initdb", source))?;
        if status.success() {
            Ok(())
        } else {
            Err(FixtureError::NotReady {
                what: format!("initdb in {}", self.data_dir().display()),
                waited: Duration::ZERO,
                reason: format!("initdb failed ({status})"),
                log: log_tail(&log),
            })
        }
    }

    fn launch(&mut self) -> Result<(), FixtureError> {
        let log = self.log_path();
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=200"]);
        let mut child = spawn_logged(command, &log)?;
        let what = format!("postgres on 127.0.0.1:{}", self.port);
        let is_ready = self.bin.join("pg_isready");
        let port = self.port;
        let ready = wait_ready(&what, &mut child, &log, || {
            accepts_connections(&is_ready, port)
        });
        self.child = Some(child);
        if ready.is_err() {
            self.stop();
        }
        ready
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the server on `port` accepts connections (not merely listens: a starting server
/// listens and refuses), asked with `pg_isready`, or by TCP if that is missing.
fn accepts_connections(pg_isready: &Path, port: u16) -> bool {
    match Command::new(pg_isready)
        .args(["-q", "-h", "127.0.0.1", "-t", "1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) => status.success(),
        Err(_) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        }
    }
}

/// The `bin` directory of the newest PostgreSQL installed under `/usr/lib/postgresql`, or of
/// the one whose `initdb` is on `PATH` (followed through symlinks, so that its `pg_isready` is
/// found): where `initdb`, `postgres` and `pg_isready` are.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(INSTALL_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    let installed: Vec<PathBuf> = versions.into_iter().map(|(_, bin)| bin).collect();
    let initdb = installed
        .iter()
        .map(|bin| bin.join("initdb"))
        .find(|initdb| initdb.is_file())
        .or_else(|| find_program("initdb", &[]))?;
    let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
    let bin = initdb.parent()?.to_path_buf();
    bin.join("postgres").is_file().then_some(bin)
}

/// Whether this process runs as root (`/proc/self` belongs to the process's effective user).
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The uid and gid of [`SERVICE_USER`], from `/etc/passwd`.
fn service_user() -> Result<(u32, u32), FixtureError> {
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|source| FixtureError::io("reading /etc/passwd", source))?;
    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [SERVICE_USER, _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .next()
        .ok_or_else(|| {
            FixtureError::io(
                format!(
                    "the unprivileged user {SERVICE_USER:?} to run PostgreSQL as root (the \
                     postgresql package creates it)"
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
}

impl Server for PostgresServer {
    const NAME: &'static str = "PostgreSQL";
    const ENV: &'static str = POSTGRES_URL_ENV;

    /// [`PostgresServer::url`].
    fn address(&self) -> String {
        self.url()
    }
}

/// The PostgreSQL a test runs against: one this process started, or an existing one named by
/// [`POSTGRES_URL_ENV`] (its URL is the [`Target::address`]).
pub type PostgresTarget = Target<PostgresServer>;

/// The PostgreSQL named by [`POSTGRES_URL_ENV`] if set, else a freshly started one.
pub fn postgres_target() -> Result<PostgresTarget, FixtureError> {
    Target::from_env(PostgresServer::start)
}

/// [`postgres_target`] through [`crate::require_or_skip`]: `None` (after printing why) when no
/// PostgreSQL is available outside CI; panics inside CI.
pub fn postgres() -> Option<PostgresTarget> {
    crate::require_or_skip(postgres_target())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_server_accepts_connections_until_stopped_and_again_after_restart() {
        let Some(mut target) = crate::require_or_skip(PostgresServer::start()) else {
            return;
        };
        let port = target.port();
        let bin = target.bin.clone();
        assert!(accepts_connections(&bin.join("pg_isready"), port));

        target.stop();
        assert!(!accepts_connections(&bin.join("pg_isready"), port));

        target.restart().expect("restarts on the same port");
        assert!(accepts_connections(&bin.join("pg_isready"), port));
        assert_eq!(target.port(), port);
    }
}
