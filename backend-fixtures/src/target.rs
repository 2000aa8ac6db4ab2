//! [`Target`]: the server a test runs against, the same way for every backend: one the fixture
//! started, or an existing one named by an environment variable. Failure tests need the former
//! (they stop and restart it), and [`Target::owned`] says so when they get the latter.

use crate::FixtureError;

/// What tests need to know of a server a fixture starts, whatever the backend.
pub trait Server {
    /// What to call it in messages, e.g. `redis-server`.
    const NAME: &'static str;
    /// The environment variable naming an existing server to test against instead.
    const ENV: &'static str;

    /// Where clients connect, in the form the environment variable takes: a URL, a connect
    /// string.
    fn address(&self) -> String;
}

/// The server a test runs against: one this process started, or an existing one named by
/// [`Server::ENV`].
#[derive(Debug)]
pub enum Target<S> {
    /// A server this process started and owns.
    Started(S),
    /// An existing server, from [`Server::ENV`].
    External {
        /// Its address, as given.
        address: String,
    },
}

impl<S: Server> Target<S> {
    /// The server named by [`Server::ENV`] if set, else the one `start` starts.
    pub(crate) fn from_env(
        start: impl FnOnce() -> Result<S, FixtureError>,
    ) -> Result<Self, FixtureError> {
        match std::env::var(S::ENV) {
            Ok(address) if !address.is_empty() => Ok(Target::External { address }),
            _ => start().map(Target::Started),
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> String {
        match self {
            Target::Started(server) => server.address(),
            Target::External { address } => address.clone(),
        }
    }

    /// The owned server, for tests that stop and restart it (`None` for an external one).
    pub fn server_mut(&mut self) -> Option<&mut S> {
        match self {
            Target::Started(server) => Some(server),
            Target::External { .. } => None,
        }
    }

    /// This target if this process owns its server, so that a test may stop and restart it;
    /// else `None`, after printing `SKIPPED: <why>` (failure tests cannot stop someone else's
    /// server).
    pub fn owned(self) -> Option<Self> {
        if let Target::External { .. } = self {
            // Straight to stderr, not `eprintln!`: the test harness captures the macros' output
            // of passing tests, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: failure tests need a {} they start themselves (unset {})",
                S::NAME,
                S::ENV
            );
            return None;
        }
        Some(self)
    }
}
