//! Who may read and write which conversation.
//!
//! A direct conversation belongs to its two users; a group's to its members (membership lives in
//! the AccountStore); the built-in "all" group ([`GroupId::ALL`]) to everyone. Being refused
//! is 403 `permission_denied`. The route checks this itself because the stores know nothing of
//! callers: they serve whoever asks.

use cim_core::{ConversationId, Group, GroupId, UserId};

use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;

/// The groups `user` belongs to, by id, always including the "all" group.
pub(crate) async fn readable_groups(state: &SharedState, user: UserId) -> ApiResult<Vec<GroupId>> {
    let mut groups: Vec<GroupId> = state
        .stores
        .accounts
        .user_groups(user)
        .await?
        .iter()
        .map(|group| group.id)
        .collect();
    groups.insert(0, GroupId::ALL);
    Ok(groups)
}

/// Whether `user` is a member of `group` (everyone is a member of the "all" group).
pub(crate) async fn is_member(
    state: &SharedState,
    user: UserId,
    group: GroupId,
) -> ApiResult<bool> {
    if group == GroupId::ALL {
        return Ok(true);
    }
    Ok(state.stores.accounts.is_member(group, user).await?)
}

/// Fails with 403 unless `user` is a member of `group`.
pub(crate) async fn require_member(
    state: &SharedState,
    user: UserId,
    group: GroupId,
) -> ApiResult<()> {
    if is_member(state, user, group).await? {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "you are not a member of group {group}; a member can add you"
        )))
    }
}

/// Fails with 403 unless `user` may read `conversation`.
pub(crate) async fn require_reader(
    state: &SharedState,
    user: UserId,
    conversation: ConversationId,
) -> ApiResult<()> {
    match conversation {
        ConversationId::Direct { .. } if conversation.is_direct_participant(user) => Ok(()),
        ConversationId::Direct { .. } => Err(ApiError::forbidden(format!(
            "conversation {conversation} is between two other users"
        ))),
        ConversationId::Group(group) => require_member(state, user, group).await,
    }
}

/// The group `id`, or 404. The "all" group is not stored and cannot be changed: 400.
pub(crate) async fn stored_group(state: &SharedState, id: GroupId) -> ApiResult<Group> {
    if id == GroupId::ALL {
        return Err(ApiError::invalid_input(
            "group 0 is the built-in \"all\" group: every user is in it, and its membership cannot be listed or changed",
        ));
    }
    state
        .stores
        .accounts
        .group(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no group {id}")))
}
