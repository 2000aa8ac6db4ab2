//! Who may see, read and manage which group and conversation.
//!
//! A direct conversation belongs to its two users; a group's to its members (membership lives in
//! the AccountStore); the built-in "all" group ([`GroupId::ALL`]) to everyone. An outsider gets
//! one answer, 404, for a group that does not exist and for one they may not see (any group
//! they are not a member of, unless it is open), so group ids cannot be probed. A member who
//! may not do something (manage the group without being an admin) gets 403
//! `permission_denied`. The route checks all this itself because the stores know nothing of
//! callers: they serve whoever asks.

use cim_core::{
    ConversationId, Error, Group, GroupAccess, GroupHistory, GroupId, Membership, Seq, UserId,
};

use crate::error::{ApiError, ApiResult};
use crate::state::SharedState;

/// The one answer outsiders get about a group.
fn no_such_group(id: GroupId) -> ApiError {
    ApiError::not_found(format!(
        "there is no group {id} that you can see; open groups can be joined, the others need \
         an invitation"
    ))
}

/// Refuses the built-in "all" group, which has no settings, members or bans to manage.
fn stored_id(id: GroupId) -> ApiResult<GroupId> {
    if id == GroupId::ALL {
        return Err(ApiError::invalid_input(
            "group 0 is the built-in \"all\" group: every user is in it, and its membership \
             cannot be listed or changed",
        ));
    }
    Ok(id)
}

/// The group `id` and `user`'s membership of it, if `user` may see the group at all: it is
/// open, or they are a member. 404 otherwise, as for a missing group.
pub(crate) async fn visible_group(
    state: &SharedState,
    user: UserId,
    id: GroupId,
) -> ApiResult<(Group, Option<Membership>)> {
    let id = stored_id(id)?;
    let accounts = &state.stores.accounts;
    let Some(group) = accounts.group(id).await? else {
        return Err(no_such_group(id));
    };
    let membership = accounts.membership(id, user).await?;
    if membership.is_none() && group.access != GroupAccess::Open {
        return Err(no_such_group(id));
    }
    Ok((group, membership))
}

/// The group `id` and `user`'s membership: 404 unless they are a member.
pub(crate) async fn member_of(
    state: &SharedState,
    user: UserId,
    id: GroupId,
) -> ApiResult<(Group, Membership)> {
    match visible_group(state, user, id).await? {
        (group, Some(membership)) => Ok((group, membership)),
        (_, None) => Err(no_such_group(id)),
    }
}

/// The group `id` and `user`'s membership: 404 unless a member, 403 unless an admin or the
/// owner.
pub(crate) async fn admin_of(
    state: &SharedState,
    user: UserId,
    id: GroupId,
) -> ApiResult<(Group, Membership)> {
    let (group, membership) = member_of(state, user, id).await?;
    if !membership.role.is_admin() {
        return Err(ApiError::forbidden(format!(
            "only the owner and the admins of group {id} can do this"
        )));
    }
    Ok((group, membership))
}

/// The first sequence `membership` may read in `group`: 1, or where they joined when the
/// group shows new members only what follows.
pub(crate) fn first_readable(group: &Group, membership: &Membership) -> Seq {
    match group.history {
        GroupHistory::Full => Seq(1),
        GroupHistory::SinceJoin => membership.since,
    }
}

/// The groups `user` belongs to, each with the first sequence they may read there, always
/// including the "all" group (from its start: everyone was always in it).
pub(crate) async fn readable_groups(
    state: &SharedState,
    user: UserId,
) -> ApiResult<Vec<(GroupId, Seq)>> {
    let accounts = &state.stores.accounts;
    let groups = accounts.user_groups(user).await?;
    let mut readable = vec![(GroupId::ALL, Seq(1))];
    for group in groups {
        let first = match group.history {
            GroupHistory::Full => Seq(1),
            GroupHistory::SinceJoin => accounts
                .membership(group.id, user)
                .await?
                .map_or(Seq(u64::MAX), |membership| membership.since),
        };
        readable.push((group.id, first));
    }
    Ok(readable)
}

/// The first sequence of `conversation` that `user` may read; 403 for a direct conversation of
/// two others, 404 for a group they are not a member of.
pub(crate) async fn require_reader(
    state: &SharedState,
    user: UserId,
    conversation: ConversationId,
) -> ApiResult<Seq> {
    match conversation {
        ConversationId::Direct { .. } if conversation.is_direct_participant(user) => Ok(Seq(1)),
        ConversationId::Direct { .. } => Err(Error::permission_denied(format!(
            "conversation {conversation} is between two other users"
        ))
        .into()),
        ConversationId::Group(GroupId::ALL) => Ok(Seq(1)),
        ConversationId::Group(group) => {
            let (group, membership) = member_of(state, user, group).await?;
            Ok(first_readable(&group, &membership))
        }
    }
}
