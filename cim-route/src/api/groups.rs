//! Groups: create, find by name, add and remove members, list members, list the caller's groups.
//!
//! Groups are open: anyone may join one (add themself), any member may add others, a member may
//! leave, and the owner may remove anyone. A new member's
//! delivery cursor starts at the group's latest message, so joining a busy group does not flood
//! the newcomer with its backlog (history stays readable).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cim_core::{ConversationId, Cursor, GroupId, NewGroup, Seq, UserId};
use cim_proto::http::{AddMemberRequest, CreateGroupRequest, GroupView, PageOf, UserView};
use serde::Deserialize;

use super::{access, users};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::state::SharedState;
use crate::views;

/// Creates a group owned by the caller, its first member. 201; 409 if the name is taken.
pub(crate) async fn create(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    JsonBody(request): JsonBody<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let new_group = NewGroup::new(&request.name, caller.user_id, &state.names)?;
    let group = state.stores.accounts.create_group(new_group).await?;
    tracing::info!(group = %group.id, owner = %group.owner, "group created");
    Ok((StatusCode::CREATED, Json(views::group(&group))))
}

/// Adds a user to the group: the caller themself (joining), or anyone if the caller is a member.
/// 204, also if the user was a member already; 404 for a missing group or user.
pub(crate) async fn add_member(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    JsonBody(request): JsonBody<AddMemberRequest>,
) -> ApiResult<StatusCode> {
    access::stored_group(&state, group).await?;
    let user = UserId(request.user_id);
    if user != caller.user_id {
        access::require_member(&state, caller.user_id, group).await?;
    }
    let conversation = ConversationId::Group(group);
    // Read before adding: a message appended in between is then delivered to the newcomer,
    // rather than acknowledged for them unseen.
    let backlog_end = state.stores.messages.last_seq(conversation).await?;
    let added = state.stores.accounts.add_member(group, user).await?;
    if added {
        tracing::info!(%group, %user, by = %caller.user_id, "member added");
        if backlog_end > Seq::ZERO
            && let Err(error) = state
                .stores
                .messages
                .ack(user, conversation, backlog_end)
                .await
        {
            // The membership stands; the newcomer receives the backlog instead.
            tracing::warn!(%error, %group, %user, "cannot skip the group's backlog for a new member");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `?name=`.
#[derive(Debug, Deserialize)]
pub(crate) struct FindQuery {
    name: String,
}

/// The group with this name (any letter case); 404 if there is none.
pub(crate) async fn find(
    State(state): State<SharedState>,
    Auth(_caller): Auth,
    QueryParams(query): QueryParams<FindQuery>,
) -> ApiResult<Json<GroupView>> {
    match state.stores.accounts.group_by_name(&query.name).await? {
        Some(group) => Ok(Json(views::group(&group))),
        None => Err(ApiError::not_found(format!(
            "there is no group named {:?}",
            query.name
        ))),
    }
}

/// Removes a member: themself, or anyone if the caller owns the group; 403 otherwise. 204, also
/// if the user was not a member.
pub(crate) async fn remove_member(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams((group, user)): PathParams<(GroupId, UserId)>,
) -> ApiResult<StatusCode> {
    let stored = access::stored_group(&state, group).await?;
    if caller.user_id != user && caller.user_id != stored.owner {
        return Err(ApiError::forbidden(format!(
            "only the owner of group {group} can remove other members"
        )));
    }
    if state.stores.accounts.remove_member(group, user).await? {
        tracing::info!(%group, %user, by = %caller.user_id, "member removed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `?cursor=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct MembersQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// One page of the group's members, by user id; the caller must be a member.
pub(crate) async fn members(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    QueryParams(query): QueryParams<MembersQuery>,
) -> ApiResult<Json<PageOf<UserView>>> {
    access::stored_group(&state, group).await?;
    access::require_member(&state, caller.user_id, group).await?;
    let limit = state.page_limit(query.limit)?;
    let cursor = query.cursor.map(Cursor);
    let page = state
        .stores
        .accounts
        .members(group, cursor.as_ref(), limit)
        .await?;
    let items = users::users_by_id(&state, &page.items).await?;
    Ok(Json(views::page(items, page.next)))
}

/// The caller's groups, by id (the built-in "all" group is not listed).
pub(crate) async fn mine(
    State(state): State<SharedState>,
    Auth(caller): Auth,
) -> ApiResult<Json<Vec<GroupView>>> {
    let groups = state.stores.accounts.user_groups(caller.user_id).await?;
    Ok(Json(groups.iter().map(views::group).collect()))
}
