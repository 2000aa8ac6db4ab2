//! # cim-example-custom-adapter
//!
//! How a third party adds a backend to cim without touching cim: a [`SessionStore`] called
//! `tiny`, from trait to config file to conformance run. The steps, one per file:
//!
//! 1. **Implement the trait from its contract** (`src/store.rs`): the doc comment on
//!    [`SessionStore`] is the specification; [`TinySessionStore`] is a plain reading of it.
//! 2. **Declare capabilities honestly**: `tiny` can list who is online but chooses not to count
//!    them, so its capabilities say `count_online: false` and
//!    [`count_online`](SessionStore::count_online) answers
//!    [`Unsupported`](cim_core::ErrorKind::Unsupported). A caller can check before asking, and
//!    the conformance suite skips what is not claimed instead of failing it.
//! 3. **Type the configuration** (`src/config.rs`): the backend's own keys are a serde struct,
//!    [`TinyConfig`], that rejects unknown keys, so a typo fails at startup with the key's name.
//! 4. **Register by name** (`src/lib.rs`): one `inventory::submit!` puts a factory in cim-core's
//!    [registry](cim_core::registry), and `[sessions] backend = "tiny"` selects it.
//! 5. **Prove it**: `tests/conformance.rs` loads `cim.toml`, builds the store through the
//!    registry and runs the shared conformance suite against it.
//!
//! A binary that wants `tiny` depends on this crate and calls [`link`] once at startup; after
//! that, `Stores::from_config` finds it like any built-in backend.

mod config;
mod store;

use std::sync::Arc;

use cim_core::registry::{BackendOptions, BuildFuture, SessionStoreFactory};
use cim_core::{Error, SessionStore};

pub use config::TinyConfig;
pub use store::TinySessionStore;

inventory::submit! {
    SessionStoreFactory::new(
        "tiny",
        "example third-party adapter: sessions in process memory, listed but not counted",
        build,
    )
}

/// Builds a [`TinySessionStore`] from its `[sessions]` section; the registry calls it when the
/// config says `backend = "tiny"`.
fn build(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        // Unknown or mistyped keys fail here, with the section and key named in the error.
        let config: TinyConfig = options.parse()?;
        if config.max_sessions == 0 {
            return Err(Error::config(
                "[sessions] max_sessions must be at least 1 (or left out for the default)",
            ));
        }
        let ttl = options.ttl().unwrap_or(TinySessionStore::DEFAULT_TTL);
        if ttl.is_zero() {
            return Err(Error::config(
                "[sessions] ttl must be longer than zero, e.g. \"30s\"",
            ));
        }
        // The namespace is ignored on purpose: each instance keeps its own data in its own
        // process, so there is nothing shared to isolate.
        let store: Arc<dyn SessionStore> = Arc::new(TinySessionStore::new(ttl, config));
        Ok(store)
    })
}

/// Does nothing; call it once (e.g. first thing in `main`) so the linker keeps this crate's
/// registration.
///
/// `inventory` collects registrations from the crates linked into the binary, and a crate that
/// a binary depends on but never uses can be dropped by the linker, registration and all: the
/// config would then name `tiny` and get "unknown backend". Calling any item of the crate keeps
/// it linked.
pub fn link() {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cim_core::registry::build;
    use cim_core::{CoreConfig, Error, ErrorKind, SessionStore};

    /// Builds the `[sessions]` store that `toml` selects, through the registry.
    async fn build_sessions(toml: &str) -> cim_core::Result<Arc<dyn SessionStore>> {
        let config = CoreConfig::from_toml(toml)?;
        build::<dyn SessionStore>(config.backend_options("sessions")?).await
    }

    /// The error building from `toml` fails with.
    async fn build_error(toml: &str) -> Error {
        match build_sessions(toml).await {
            Ok(_) => panic!("building from {toml:?} should fail"),
            Err(e) => e,
        }
    }

    #[tokio::test]
    async fn the_config_selects_tiny_by_name() {
        let store = build_sessions("[sessions]\nbackend = \"tiny\"\nmax_sessions = 5")
            .await
            .expect("tiny is registered and the config is valid");
        assert!(
            !store.capabilities().count_online,
            "the store built must be tiny's"
        );
    }

    #[tokio::test]
    async fn an_unknown_key_is_a_config_error_naming_the_key() {
        let err = build_error("[sessions]\nbackend = \"tiny\"\nmax_sesions = 5").await;
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("max_sesions"), "{err}");
    }

    #[tokio::test]
    async fn a_zero_limit_is_a_config_error() {
        let err = build_error("[sessions]\nbackend = \"tiny\"\nmax_sessions = 0").await;
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("max_sessions"), "{err}");
    }
}
