//! One child process the soak owns and abuses: started, killed, stopped, continued and started
//! again with the same command line, its output appended to one log across incarnations.
//!
//! Three things make this safe to do hundreds of times in a run:
//! - **Nothing outlives the soak.** Every child starts under `setpriv --pdeathsig KILL`, so the
//!   kernel kills it when the soak's main thread dies, however it dies (a panic, SIGKILL). All
//!   children are therefore spawned from the main thread (a worker thread that exits would take
//!   its children with it). Dropping a [`Managed`] kills its process group as well.
//! - **Signals reach the whole process.** Each child leads a process group of its own, so a
//!   SIGSTOP of PostgreSQL stops the postmaster and every backend, and the terminal's Ctrl-C
//!   reaches the soak only (which then cleans up in order) rather than every child at once.
//! - **Starting never blocks the fault loop.** [`Managed::spawn`] returns at once and
//!   [`Managed::poll_ready`] is asked on every tick, so a server that waits for a stopped Redis
//!   does not keep the loop from continuing that Redis.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::error::{Result, SoakError};
use crate::history::elapsed;

/// How a process shows that it is ready to serve.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// A line containing this text appears in its output (cim prints "... is running").
    LogLine(String),
    /// Redis answers `PING` at this address.
    RedisPing(SocketAddr),
    /// `pg_isready` says the server at this address accepts connections.
    Postgres {
        /// The `pg_isready` program.
        pg_isready: PathBuf,
        /// The server's address.
        addr: SocketAddr,
    },
}

/// What to run: the same every time the process is (re)started.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The network namespace to run it in (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// The user to run it as (PostgreSQL refuses root), if not root.
    pub user: Option<String>,
}

impl Spec {
    /// `program` with no arguments, in the root namespace, as root.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Spec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            netns: None,
            user: None,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// The command line: `setpriv --pdeathsig KILL [--reuid ...] [ip netns exec NS] program args`.
    fn command(&self) -> Command {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL"]);
        if let Some(user) = &self.user {
            command
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--init-groups");
        }
        if let Some(netns) = &self.netns {
            command.args(["ip", "netns", "exec", netns]);
        }
        command.arg(&self.program).args(&self.args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.stdin(Stdio::null()).process_group(0);
        command
    }
}

/// Where a managed process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running (never started, killed, or exited).
    Down,
    /// Spawned, not ready yet.
    Starting,
    /// Ready.
    Running,
    /// Ready, but stopped with SIGSTOP.
    Stopped,
}

/// A process the soak starts, signals and restarts.
#[derive(Debug)]
pub struct Managed {
    name: String,
    spec: Spec,
    readiness: Readiness,
    log: PathBuf,
    child: Option<Child>,
    state: State,
    /// Where the current incarnation's output starts in the log.
    log_offset: u64,
    /// When the current incarnation was spawned.
    spawned_at: Option<Instant>,
    /// How many times it was spawned.
    starts: u32,
}

/// How long a process may take to become ready before it counts as failed.
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

impl Managed {
    /// A process called `name` (for logs and reports), not started yet.
    pub fn new(name: impl Into<String>, spec: Spec, readiness: Readiness, log: PathBuf) -> Self {
        Managed {
            name: name.into(),
            spec,
            readiness,
            log,
            child: None,
            state: State::Down,
            log_offset: 0,
            spawned_at: None,
            starts: 0,
        }
    }

