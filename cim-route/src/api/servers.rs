//! `GET /api/v1/servers`: the live cluster, as this route's discovery sees it (the servers it
//! places logins on).

use axum::Json;
use axum::extract::State;
use cim_proto::http::ServerView;

use crate::auth::Auth;
use crate::state::SharedState;
use crate::views;

/// The live servers, by id.
pub(crate) async fn list(State(state): State<SharedState>, Auth(_): Auth) -> Json<Vec<ServerView>> {
    let servers = state.cluster.borrow().clone();
    Json(servers.iter().map(views::server).collect())
}
