//! The JSON bodies of cim-route's HTTP API (`/api/v1`), shared by the route that serves them
//! and the client SDK that sends them, so the two cannot drift apart.
//!
//! Times are Unix milliseconds; ids are numbers; conversations are their text form
//! (`d:LOW:HIGH`, `g:GROUP`). Every error response is an [`ErrorBody`].

use serde::{Deserialize, Serialize};

/// Every non-2xx response: a stable machine-readable code and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `not_found`, `already_exists`, `conflict`, `invalid_input`, `unauthenticated`,
    /// `permission_denied`, `rate_limited`, `unavailable`, `timeout`, `unsupported`,
    /// `internal`.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// `POST /api/v1/accounts` and `POST /api/v1/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The user name.
    pub name: String,
    /// The password.
    pub password: String,
    /// Sign-up only, where the route takes sign-ups by invitation: the invitation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<String>,
}

impl Credentials {
    /// A name and a password.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            name: name.into(),
            password: password.into(),
            invitation: None,
        }
    }
}

/// `POST /api/v1/login/token`: log in with a token instead of a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLogin {
    /// A cim token that is still valid (a client that lost its server re-places itself with
    /// it, keeping its login), or a token the application minted for its user (see the route's
    /// `[route.app_tokens]`).
    pub token: String,
}

/// `POST /api/v1/token`: a fresh token for the caller's login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The new bearer token (the old one stays valid until it expires).
    pub token: String,
    /// When the new token expires (Unix ms).
    pub expires_at: i64,
}

/// `POST /api/v1/admin/invitations`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationRequest {
    /// The only name the invited account may take; any name if left out (the invitation then
    /// creates any number of accounts until it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How long the invitation stays valid, in seconds (default a week).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_secs: Option<u64>,
}

/// An invitation: what a sign-up passes as `invitation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationResponse {
    /// The invitation.
    pub invitation: String,
    /// When it expires (Unix ms).
    pub expires_at: i64,
}

/// A user, as the API shows one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// The user's id.
    pub user_id: u64,
    /// The user's name.
    pub name: String,
}

/// Where to connect after login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAddress {
    /// The server's id.
    pub id: String,
    /// Host to connect to.
    pub host: String,
    /// Client TCP port.
    pub port: u16,
}

/// The answer to `POST /api/v1/login` and `POST /api/v1/login/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The user's id.
    pub user_id: u64,
    /// The user's name as stored.
    pub name: String,
    /// The bearer token for HTTP calls and the TCP `Login` frame.
    pub token: String,
    /// When the token expires (Unix ms).
    pub expires_at: i64,
    /// The server chosen for this user.
    pub server: ServerAddress,
}

/// An online user (`GET /api/v1/users/online`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnlineUser {
    /// The user's id.
    pub user_id: u64,
    /// The user's name.
    pub name: String,
    /// The server the user is connected to.
    pub server_id: String,
    /// When the user logged in (Unix ms).
    pub login_at: i64,
}

/// A page of a listing; pass `next_cursor` back as `?cursor=` for the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageOf<T> {
    /// The items.
    pub items: Vec<T>,
    /// The next page's cursor; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/messages`: send as the token's user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessageRequest {
    /// A user recipient (exactly one of `to_user`, `to_group` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user: Option<u64>,
    /// A group recipient; 0 is the built-in "all" group (every online user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_group: Option<u64>,
    /// The text.
    pub body: String,
    /// The caller's idempotency key (1 to 128 bytes): a retry never stores twice.
    pub client_msg_id: String,
    /// Deliver at this time (Unix ms) instead of now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_at: Option<i64>,
}

/// The answer to `POST /api/v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessageResponse {
    /// The stored message (absent when scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageView>,
    /// The schedule entry (present when `deliver_at` was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_id: Option<u64>,
    /// True when this request repeated an earlier `client_msg_id`.
    pub duplicate: bool,
}

/// A stored message, as the API shows one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// The message's id.
    pub message_id: u64,
    /// The conversation (`d:LOW:HIGH` or `g:GROUP`).
    pub conversation: String,
    /// Its sequence in the conversation.
    pub seq: u64,
    /// The sender.
    pub sender_id: u64,
    /// The text.
    pub body: String,
    /// When it was sent (Unix ms).
    pub sent_at: i64,
}

/// Who may become a member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAccess {
    /// Anyone may find the group by name and join it; any member may add others.
    #[default]
    Open,
    /// Only members may add others; outsiders can neither find nor join it.
    InviteOnly,
    /// Only the owner and admins may add members; outsiders can neither find nor join it.
    Closed,
}

/// What a new member of a group may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupHistory {
    /// The whole conversation, from before they joined too.
    #[default]
    Full,
    /// Only what was sent since they joined.
    SinceJoin,
}

/// A member's standing in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    /// A member.
    Member,
    /// Adds, removes and bans members, changes the group's settings.
    Admin,
    /// The creator: an admin who also names admins; can be neither removed nor banned.
    Owner,
}

/// `POST /api/v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroupRequest {
    /// The group's name (unique, same rules as user names).
    pub name: String,
    /// Who may become a member (default `open`).
    #[serde(default)]
    pub access: GroupAccess,
    /// What new members may read (default `full`).
    #[serde(default)]
    pub history: GroupHistory,
}

/// `PATCH /api/v1/groups/{id}`: the settings to change; those left out stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateGroupRequest {
    /// Who may become a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<GroupAccess>,
    /// What new members may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<GroupHistory>,
}

/// A group, as the API shows one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// The group's id.
    pub group_id: u64,
    /// The group's name.
    pub name: String,
    /// Who created it, its owner.
    pub owner_id: u64,
    /// Who may become a member.
    pub access: GroupAccess,
    /// What new members may read.
    pub history: GroupHistory,
}

/// A member of a group (`GET /api/v1/groups/{id}/members`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// The member's user id.
    pub user_id: u64,
    /// The member's name.
    pub name: String,
    /// Their standing in the group.
    pub role: GroupRole,
}

/// `POST /api/v1/groups/{id}/members` and `POST /api/v1/groups/{id}/bans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    /// The user to add (or ban).
    pub user_id: u64,
}

/// `PUT /api/v1/groups/{id}/members/{user_id}/role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRoleRequest {
    /// `admin` or `member` (a group has one owner, its creator).
    pub role: GroupRole,
}

/// A live cim server (`GET /api/v1/servers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    /// The server's id.
    pub id: String,
    /// Host clients connect to.
    pub host: String,
    /// Client TCP port.
    pub client_port: u16,
    /// Connected clients, as last reported.
    pub load: u64,
    /// Software version.
    pub version: String,
}
