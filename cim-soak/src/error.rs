//! [`SoakError`]: why the harness itself could not do its job.
//!
//! A violation the checker finds is not an error: it is the result, reported and turned into a
//! non-zero exit code by `main`. Errors are for the harness: a prerequisite missing (which is a
//! skip outside CI), a command that failed while building the network, a process that would not
//! start. The distinction matters to whoever reads a red CI run: "cim lost a message" and "the
//! soak could not start PostgreSQL" call for different people.

use std::path::PathBuf;

/// The result type of the harness.
pub type Result<T, E = SoakError> = std::result::Result<T, E>;

/// Why the soak could not run (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoakError {
    /// Something the soak needs is not there (root, `ip netns`, a backend program). Outside CI
    /// this is a skip, not a failure.
    #[error("{0}")]
    Prerequisite(String),
    /// A program the harness runs (ip, iptables, tc, kill) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error.
        detail: String,
    },
    /// A child process (a backend, the route, a server) did not start or get ready.
    #[error("{what} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// Which process.
        what: String,
        /// Why.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The clients could not be set up (accounts, groups) through the route.
    #[error("client setup failed: {0}")]
    Clients(String),
    /// The run was interrupted (Ctrl-C, SIGTERM).
    #[error("interrupted")]
    Interrupted,
}

impl SoakError {
    /// [`SoakError::Io`] with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SoakError::Io {
            what: what.into(),
            source,
        }
    }
}
