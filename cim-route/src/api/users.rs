//! `GET /api/v1/users/online` and `GET /api/v1/users?prefix=`: who is there.

use axum::Json;
use axum::extract::State;
use cim_core::{Cursor, Session, UserId};
use cim_proto::http::{OnlineUser, PageOf, UserView};
use futures::future::try_join_all;
use serde::Deserialize;

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::extract::QueryParams;
use crate::state::SharedState;
use crate::views;

/// `?cursor=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// One page of online users, by user id.
pub(crate) async fn online(
    State(state): State<SharedState>,
    Auth(_): Auth,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<PageOf<OnlineUser>>> {
    let limit = state.page_limit(query.limit)?;
    let cursor = query.cursor.map(Cursor);
    let page = state
        .stores
        .sessions
        .list_online(cursor.as_ref(), limit)
        .await?;
    let accounts = &state.stores.accounts;
    let users = try_join_all(
        page.items
            .iter()
            .map(|s: &Session| accounts.user(s.user_id)),
    )
    .await?;
    // A session whose account was deleted meanwhile is left out rather than shown nameless.
    let items = page
        .items
        .iter()
        .zip(users)
        .filter_map(|(session, user)| user.map(|user| views::online_user(session, &user)))
        .collect();
    Ok(Json(views::page(items, page.next)))
}

/// `?prefix=&cursor=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(default)]
    prefix: String,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// One page of the users whose name starts with `prefix` (case-insensitively), by name; every
/// user without a prefix.
pub(crate) async fn search(
    State(state): State<SharedState>,
    Auth(_): Auth,
    QueryParams(query): QueryParams<SearchQuery>,
) -> ApiResult<Json<PageOf<UserView>>> {
    let limit = state.page_limit(query.limit)?;
    let cursor = query.cursor.map(Cursor);
    let page = state
        .stores
        .accounts
        .search_users(&query.prefix, cursor.as_ref(), limit)
        .await?;
    Ok(Json(views::page_of(page, views::user)))
}

/// The accounts of `ids` that exist, in the same order.
pub(crate) async fn users_by_id(state: &SharedState, ids: &[UserId]) -> ApiResult<Vec<UserView>> {
    let accounts = &state.stores.accounts;
    let users = try_join_all(ids.iter().map(|id| accounts.user(*id))).await?;
    Ok(users.iter().flatten().map(views::user).collect())
}
