//! Groups: create, look up, change settings, add and remove members, roles, bans, list members,
//! list the caller's groups.
//!
//! Who may do what (the owner is the creator; admins are named by the owner):
//!
//! | action | open | invite_only | closed |
//! |---|---|---|---|
//! | find by name, see | anyone | members | members |
//! | join (add oneself) | anyone not banned | — | — |
//! | add someone else | members | members | owner, admins |
//! | remove someone else, ban, unban, change settings | owner, admins | owner, admins | owner, admins |
//! | name or demote admins | owner | owner | owner |
//!
//! A member may always leave (the owner cannot: a group keeps its owner). An admin cannot
//! remove or ban another admin: the owner can. Everything a non-member may not see answers 404,
//! like a group that does not exist. A new member's delivery cursor starts at the group's latest
//! message, so joining a busy group does not flood the newcomer with its backlog; whether they
//! can read that backlog in the history is the group's `history` setting.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cim_core::{ConversationId, Cursor, GroupId, GroupSettings, NewGroup, Role, Seq, UserId};
use cim_proto::http::{
    AddMemberRequest, CreateGroupRequest, GroupView, MemberView, PageOf, SetRoleRequest,
    UpdateGroupRequest, UserView,
};
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
    let settings = GroupSettings {
        access: views::access_from(request.access),
        history: views::history_from(request.history),
    };
    let new_group = NewGroup::new(&request.name, caller.user_id, &state.names)?.settings(settings);
    let group = state.stores.accounts.create_group(new_group).await?;
    tracing::info!(group = %group.id, owner = %group.owner, access = group.access.as_str(), "group created");
    Ok((StatusCode::CREATED, Json(views::group(&group))))
}

/// The group, for anyone if it is open, for its members otherwise (404 for the rest).
pub(crate) async fn get(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
) -> ApiResult<Json<GroupView>> {
    let (group, _) = access::visible_group(&state, caller.user_id, group).await?;
    Ok(Json(views::group(&group)))
}

/// Changes who may join and what new members may read; owner and admins only.
pub(crate) async fn update(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    JsonBody(request): JsonBody<UpdateGroupRequest>,
) -> ApiResult<Json<GroupView>> {
    let (stored, _) = access::admin_of(&state, caller.user_id, group).await?;
    let settings = GroupSettings {
        access: request.access.map_or(stored.access, views::access_from),
        history: request.history.map_or(stored.history, views::history_from),
    };
    let updated = state.stores.accounts.update_group(group, settings).await?;
    tracing::info!(%group, by = %caller.user_id, access = updated.access.as_str(), history = updated.history.as_str(), "group settings changed");
    Ok(Json(views::group(&updated)))
}

