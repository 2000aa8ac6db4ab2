//! The backend registry: named factories, collected at link time with `inventory`.
//!
//! Every backend crate submits one [`Factory`] per trait it implements:
//!
//! ```ignore
//! inventory::submit! {
//!     cim_core::registry::MetaStoreFactory::new("redis", "Redis keys with expiry", build_meta)
//! }
//! ```
//!
//! and a config section picks it by name (`[meta] backend = "redis"`). Only crates that are
//! linked into the binary are registered: a binary that wants an adapter must depend on it and
//! use it (calling any item of it, e.g. its `link()` function, is enough).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use figment::value::Dict;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::{AccountStore, Error, LoadBalancer, MessageStore, MetaStore, Result, SessionStore};

/// What a factory's build function returns.
pub type BuildFuture<T> = BoxFuture<'static, Result<Arc<T>>>;

/// A named way to build an implementation of trait `T` from a config section.
pub struct Factory<T: ?Sized + 'static> {
    name: &'static str,
    summary: &'static str,
    build: fn(BackendOptions) -> BuildFuture<T>,
}

impl<T: ?Sized + 'static> Factory<T> {
    /// A factory registered under `name` (what configs write), with a one-line `summary` shown
    /// when listing backends.
    pub const fn new(
        name: &'static str,
        summary: &'static str,
        build: fn(BackendOptions) -> BuildFuture<T>,
    ) -> Self {
        Factory {
            name,
            summary,
            build,
        }
    }

    /// The registered name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The one-line description.
    pub fn summary(&self) -> &'static str {
        self.summary
    }

    /// Builds an instance from `options`.
    pub fn build(&self, options: BackendOptions) -> BuildFuture<T> {
        (self.build)(options)
    }
}

impl<T: ?Sized> std::fmt::Debug for Factory<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .finish()
    }
}

/// A factory of [`MetaStore`]s.
pub type MetaStoreFactory = Factory<dyn MetaStore>;
/// A factory of [`SessionStore`]s.
pub type SessionStoreFactory = Factory<dyn SessionStore>;
/// A factory of [`AccountStore`]s.
pub type AccountStoreFactory = Factory<dyn AccountStore>;
/// A factory of [`MessageStore`]s.
pub type MessageStoreFactory = Factory<dyn MessageStore>;
/// A factory of [`LoadBalancer`] strategies.
pub type BalancerFactory = Factory<dyn LoadBalancer>;

inventory::collect!(MetaStoreFactory);
inventory::collect!(SessionStoreFactory);
inventory::collect!(AccountStoreFactory);
inventory::collect!(MessageStoreFactory);
inventory::collect!(BalancerFactory);

/// The registered factories of trait `T`, sorted by name.
pub fn factories<T: ?Sized + 'static>() -> Vec<&'static Factory<T>>
where
    Factory<T>: inventory::Collect,
{
    let mut all: Vec<_> = inventory::iter::<Factory<T>>.into_iter().collect();
    all.sort_by_key(|f| f.name);
    all
}

/// The factory of trait `T` registered as `name`, or a [`Config`](crate::ErrorKind::Config)
/// error that lists the registered names.
pub fn factory<T: ?Sized + 'static>(section: &str, name: &str) -> Result<&'static Factory<T>>
where
    Factory<T>: inventory::Collect,
{
    let all = factories::<T>();
    all.iter().copied().find(|f| f.name == name).ok_or_else(|| {
        let known: Vec<_> = all.iter().map(|f| f.name).collect();
        Error::config(format!(
            "[{section}] names unknown backend {name:?}; registered: {}",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
    })
}

/// Builds the implementation of `T` that `options` names.
pub async fn build<T: ?Sized + 'static>(options: BackendOptions) -> Result<Arc<T>>
where
    Factory<T>: inventory::Collect,
{
    let factory = factory::<T>(options.section(), options.backend())?;
    let section = options.section().to_string();
    let backend = options.backend().to_string();
    factory.build(options).await.map_err(|e| {
        e.with_context("section", section)
            .with_context("backend", backend)
    })
}

/// A backend's configuration: the common keys of its section, parsed, and its own keys, raw.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    section: String,
    backend: String,
    namespace: String,
    ttl: Option<Duration>,
    data_dir: PathBuf,
    options: Dict,
}

impl BackendOptions {
    /// Options for `backend` in config section `section`, with no backend keys, namespace `cim`,
    /// no TTL and data directory `./cim-data`. Chain the `with_*` methods to fill it in.
    pub fn new(section: impl Into<String>, backend: impl Into<String>) -> Self {
        BackendOptions {
            section: section.into(),
            backend: backend.into(),
            namespace: crate::config::DEFAULT_NAMESPACE.to_string(),
            ttl: None,
            data_dir: PathBuf::from(crate::config::DEFAULT_DATA_DIR),
            options: Dict::new(),
        }
    }

    /// Sets the namespace (key prefix, schema...) the backend keeps its data under.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the TTL (lease TTL for a meta store, server TTL for a session store).
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the data directory for embedded backends.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Sets the backend's own keys.
    pub fn with_options(mut self, options: Dict) -> Self {
        self.options = options;
        self
    }

    /// Sets one backend key.
    pub fn with_option(mut self, key: &str, value: impl Into<figment::value::Value>) -> Self {
        self.options.insert(key.to_string(), value.into());
        self
    }

    /// The config section (`meta`, `sessions`, `accounts`, `messages`, `balancer`).
    pub fn section(&self) -> &str {
        &self.section
    }

    /// The backend name the section picked.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The namespace every key, table or node of this backend lives under. Backends must
    /// isolate data by it, so that two deployments (or two test runs) can share a server.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The configured TTL, if any.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The data directory for embedded backends.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The backend's own keys, raw.
    pub fn options(&self) -> &Dict {
        &self.options
    }

    /// Parses the backend's own keys into `C`. Declare `C` with `#[serde(deny_unknown_fields)]`
    /// so a misspelt key is an error; the error names the section and the key.
    pub fn parse<C: DeserializeOwned>(&self) -> Result<C> {
        Figment::from(Serialized::defaults(&self.options))
            .extract::<C>()
            .map_err(|e| {
                let errors: Vec<String> = e
                    .into_iter()
                    .map(|e| match e.path.is_empty() {
                        true => e.kind.to_string(),
                        false => format!("{}.{}: {}", self.section, e.path.join("."), e.kind),
                    })
                    .collect();
                Error::config(format!(
                    "[{}] backend {:?}: {}",
                    self.section,
                    self.backend,
                    errors.join("; ")
                ))
            })
    }
}
