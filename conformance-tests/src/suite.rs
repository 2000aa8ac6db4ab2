//! [`Suite`]: the backends under test, and the context each case gets.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cim_core::registry::{self, BackendOptions};
use cim_core::{
    AccountStore, CoreConfig, LoadBalancer, MessageStore, MetaStore, Result, SessionStore,
};
use futures::future::BoxFuture;

/// Builds a fresh store for a case.
pub type Maker<T> = Arc<dyn Fn(CaseContext) -> BoxFuture<'static, Result<Arc<T>>> + Send + Sync>;

/// What a factory gets for each case.
#[derive(Debug, Clone)]
pub struct CaseContext {
    /// A namespace unique to this case and run (lower-case letters, digits and `_`, at most 40
    /// characters). The factory must isolate the store's data by it (key prefix, schema, root
    /// node...), so runs and cases never see each other's data.
    pub namespace: String,
    /// The TTL to build lease- and session-keeping stores with (`[meta] ttl`, `[sessions] ttl`).
    /// Short, so that expiry cases run in seconds.
    pub ttl: Duration,
}

/// The backends under test. Give a factory for each trait the backend implements, then run.
pub struct Suite {
    pub(crate) name: String,
    pub(crate) ttl: Duration,
    pub(crate) meta: Option<Maker<dyn MetaStore>>,
    pub(crate) sessions: Option<Maker<dyn SessionStore>>,
    pub(crate) accounts: Option<Maker<dyn AccountStore>>,
    pub(crate) messages: Option<Maker<dyn MessageStore>>,
    pub(crate) balancers: Vec<(String, Maker<dyn LoadBalancer>)>,
}

fn maker<T, F, Fut>(factory: F) -> Maker<T>
where
    T: ?Sized + 'static,
    F: Fn(CaseContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Arc<T>>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(factory(ctx)))
}

impl Suite {
    /// The TTL cases use unless [`Suite::ttl`] says otherwise.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

    /// An empty suite for the backend called `name` (shown in test names and reports).
    pub fn new(name: impl Into<String>) -> Self {
        Suite {
            name: name.into(),
            ttl: Self::DEFAULT_TTL,
            meta: None,
            sessions: None,
            accounts: None,
            messages: None,
            balancers: Vec::new(),
        }
    }

    /// The TTL handed to factories; expiry cases wait a few of them. Raise it for a backend
    /// with a minimum (ZooKeeper's session timeout).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Tests the [`MetaStore`] that `factory` builds.
    pub fn meta<F, Fut>(mut self, factory: F) -> Self
    where
        F: Fn(CaseContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn MetaStore>>> + Send + 'static,
    {
        self.meta = Some(maker(factory));
        self
    }

    /// Tests the [`SessionStore`] that `factory` builds.
    pub fn sessions<F, Fut>(mut self, factory: F) -> Self
    where
        F: Fn(CaseContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn SessionStore>>> + Send + 'static,
    {
        self.sessions = Some(maker(factory));
        self
    }

    /// Tests the [`AccountStore`] that `factory` builds.
    pub fn accounts<F, Fut>(mut self, factory: F) -> Self
    where
        F: Fn(CaseContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn AccountStore>>> + Send + 'static,
    {
        self.accounts = Some(maker(factory));
        self
    }

    /// Tests the [`MessageStore`] that `factory` builds.
    pub fn messages<F, Fut>(mut self, factory: F) -> Self
    where
        F: Fn(CaseContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn MessageStore>>> + Send + 'static,
    {
        self.messages = Some(maker(factory));
        self
    }

    /// Tests the [`LoadBalancer`] strategy that `factory` builds; `label` tells strategies
    /// apart in test names. May be called once per strategy.
    pub fn balancer<F, Fut>(mut self, label: impl Into<String>, factory: F) -> Self
    where
        F: Fn(CaseContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn LoadBalancer>>> + Send + 'static,
    {
        self.balancers.push((label.into(), maker(factory)));
        self
    }

    /// A suite over the backends `config` names, built through the registry as a cim node
    /// would build them, but each case in its own namespace and with the suite's TTL. This is
    /// how `cim conformance --config` checks a deployment.
    pub fn from_config(name: impl Into<String>, config: &CoreConfig) -> Result<Self> {
        fn from_section<T>(config: &CoreConfig, section: &str) -> Result<Maker<T>>
        where
            T: ?Sized + 'static,
            registry::Factory<T>: inventory::Collect,
        {
            let base = config.backend_options(section)?;
            // Fail now, not in every case, if the name is unknown.
            registry::factory::<T>(base.section(), base.backend())?;
            Ok(maker(move |ctx: CaseContext| {
                let options: BackendOptions = base
                    .clone()
                    .with_namespace(ctx.namespace)
                    .with_ttl(Some(ctx.ttl));
                registry::build::<T>(options)
            }))
        }
        let balancer_options = config.backend_options("balancer")?;
        Ok(Suite::new(name)
            .with_maker_meta(from_section(config, "meta")?)
            .with_maker_sessions(from_section(config, "sessions")?)
            .with_maker_accounts(from_section(config, "accounts")?)
            .with_maker_messages(from_section(config, "messages")?)
            .with_maker_balancer(
                balancer_options.backend().to_string(),
                from_section(config, "balancer")?,
            ))
    }

    fn with_maker_meta(mut self, maker: Maker<dyn MetaStore>) -> Self {
        self.meta = Some(maker);
        self
    }

    fn with_maker_sessions(mut self, maker: Maker<dyn SessionStore>) -> Self {
        self.sessions = Some(maker);
        self
    }

    fn with_maker_accounts(mut self, maker: Maker<dyn AccountStore>) -> Self {
        self.accounts = Some(maker);
        self
    }

    fn with_maker_messages(mut self, maker: Maker<dyn MessageStore>) -> Self {
        self.messages = Some(maker);
        self
    }

    fn with_maker_balancer(mut self, label: String, maker: Maker<dyn LoadBalancer>) -> Self {
        self.balancers.push((label, maker));
        self
    }
}
