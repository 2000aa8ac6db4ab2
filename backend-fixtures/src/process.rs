//! What every server fixture needs: finding the program, a free loopback port, a child process
//! that dies with its owner, and a bounded wait for readiness (never a fixed sleep: servers are
//! ready in milliseconds on a quiet machine and in seconds on a loaded CI runner).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::FixtureError;

/// How long a server may take to become ready before the fixture gives up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The first executable called `name` on `PATH` or in one of `also_in` (directories packages
/// install into but do not put on `PATH`, e.g. `/usr/lib/postgresql/15/bin`).
pub fn find_program(name: &str, also_in: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(also_in.iter().cloned())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A loopback port nothing listens on right now. Another process could take it before the
/// server binds it; fixtures report that as a readiness failure rather than guessing.
pub fn free_port() -> Result<u16, FixtureError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| FixtureError::io("a free loopback port", source))
}

/// Starts `command` with its output appended to `log`.
pub fn spawn_logged(mut command: Command, log: &Path) -> Result<Child, FixtureError> {
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| FixtureError::io(format!("log file {}", log.display()), source))
    };
    let program = PathBuf::from(command.get_program());
    command
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .spawn()
        .map_err(|source| FixtureError::Spawn { program, source })
}

/// Polls `ready` until it says yes, `child` exits, or [`READY_TIMEOUT`] passes. `what` and the
/// tail of `log` go into the error.
pub fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> Result<(), FixtureError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if ready() {
            return Ok(());
        }
        let reason = match child.try_wait() {
            Ok(Some(status)) => Some(format!("the process exited ({status})")),
            Ok(None) if started.elapsed() >= READY_TIMEOUT => {
                Some("no answer to the readiness check".to_string())
            }
            Ok(None) => None,
            Err(error) => Some(format!("could not check the process: {error}")),
        };
        if let Some(reason) = reason {
            return Err(FixtureError::NotReady {
                what: what.to_string(),
                waited: started.elapsed(),
                reason,
                log: log_tail(log),
            });
        }
        // Polling, not synchronisation: the readiness check is the event we wait for.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The last lines of a server log, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Kills and reaps `child` if it is still running.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        // Already exited is fine: either way it is gone.
        let _ = child.kill();
        let _ = child.wait();
    }
}