/// Adds a user to the group: the caller themself (joining an open group), or someone else
/// (by a member of an open or invite-only group, by the owner or an admin of a closed one).
/// 204, also if the user was a member already; 404 for a group the caller cannot see or a
/// missing user; 403 for a banned user or a caller who may not add.
pub(crate) async fn add_member(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    JsonBody(request): JsonBody<AddMemberRequest>,
) -> ApiResult<StatusCode> {
    let (stored, membership) = access::visible_group(&state, caller.user_id, group).await?;
    let user = UserId(request.user_id);
    match membership {
        None if user == caller.user_id => {} // joining an open group (visible means open)
        None => {
            return Err(ApiError::forbidden(format!(
                "join group {group} before adding others to it"
            )));
        }
        Some(_) if user == caller.user_id => return Ok(StatusCode::NO_CONTENT),
        Some(membership) => {
            if stored.access == cim_core::GroupAccess::Closed && !membership.role.is_admin() {
                return Err(ApiError::forbidden(format!(
                    "group {group} is closed: only its owner and admins add members"
                )));
            }
        }
    }
    if state.stores.accounts.user(user).await?.is_none() {
        return Err(ApiError::not_found(format!("there is no user {user}")));
    }
    let added = enrol(&state, group, user)
        .await
        .map_err(|e| match e.kind() {
            cim_core::ErrorKind::PermissionDenied if user == caller.user_id => {
                ApiError::forbidden(format!("you are banned from group {group}"))
            }
            _ => e.into(),
        })?;
    if added {
        tracing::info!(%group, %user, by = %caller.user_id, "member added");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Adds `user` to `group` as a member from now on: what was sent before is acknowledged for
/// them (they read it in history if the group lets them), what follows is delivered. False if
/// they were a member already; `PermissionDenied` if banned.
pub(crate) async fn enrol(
    state: &SharedState,
    group: GroupId,
    user: UserId,
) -> cim_core::Result<bool> {
    let conversation = ConversationId::Group(group);
    // Read before adding: a message appended in between is then delivered to the newcomer,
    // rather than acknowledged for them unseen.
    let backlog_end = state.stores.messages.last_seq(conversation).await?;
    let since = Seq(backlog_end.0 + 1);
    let added = state.stores.accounts.add_member(group, user, since).await?;
    if added
        && backlog_end > Seq::ZERO
        && let Err(error) = state
            .stores
            .messages
            .ack(user, conversation, backlog_end)
            .await
    {
        // The membership stands; the newcomer receives the backlog instead.
        tracing::warn!(%error, %group, %user, "cannot skip the group's backlog for a new member");
    }
    Ok(added)
}

/// `?name=`.
#[derive(Debug, Deserialize)]
pub(crate) struct FindQuery {
    name: String,
}

/// The group with this name (any letter case), if the caller may see it; 404 otherwise.
pub(crate) async fn find(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    QueryParams(query): QueryParams<FindQuery>,
) -> ApiResult<Json<GroupView>> {
    let not_found = || {
        ApiError::not_found(format!(
            "there is no group named {:?} that you can see",
            query.name
        ))
    };
    let Some(group) = state.stores.accounts.group_by_name(&query.name).await? else {
        return Err(not_found());
    };
    match access::visible_group(&state, caller.user_id, group.id).await {
        Ok((group, _)) => Ok(Json(views::group(&group))),
        Err(_) => Err(not_found()),
    }
}

/// Removes a member: themself (leaving; not the owner), or anyone else if the caller is the
/// owner, or an admin removing a plain member. 204, also if the user was not a member.
pub(crate) async fn remove_member(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams((group, user)): PathParams<(GroupId, UserId)>,
) -> ApiResult<StatusCode> {
    if user != caller.user_id {
        let (_, membership) = access::admin_of(&state, caller.user_id, group).await?;
        may_act_on(&state, &membership, group, user, "remove").await?;
    } else {
        access::member_of(&state, caller.user_id, group).await?;
    }
    if state.stores.accounts.remove_member(group, user).await? {
        tracing::info!(%group, %user, by = %caller.user_id, "member removed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Fails unless an admin `actor` may remove or ban `target`: the owner may act on anyone but
/// themself; an admin only on plain members and outsiders.
async fn may_act_on(
    state: &SharedState,
    actor: &cim_core::Membership,
    group: GroupId,
    target: UserId,
    what: &str,
) -> ApiResult<()> {
    if actor.role == Role::Owner {
        return Ok(());
    }
    let target_role = state
        .stores
        .accounts
        .membership(group, target)
        .await?
        .map(|membership| membership.role);
    if target_role.is_some_and(Role::is_admin) {
        return Err(ApiError::forbidden(format!(
            "only the owner of group {group} can {what} an admin"
        )));
    }
    Ok(())
}

/// Makes a member an admin, or an admin a member again; the owner only.
pub(crate) async fn set_role(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams((group, user)): PathParams<(GroupId, UserId)>,
    JsonBody(request): JsonBody<SetRoleRequest>,
) -> ApiResult<StatusCode> {
    let (_, membership) = access::member_of(&state, caller.user_id, group).await?;
    if membership.role != Role::Owner {
        return Err(ApiError::forbidden(format!(
            "only the owner of group {group} names its admins"
        )));
    }
    let role = views::role_from(request.role);
    state.stores.accounts.set_role(group, user, role).await?;
    tracing::info!(%group, %user, role = role.as_str(), "role changed");
    Ok(StatusCode::NO_CONTENT)
}

/// Bans a user (removing them if a member); owner and admins (an admin cannot ban an admin).
/// 204, also if they were banned already.
pub(crate) async fn ban(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    JsonBody(request): JsonBody<AddMemberRequest>,
) -> ApiResult<StatusCode> {
    let (_, membership) = access::admin_of(&state, caller.user_id, group).await?;
    let user = UserId(request.user_id);
    may_act_on(&state, &membership, group, user, "ban").await?;
    if state.stores.accounts.ban(group, user).await? {
        tracing::info!(%group, %user, by = %caller.user_id, "user banned");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban; owner and admins. 204, also if the user was not banned. The user is not added
/// back.
pub(crate) async fn unban(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams((group, user)): PathParams<(GroupId, UserId)>,
) -> ApiResult<StatusCode> {
    access::admin_of(&state, caller.user_id, group).await?;
    if state.stores.accounts.unban(group, user).await? {
        tracing::info!(%group, %user, by = %caller.user_id, "ban lifted");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `?cursor=&limit=`.
#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// One page of the group's members, by user id, with their roles; the caller must be a member.
pub(crate) async fn members(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<PageOf<MemberView>>> {
    access::member_of(&state, caller.user_id, group).await?;
    let limit = state.page_limit(query.limit)?;
    let cursor = query.cursor.map(Cursor);
    let page = state
        .stores
        .accounts
        .members(group, cursor.as_ref(), limit)
        .await?;
    let ids: Vec<UserId> = page.items.iter().map(|member| member.user).collect();
    let users = users::users_by_id(&state, &ids).await?;
    let items = page
        .items
        .iter()
        .filter_map(|member| {
            let user = users.iter().find(|user| user.user_id == member.user.0)?;
            Some(views::member(member, user))
        })
        .collect();
    Ok(Json(views::page(items, page.next)))
}

/// One page of the users banned from the group, by user id; owner and admins only.
pub(crate) async fn bans(
    State(state): State<SharedState>,
    Auth(caller): Auth,
    PathParams(group): PathParams<GroupId>,
    QueryParams(query): QueryParams<PageQuery>,
) -> ApiResult<Json<PageOf<UserView>>> {
    access::admin_of(&state, caller.user_id, group).await?;
    let limit = state.page_limit(query.limit)?;
    let cursor = query.cursor.map(Cursor);
    let page = state
        .stores
        .accounts
        .bans(group, cursor.as_ref(), limit)
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