    /// Where it is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// The pid of the current incarnation, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it without waiting; [`Managed::poll_ready`] says when it is ready.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.kill();
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| SoakError::io(format!("opening {}", self.log.display()), e))?;
        let _ = writeln!(
            log,
            "=== cim-soak: start #{} of {} at t={:.3}s ===",
            self.starts,
            self.name,
            elapsed().as_secs_f64()
        );
        self.log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log
            .try_clone()
            .map_err(|e| SoakError::io(format!("opening {}", self.log.display()), e))?;
        let child = self
            .spec
            .command()
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| SoakError::io(format!("starting {}", self.name), e))?;
        self.child = Some(child);
        self.state = State::Starting;
        self.spawned_at = Some(Instant::now());
        Ok(())
    }

    /// Whether it is ready now: `Ok(true)` once (and while) it runs and answers, `Ok(false)`
    /// while starting, `Err` when it exited or took longer than [`START_TIMEOUT`].
    pub fn poll_ready(&mut self) -> Result<bool> {
        match self.state {
            State::Running | State::Stopped => return Ok(true),
            State::Down => return Err(self.start_error("it is not running")),
            State::Starting => {}
        }
        if let Some(status) = self.exited() {
            return Err(self.start_error(&format!("it exited ({status})")));
        }
        if self.is_ready() {
            self.state = State::Running;
            return Ok(true);
        }
        if self
            .spawned_at
            .is_some_and(|at| at.elapsed() >= START_TIMEOUT)
        {
            return Err(self.start_error(&format!("not ready within {START_TIMEOUT:?}")));
        }
        Ok(false)
    }

    /// Blocks until [`Managed::poll_ready`] says yes or fails.
    pub fn wait_ready(&mut self) -> Result<()> {
        let mut pause = Duration::from_millis(20);
        while !self.poll_ready()? {
            // Polling, not synchronisation: readiness is the event we wait for.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        Ok(())
    }

    /// The exit status if the current incarnation has exited (it is then [`State::Down`]).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.state = State::Down;
        Some(status)
    }

    /// Sends `signal` to its whole process group.
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Err(SoakError::Command {
                command: format!("kill -{signal} {}", self.name),
                detail: "the process is not running".into(),
            });
        };
        killpg(pid_of(pid), signal).map_err(|errno| SoakError::Command {
            command: format!("kill -{signal} -{pid} ({})", self.name),
            detail: errno.to_string(),
        })?;
        match signal {
            Signal::SIGSTOP => self.state = State::Stopped,
            Signal::SIGCONT if self.state == State::Stopped => self.state = State::Running,
            _ => {}
        }
        Ok(())
    }

    /// Kills the whole process group with SIGKILL and reaps the leader.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Gone already is fine: either way it is gone.
            let _ = killpg(pid_of(child.id()), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.state = State::Down;
    }

    /// Asks the leader to stop with `signal` (SIGTERM for Redis, SIGINT for PostgreSQL's fast
    /// shutdown), waits up to `grace`, then kills what is left.
    pub fn shut_down(&mut self, signal: Signal, grace: Duration) {
        let Some(pid) = self.pid() else {
            self.state = State::Down;
            return;
        };
        // A stopped process cannot act on the signal; continue it first.
        let _ = killpg(pid_of(pid), Signal::SIGCONT);
        if kill(pid_of(pid), signal).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if self.exited().is_some() {
                    return;
                }
                // Polling the child's exit, which has no blocking wait with a deadline.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        cim_backend_fixtures::process::log_tail(&self.log)
    }

    fn start_error(&self, reason: &str) -> SoakError {
        SoakError::Start {
            what: self.name.clone(),
            reason: reason.to_string(),
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    fn is_ready(&self) -> bool {
        match &self.readiness {
            Readiness::LogLine(text) => {
                read_from(&self.log, self.log_offset).is_some_and(|out| out.contains(text.as_str()))
            }
            Readiness::RedisPing(addr) => answers_ping(*addr),
            Readiness::Postgres { pg_isready, addr } => Command::new(pg_isready)
                .args(["-q", "-t", "1", "-h"])
                .arg(addr.ip().to_string())
                .arg("-p")
                .arg(addr.port().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success()),
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pid as nix wants it.
fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// The text of `path` from byte `offset` on.
fn read_from(path: &Path, offset: u64) -> Option<String> {
    let mut file = File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

/// Whether a Redis at `addr` answers `PING` with `PONG`.
fn answers_ping(addr: SocketAddr) -> bool {
    let Some(mut stream) = cim_backend_fixtures::process::probe(addr) else {
        return false;
    };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Creates `dir` (and its parents) if missing.
pub fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| SoakError::io(format!("creating {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_child_is_wrapped_to_die_with_the_soak_and_runs_in_its_namespace() {
        let spec = Spec::new("/bin/cim")
            .args(["server", "--config", "c.toml"])
            .env("CIM_SERVER__ID", "node-1");
        let spec = Spec {
            netns: Some("soak-1-1".into()),
            ..spec
        };
        let command = spec.command();
        let args: Vec<_> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(command.get_program(), "setpriv");
        assert_eq!(
            args,
            [
                "--pdeathsig",
                "KILL",
                "ip",
                "netns",
                "exec",
                "soak-1-1",
                "/bin/cim",
                "server",
                "--config",
                "c.toml"
            ]
        );
    }

    #[test]
    fn a_process_that_exits_before_it_is_ready_is_a_start_error_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = Spec::new("/bin/sh").args(["-c", "echo going away; exit 3"]);
        let mut process = Managed::new(
            "quitter",
            spec,
            Readiness::LogLine("never printed".into()),
            dir.path().join("quitter.log"),
        );
        process.spawn().expect("spawns");
        let error = process.wait_ready().expect_err("exits instead");
        let text = error.to_string();
        assert!(text.contains("quitter did not start"), "{text}");
        assert!(text.contains("going away"), "{text}");
        assert_eq!(process.state(), State::Down);
    }

    #[test]
    fn readiness_only_counts_output_of_the_current_incarnation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("p.log");
        let spec = Spec::new("/bin/sh").args(["-c", "echo ready now; sleep 30"]);
        let mut process = Managed::new("p", spec, Readiness::LogLine("ready now".into()), log);
        process.spawn().expect("spawns");
        process.wait_ready().expect("ready");
        process.kill();
        // The old "ready now" is in the log; a new incarnation that prints nothing is not ready.
        process.spec = Spec::new("/bin/sh").args(["-c", "sleep 30"]);
        process.spawn().expect("spawns again");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!process.poll_ready().expect("still starting"));
        process.kill();
    }
}
