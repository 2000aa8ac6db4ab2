//! [`Stores`]: every backend a cim node uses, built from config.

use std::sync::Arc;

use crate::registry::build;
use crate::{
    AccountStore, CoreConfig, LoadBalancer, MessageStore, MetaStore, Result, SessionStore,
};

/// The five backends of a cim node, as trait objects.
#[derive(Clone)]
pub struct Stores {
    /// Server registration and discovery.
    pub meta: Arc<dyn MetaStore>,
    /// Online sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Users, credentials, groups.
    pub accounts: Arc<dyn AccountStore>,
    /// Messages.
    pub messages: Arc<dyn MessageStore>,
    /// Server choice.
    pub balancer: Arc<dyn LoadBalancer>,
}

impl Stores {
    /// Builds every backend `config` names, through the [registry](crate::registry).
    pub async fn from_config(config: &CoreConfig) -> Result<Self> {
        Ok(Stores {
            meta: build::<dyn MetaStore>(config.backend_options("meta")?).await?,
            sessions: build::<dyn SessionStore>(config.backend_options("sessions")?).await?,
            accounts: build::<dyn AccountStore>(config.backend_options("accounts")?).await?,
            messages: build::<dyn MessageStore>(config.backend_options("messages")?).await?,
            balancer: build::<dyn LoadBalancer>(config.backend_options("balancer")?).await?,
        })
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("balancer", &self.balancer.name())
            .finish_non_exhaustive()
    }
}
