//! [`AccountStore`]: users, credentials and groups.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::{
    Cursor, Error, Group, GroupId, NewGroup, NewUser, Page, PasswordHash, Result, User, UserId,
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
///   ids that are unique in the store, also under concurrency, and never reused.
/// - **Names.** User names are unique, and so are group names, by their canonical form
///   ([`canonical_name`](crate::canonical_name): NFC, lower case); the name is kept as typed. Of
///   concurrent creates of one name exactly one succeeds; the others fail with
///   [`AlreadyExists`](crate::ErrorKind::AlreadyExists). Look-ups by name use the canonical form,
///   so `user_by_name("ALICE")` finds `Alice`.
/// - **Passwords.** The store keeps only the [`PasswordHash`] of [`NewUser`] (argon2id, salted).
///   [`verify_credentials`](Self::verify_credentials) answers
///   [`Unauthenticated`](crate::ErrorKind::Unauthenticated) for an unknown name and for a wrong
///   password alike, taking as long for both.
/// - **Prefix search.** [`search_users`](Self::search_users) returns users whose canonical name
///   starts with the canonical form of the prefix, ordered by canonical name, paged by cursor.
/// - **Groups.** The owner is the first member. Adding a member who is one already, or removing
///   one who is not, changes nothing and returns false. A missing group or user is
///   [`NotFound`](crate::ErrorKind::NotFound). Members are listed by user id with a cursor; a
///   user's groups are listed by group id. [`is_member`](Self::is_member) answers for one pair
///   at the cost of one look-up (it is on every group send), and false for a missing group or
///   user.
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
            Some((user, hash)) if hash.verify(password).await? => Ok(user),
            Some(_) => Err(rejected()),
            None => {
                // Spend the time a real check takes, so that response times do not tell which
                // names exist.
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

    /// The group with this id.
    async fn group(&self, id: GroupId) -> Result<Option<Group>>;

    /// The group with this name (canonical comparison).
    async fn group_by_name(&self, name: &str) -> Result<Option<Group>>;

    /// Adds `user` to `group`; false if already a member.
    async fn add_member(&self, group: GroupId, user: UserId) -> Result<bool>;

    /// Removes `user` from `group`; false if not a member.
    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool>;

    /// The group's members by user id, at most `limit` per page.
    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>>;

    /// The groups `user` is a member of, by group id.
    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>>;

    /// Whether `user` is a member of `group`: one look-up, whatever the number of groups or
    /// members. False, not an error, when the group or the user does not exist (so a caller
    /// can give outsiders one answer for both), and for the built-in "all" group, which is
    /// never stored.
    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool>;
}

/// A hash of nothing in particular, checked against when the user does not exist.
async fn decoy_hash() -> Result<&'static PasswordHash> {
    static DECOY: OnceCell<PasswordHash> = OnceCell::const_new();
    DECOY
        .get_or_try_init(|| PasswordHash::hash("cim decoy password"))
        .await
}
