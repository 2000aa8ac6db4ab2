//! # cim-backend-fixtures
//!
//! Real backend servers for adapter tests. An adapter is only as good as its behaviour against
//! the real thing, so its conformance tests start the real server: a child process on a free
//! loopback port, in a temporary directory, awaited until it answers, and killed when the
//! fixture is dropped (also when a test panics).
//!
//! A missing server program is not silently ignored: [`require_or_skip`] prints
//! `SKIPPED: <what to install>` on a developer's machine and fails inside CI (`CI=true`), where
//! a skipped backend would hide a broken adapter. Every fixture also accepts an existing server
//! through an environment variable (e.g. [`redis::REDIS_URL_ENV`]): what a test gets is a
//! [`Target`], the server it started or the one named, and failure tests, which must stop and
//! restart their server, take only the former ([`Target::owned`]).
//!
//! ```no_run
//! // tests/conformance.rs of an adapter crate (harness = false)
//! fn main() -> std::process::ExitCode {
//!     let Some(redis) = cim_backend_fixtures::redis::redis() else {
//!         return std::process::ExitCode::SUCCESS;
//!     };
//!     let url = redis.address();
//!     // ... build the suite against `url` and run it while `redis` is alive ...
//!     # let _ = url;
//!     std::process::ExitCode::SUCCESS
//! }
//! ```

pub mod consul;
mod error;
pub mod etcd;
pub mod outage;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
mod target;
pub mod zookeeper;

pub use error::FixtureError;
pub use redis::{RedisServer, RedisTarget};
pub use redis_cluster::{RedisCluster, RedisClusterTarget};
pub use target::{Server, Target};

/// Whether we run inside CI, where a missing backend is a failure: `CI` set to anything but
/// empty, `0` or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// The fixture's value, or `None` after printing `SKIPPED: <why>` outside CI.
///
/// # Panics
/// Inside CI (see [`in_ci`]), when `result` is an error: a backend that cannot be tested there
/// is a failure, not a skip.
pub fn require_or_skip<T>(result: Result<T, FixtureError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) if in_ci() => panic!("backend fixture unavailable in CI: {error}"),
        Err(error) => {
            // Straight to stderr, not `eprintln!`: the test harness captures the macros' output
            // of passing tests, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {error}");
            None
        }
    }
}
