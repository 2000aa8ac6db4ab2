//! [`AccountStore`]: users, credentials and groups.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::{
    Cursor, Error, Group, GroupId, GroupSettings, Membership, NewGroup, NewUser, Page,
    PasswordHash, Result, Role, Seq, Timestamp, User, UserId,
};

/// What an [`AccountStore`] backend can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccountCapabilities {
    /// [`AccountStore::search_users`] is available.
    pub prefix_search: bool,
    /// The group operations are available.
    pub groups: bool,
}

impl AccountCapabilities {
    /// Nothing optional: start from this and switch on what the backend honours, so that a
    /// capability added to cim later is never claimed by accident.
    pub const NONE: AccountCapabilities = AccountCapabilities {
        prefix_search: false,
        groups: false,
    };

    /// Everything.
    pub const ALL: AccountCapabilities = AccountCapabilities {
        prefix_search: true,
        groups: true,
    };
}

/// Users, their credentials, and groups.
///
/// # Contract
///
/// - **Ids.** [`create_user`](Self::create_user) and [`create_group`](Self::create_group) assign
///   ids that are unique in the store, also under concurrency, and never reused. Users are
///   never deleted: a user found once exists for good (the message pipeline remembers the
///   recipients it has found instead of looking them up for every message).
/// - **Names.** User names are unique, and so are group names, by their canonical form
///   ([`canonical_name`](crate::canonical_name): NFC, lower case) and by their skeleton
///   ([`name_skeleton`](crate::name_skeleton), given by [`NewUser::skeleton`] and
///   [`NewGroup::skeleton`]): a name that only *looks like* a taken one (`аlice` with a
///   Cyrillic `а` beside `alice`) is taken too. The name is kept as typed. Of concurrent creates
///   of one name (or of look-alike names) exactly one succeeds; the others fail with
///   [`AlreadyExists`](crate::ErrorKind::AlreadyExists). Look-ups by name use the canonical
///   form, so `user_by_name("ALICE")` finds `Alice`.
/// - **Passwords.** The store keeps only the [`PasswordHash`] of [`NewUser`] (argon2id, salted,
///   or [`PasswordHash::none`] for an account without a password, which it keeps the same way).
///   [`verify_credentials`](Self::verify_credentials) answers
///   [`Unauthenticated`](crate::ErrorKind::Unauthenticated) for an unknown name and for a wrong
///   password alike, taking as long for both.
/// - **Prefix search.** [`search_users`](Self::search_users) returns users whose canonical name
///   starts with the canonical form of the prefix, ordered by canonical name, paged by cursor.
/// - **Groups.** A group is created with its [`GroupSettings`] (who may join, what new members
///   may read; changed later with [`update_group`](Self::update_group)) and its owner as first
///   member, with [`Role::Owner`] and `since` 1. Members are added with [`Role::Member`] and
///   the `since` the caller gives (the group's next sequence, for a member who should read only
///   what follows); adding a member who is one already, or removing one who is not, changes
///   nothing and returns false. A missing group or user is
///   [`NotFound`](crate::ErrorKind::NotFound). Members are listed by user id with a cursor,
///   with their role and `since`; a user's groups are listed by group id.
///   [`is_member`](Self::is_member) and [`membership`](Self::membership) answer for one pair at
///   the cost of one look-up (they are on every group send and read), and `false` / `None` for
///   a missing group or user.
/// - **Roles.** [`set_role`](Self::set_role) makes a member an admin or a member again; the
///   owner's role never changes, and no one else becomes owner (`InvalidInput`). The owner can
///   be neither removed nor banned (`InvalidInput`): a group always has its owner.
/// - **Bans.** [`ban`](Self::ban) removes the user from the group (if a member) and records the
///   ban, atomically; while banned, [`add_member`](Self::add_member) refuses them with
///   [`PermissionDenied`](crate::ErrorKind::PermissionDenied), so a banned user cannot rejoin,
///   whoever adds them, even racing the ban. [`unban`](Self::unban) lifts it (the user is not
///   added back). Bans are listed by user id with a cursor. Each answers whether it changed
///   anything.
/// - **Revoked logins.** [`revoke_session`](Self::revoke_session) marks a login (the
///   `session_id` every token of one login shares, refreshed ones included) revoked until a
///   time, the latest its tokens can expire; [`is_session_revoked`](Self::is_session_revoked)
///   answers true from then on, on every node, until that time has passed (its tokens are
///   expired then anyway, and the store may forget it). Revoking again keeps the later time.
///   A session id is 1 to [`MAX_SESSION_ID_LEN`] bytes (`InvalidInput` otherwise).
/// - **Errors.** `InvalidInput` for a limit of 0, `Unavailable` / `Timeout` for an unreachable
///   backend, `Unsupported` outside the capabilities.
#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// What this backend can honour.
    fn capabilities(&self) -> AccountCapabilities;

    /// Creates a user with a fresh id.
    async fn create_user(&self, user: NewUser) -> Result<User>;

    /// The user with this id.
    async fn user(&self, id: UserId) -> Result<Option<User>>;

    /// The user with this name (canonical comparison).
    async fn user_by_name(&self, name: &str) -> Result<Option<User>>;

    /// The user with this name and their password hash, for verification.
    async fn credentials(&self, name: &str) -> Result<Option<(User, PasswordHash)>>;

    /// The user if `password` is theirs; `Unauthenticated` otherwise.
    async fn verify_credentials(&self, name: &str, password: &str) -> Result<User> {
        let rejected = || Error::unauthenticated("unknown user name or wrong password");
        match self.credentials(name).await? {
            Some((user, hash)) if !hash.is_none() => {
                if hash.verify(password).await? {
                    Ok(user)
                } else {
                    Err(rejected())
                }
            }
            // An unknown name, or an account without a password (created from an application's
            // token): spend the time a real check takes, so that response times do not tell
            // which names exist or how they log in.
            _ => {
                let _ = decoy_hash().await?.verify(password).await;
                Err(rejected())
            }
        }
    }

    /// Users whose name starts with `prefix`, by canonical name, at most `limit` per page.
    async fn search_users(
        &self,
        prefix: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<User>>;

    /// Creates a group whose only member is its owner. `NotFound` if the owner does not exist.
    async fn create_group(&self, group: NewGroup) -> Result<Group>;

    /// Changes who may join the group and what new members may read; the group as it is now.
    async fn update_group(&self, id: GroupId, settings: GroupSettings) -> Result<Group>;

    /// The group with this id.
    async fn group(&self, id: GroupId) -> Result<Option<Group>>;

    /// The group with this name (canonical comparison).
    async fn group_by_name(&self, name: &str) -> Result<Option<Group>>;

    /// Adds `user` to `group` as a member who may read from `since` on; false if already a
    /// member. `PermissionDenied` if the user is banned from the group.
    async fn add_member(&self, group: GroupId, user: UserId, since: Seq) -> Result<bool>;

    /// Removes `user` from `group`; false if not a member. `InvalidInput` for the owner.
    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool>;

    /// The group's members by user id, at most `limit` per page.
    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<Membership>>;

    /// `user`'s membership of `group`, if they are a member.
    async fn membership(&self, group: GroupId, user: UserId) -> Result<Option<Membership>>;

    /// Makes member `user` of `group` an admin ([`Role::Admin`]) or a plain member
    /// ([`Role::Member`]). `NotFound` if they are not a member; `InvalidInput` for
    /// [`Role::Owner`] or for the owner.
    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> Result<()>;

    /// Bans `user` from `group`, removing them if they are a member; false if banned already.
    /// `InvalidInput` for the owner.
    async fn ban(&self, group: GroupId, user: UserId) -> Result<bool>;

    /// Lifts `user`'s ban from `group`; false if they were not banned.
    async fn unban(&self, group: GroupId, user: UserId) -> Result<bool>;

    /// The users banned from the group, by user id, at most `limit` per page.
    async fn bans(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>>;

    /// The groups `user` is a member of, by group id.
    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>>;

    /// Revokes every token of the login `session_id` until `until`.
    async fn revoke_session(&self, session_id: &str, until: Timestamp) -> Result<()>;

    /// Whether the login `session_id` is revoked now.
    async fn is_session_revoked(&self, session_id: &str) -> Result<bool>;

    /// Whether `user` is a member of `group`: one look-up, whatever the number of groups or
    /// members. False, not an error, when the group or the user does not exist (so a caller
    /// can give outsiders one answer for both), and for the built-in "all" group, which is
    /// never stored.
    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool>;
}

/// The longest login session id a store keeps, in bytes (the ids cim issues are 32).
pub const MAX_SESSION_ID_LEN: usize = 64;

/// `InvalidInput` unless `session_id` is 1 to [`MAX_SESSION_ID_LEN`] bytes: the check every
/// backend makes first in [`AccountStore::revoke_session`] and
/// [`AccountStore::is_session_revoked`].
pub fn check_session_id(session_id: &str) -> Result<()> {
    if session_id.is_empty() || session_id.len() > MAX_SESSION_ID_LEN {
        return Err(Error::invalid_input(format!(
            "a session id is 1 to {MAX_SESSION_ID_LEN} bytes, got {}",
            session_id.len()
        )));
    }
    Ok(())
}

/// A hash of nothing in particular, checked against when the user does not exist.
async fn decoy_hash() -> Result<&'static PasswordHash> {
    static DECOY: OnceCell<PasswordHash> = OnceCell::const_new();
    DECOY
        .get_or_try_init(|| PasswordHash::hash("cim decoy password"))
        .await
}
