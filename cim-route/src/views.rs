//! How the domain types of cim-core are shown in the HTTP API (the bodies of
//! `cim_proto::http`).
//!
//! The API bodies live in cim-proto so that the client SDK shares them without depending on
//! cim-core; these functions are the one place that translates between the two.

use cim_core::{
    Group, GroupAccess, GroupHistory, Membership, Page, Role, ServerInfo, Session, StoredMessage,
    User,
};
use cim_proto::http::{
    self, GroupView, MemberView, MessageView, OnlineUser, PageOf, ServerView, UserView,
};

/// A user.
pub(crate) fn user(user: &User) -> UserView {
    UserView {
        user_id: user.id.0,
        name: user.name.clone(),
    }
}

/// An online user: their session and their account.
pub(crate) fn online_user(session: &Session, user: &User) -> OnlineUser {
    OnlineUser {
        user_id: user.id.0,
        name: user.name.clone(),
        server_id: session.server_id.to_string(),
        login_at: session.login_at.as_millis(),
    }
}

/// A group.
pub(crate) fn group(group: &Group) -> GroupView {
    GroupView {
        group_id: group.id.0,
        name: group.name.clone(),
        owner_id: group.owner.0,
        access: match group.access {
            GroupAccess::Open => http::GroupAccess::Open,
            GroupAccess::InviteOnly => http::GroupAccess::InviteOnly,
            GroupAccess::Closed => http::GroupAccess::Closed,
        },
        history: match group.history {
            GroupHistory::Full => http::GroupHistory::Full,
            GroupHistory::SinceJoin => http::GroupHistory::SinceJoin,
        },
    }
}

/// A member of a group, with their account.
pub(crate) fn member(membership: &Membership, user: &UserView) -> MemberView {
    MemberView {
        user_id: user.user_id,
        name: user.name.clone(),
        role: match membership.role {
            Role::Member => http::GroupRole::Member,
            Role::Admin => http::GroupRole::Admin,
            Role::Owner => http::GroupRole::Owner,
        },
    }
}

/// The access a request asks for.
pub(crate) fn access_from(access: http::GroupAccess) -> GroupAccess {
    match access {
        http::GroupAccess::Open => GroupAccess::Open,
        http::GroupAccess::InviteOnly => GroupAccess::InviteOnly,
        http::GroupAccess::Closed => GroupAccess::Closed,
    }
}

/// The history setting a request asks for.
pub(crate) fn history_from(history: http::GroupHistory) -> GroupHistory {
    match history {
        http::GroupHistory::Full => GroupHistory::Full,
        http::GroupHistory::SinceJoin => GroupHistory::SinceJoin,
    }
}

/// The role a request asks for.
pub(crate) fn role_from(role: http::GroupRole) -> Role {
    match role {
        http::GroupRole::Member => Role::Member,
        http::GroupRole::Admin => Role::Admin,
        http::GroupRole::Owner => Role::Owner,
    }
}

/// A stored message.
pub(crate) fn message(message: &StoredMessage) -> MessageView {
    MessageView {
        message_id: message.id.0,
        conversation: message.conversation.to_string(),
        seq: message.seq.0,
        sender_id: message.sender.0,
        body: message.body.clone(),
        sent_at: message.sent_at.as_millis(),
    }
}

/// A live server.
pub(crate) fn server(server: &ServerInfo) -> ServerView {
    ServerView {
        id: server.id.to_string(),
        host: server.host.clone(),
        client_port: server.client_port,
        load: server.load,
        version: server.version.clone(),
    }
}

/// A page of `items` continuing at `next`.
pub(crate) fn page<T>(items: Vec<T>, next: Option<cim_core::Cursor>) -> PageOf<T> {
    PageOf {
        items,
        next_cursor: next.map(|cursor| cursor.0),
    }
}

/// A store page, each item shown with `view`.
pub(crate) fn page_of<T, U>(page: Page<T>, view: impl Fn(&T) -> U) -> PageOf<U> {
    self::page(page.items.iter().map(view).collect(), page.next)
}
