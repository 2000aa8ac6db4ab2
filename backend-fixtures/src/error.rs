//! [`FixtureError`]: why a real server could not be provided, worded so that whoever reads a
//! skipped or failed test knows what to do about it.

use std::path::PathBuf;
use std::time::Duration;

/// Why a fixture could not provide a running server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// The server's program is not installed here.
    #[error(
        "`{program}` is not installed; install it with `{install}` (or point the tests at a running server with {env})"
    )]
    Missing {
        /// The program that was looked for, e.g. `redis-server`.
        program: &'static str,
        /// The command that installs it, e.g. `apt-get install redis-server`.
        install: &'static str,
        /// The environment variable that names an existing server instead.
        env: &'static str,
    },
    /// The program exists but could not be started.
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program that failed to start.
        program: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The server started but did not answer its readiness check in time, or exited early.
    #[error("{what} was not ready after {waited:?}: {reason}\n--- server log (tail) ---\n{log}")]
    NotReady {
        /// Which server, e.g. `redis-server on 127.0.0.1:40123`.
        what: String,
        /// How long the fixture waited.
        waited: Duration,
        /// Why it gave up (timeout, or the exit status if the process died).
        reason: String,
        /// The end of the server's log, to see why.
        log: String,
    },
    /// A local resource (temporary directory, free port, log file) could not be set up.
    #[error("could not prepare {what}: {source}")]
    Io {
        /// What was being prepared.
        what: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl FixtureError {
    /// An [`FixtureError::Io`] about `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        FixtureError::Io {
            what: what.into(),
            source,
        }
    }
}
