//! What every server fixture needs: finding the program, a free loopback port, a child process
//! that dies with its owner, and a bounded wait for readiness (never a fixed sleep: servers are
//! ready in milliseconds on a quiet machine and in seconds on a loaded CI runner).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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

/// A loopback port nothing listens on right now, for a process started later to listen on.
///
/// It comes from below Linux's ephemeral range (32768 and up), which the kernel hands out to
/// outbound connections and to `bind(0)`: a port from that range, released here, could be
/// taken by any process's next connection before the server binds it. Another process could
/// still take a port from below the range; fixtures report that as a readiness failure rather
/// than guessing.
pub fn free_port() -> Result<u16, FixtureError> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = (nanos as u16) ^ (std::process::id() as u16);
    let mut last = None;
    for _ in 0..2000 {
        let offset = seed.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed)) % 12_000;
        let port = 20_000 + offset;
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    let source = last.unwrap_or_else(|| std::io::Error::other("no port tried"));
    Err(FixtureError::io("a free loopback port below 32768", source))
}

/// A new temporary directory for a `name` server (`cim-{name}-...`), removed when dropped.
pub fn temp_dir(name: &str) -> Result<TempDir, FixtureError> {
    tempfile::Builder::new()
        .prefix(&format!("cim-{name}-"))
        .tempdir()
        .map_err(|source| FixtureError::io(format!("a temporary directory for {name}"), source))
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

/// Starts `command` with its output appended to `log` and waits until `ready` says yes (see
/// [`wait_ready`]); a child that does not get ready is killed.
pub fn spawn_ready(
    what: &str,
    command: Command,
    log: &Path,
    ready: impl FnMut() -> bool,
) -> Result<Child, FixtureError> {
    let mut child = spawn_logged(command, log)?;
    match wait_ready(what, &mut child, log, ready) {
        Ok(()) => Ok(child),
        Err(error) => {
            kill(&mut Some(child));
            Err(error)
        }
    }
}

/// A connection to `addr` for a readiness check: short timeouts on connecting, reading and
/// writing, so that a check never hangs on a server that is not there yet.
pub fn probe(addr: SocketAddr) -> Option<TcpStream> {
    let timeout = Duration::from_millis(500);
    let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    Some(stream)
}

/// Sends `request` over a [`probe`] connection to `addr` and reads the answer until the server
/// closes the connection (HTTP/1.0, ZooKeeper's four-letter words).
pub fn ask(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut stream = probe(addr)?;
    stream.write_all(request).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
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
