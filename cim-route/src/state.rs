//! [`AppState`]: what every handler may use, handed to them explicitly through axum's `State`.

use std::sync::Arc;

use cim_core::token::TokenKey;
use cim_core::{NameRules, ServerInfo, Stores};
use cim_pipeline::{PeerPool, Pipeline};
use tokio::sync::watch;

use crate::app_tokens::AppTokens;
use crate::config::RouteConfig;
use crate::error::{ApiError, ApiResult};
use crate::placement::Probes;
use crate::throttle::Throttle;

/// The state shared by every request.
pub(crate) type SharedState = Arc<AppState>;

/// The route's configuration, backends and cluster connections.
pub(crate) struct AppState {
    /// The `[route]` section.
    pub(crate) config: RouteConfig,
    /// The `[names]` rules for new users and groups.
    pub(crate) names: NameRules,
    /// Every backend.
    pub(crate) stores: Stores,
    /// Signs login tokens and checks bearer tokens.
    pub(crate) key: TokenKey,
    /// Internal links to the servers, for kicks.
    pub(crate) peers: PeerPool,
    /// The message pipeline messages sent over HTTP go through.
    pub(crate) pipeline: Pipeline,
    /// The live servers, as discovery last saw them.
    pub(crate) cluster: watch::Receiver<Arc<Vec<ServerInfo>>>,
    /// Failed logins and password checks in flight, per account and source.
    pub(crate) throttle: Throttle,
    /// The keys of application tokens, when `[route.app_tokens]` turns them on.
    pub(crate) app_tokens: Option<AppTokens>,
    /// Which servers accepted a connection lately.
    pub(crate) probes: Probes,
}

impl AppState {
    /// The page size for a requested `limit`: missing means the largest page, above the largest
    /// page is lowered to it, and 0 is refused.
    pub(crate) fn page_limit(&self, requested: Option<u32>) -> ApiResult<u32> {
        // A configured maximum of 0 would make every listing fail; treat it as 1.
        let max_page = self.config.max_page.max(1);
        match requested {
            None => Ok(max_page),
            Some(0) => Err(ApiError::invalid_input(
                "limit must be at least 1; leave it out for the largest page",
            )),
            Some(limit) => Ok(limit.min(max_page)),
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}
