//! [`AccountStore`] in process memory.
//!
//! The whole state sits behind one mutex, so checking that a name is free and taking it are one
//! step: of concurrent creates of a name exactly one wins, with no further machinery. Names are
//! indexed by their canonical form; the user index is an ordered map, so prefix search is a range
//! scan and its cursor is simply the last canonical name returned. Passwords are never checked
//! under the lock: the trait's `verify_credentials` fetches the hash with
//! [`credentials`](AccountStore::credentials) and runs the (deliberately slow) argon2 check after.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde::Deserialize;

use crate::account_store::check_session_id;
use crate::registry::{AccountStoreFactory, BackendOptions, BuildFuture};
use crate::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupId, GroupSettings, Membership,
    NewGroup, NewUser, Page, PasswordHash, Result, Role, Seq, Timestamp, User, UserId,
    canonical_name,
};

inventory::submit! {
    AccountStoreFactory::new("memory", "in-process memory (lost on exit; for tests)", build)
}

/// The `memory` backend has no keys of its own; any key in its section is a mistake.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn build(options: BackendOptions) -> BuildFuture<dyn AccountStore> {
    let store = options
        .parse::<NoOptions>()
        .map(|NoOptions {}| Arc::new(MemoryAccountStore::new()) as Arc<dyn AccountStore>);
    Box::pin(std::future::ready(store))
}

/// Users, credentials and groups in process memory, lost when the process exits.
///
/// The reference [`AccountStore`]: every capability, the plainest reading of the contract. Use it
/// in tests and single-process experiments; registered as backend `memory`.
#[derive(Default)]
pub struct MemoryAccountStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last user id handed out; ids start at 1 and are never reused.
    last_user_id: u64,
    /// The last group id handed out; ids start at 1 and are never reused.
    last_group_id: u64,
    users: HashMap<UserId, StoredUser>,
    /// Canonical name to id; ordered, for prefix search.
    user_names: BTreeMap<String, UserId>,
    /// The skeletons of taken user names.
    user_skeletons: HashSet<String>,
    groups: HashMap<GroupId, Group>,
    /// Canonical name to id.
    group_names: HashMap<String, GroupId>,
    /// The skeletons of taken group names.
    group_skeletons: HashSet<String>,
    /// Each group's members, by user id.
    members: HashMap<GroupId, BTreeMap<UserId, Membership>>,
    /// The reverse of `members`, so a user's groups come without scanning every group.
    memberships: HashMap<UserId, BTreeSet<GroupId>>,
    /// Each group's banned users.
    bans: HashMap<GroupId, BTreeSet<UserId>>,
    /// Revoked logins, until when.
    revoked: HashMap<String, Timestamp>,
}

struct StoredUser {
    user: User,
    password_hash: PasswordHash,
}

impl MemoryAccountStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No operation panics half-way through a change, so a poisoned lock still guards a
        // consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for MemoryAccountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryAccountStore")
            .field("users", &state.users.len())
            .field("groups", &state.groups.len())
            .finish()
    }
}

impl State {
    fn user_named(&self, name: &str) -> Option<&StoredUser> {
        let id = self.user_names.get(&canonical_name(name))?;
        self.users.get(id)
    }

    fn group_exists(&self, group: GroupId) -> Result<()> {
        if self.groups.contains_key(&group) {
            Ok(())
        } else {
            Err(Error::not_found(format!("group {group} does not exist")))
        }
    }

    fn user_exists(&self, user: UserId) -> Result<()> {
        if self.users.contains_key(&user) {
            Ok(())
        } else {
            Err(Error::not_found(format!("user {user} does not exist")))
        }
    }

    /// `InvalidInput` if `user` owns `group`.
    fn not_the_owner(&self, group: GroupId, user: UserId, what: &str) -> Result<()> {
        match self.groups.get(&group) {
            Some(stored) if stored.owner == user => Err(Error::invalid_input(format!(
                "user {user} owns group {group} and cannot be {what}"
            ))),
            _ => Ok(()),
        }
    }

    fn remove_membership(&mut self, group: GroupId, user: UserId) -> bool {
        let removed = self
            .members
            .get_mut(&group)
            .is_some_and(|members| members.remove(&user).is_some());
        if let Some(groups) = self.memberships.get_mut(&user) {
            groups.remove(&group);
        }
        removed
    }
}

/// A page of `items` (ordered by user id) after `cursor`.
fn page_by_user<T: Clone>(
    items: Option<&BTreeMap<UserId, T>>,
    cursor: Option<&Cursor>,
    limit: u32,
    what: &str,
) -> Result<Page<T>> {
    let limit = page_size(limit)?;
    let after = cursor
        .map(|Cursor(last)| {
            last.parse::<UserId>().map_err(|_| {
                Error::invalid_input(format!(
                    "cursor {last:?} was not returned by {what}; pass back the previous page's \
                     cursor, or none for the first page"
                ))
            })
        })
        .transpose()?;
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut range = items
        .into_iter()
        .flat_map(|items| items.range((start, Bound::Unbounded)));
    let page: Vec<(&UserId, &T)> = range.by_ref().take(limit).collect();
    let more = range.next().is_some();
    let next = page
        .last()
        .filter(|_| more)
        .map(|(last, _)| Cursor(last.to_string()));
    Ok(Page {
        items: page.into_iter().map(|(_, item)| item.clone()).collect(),
        next,
    })
}

/// `AlreadyExists` for a `what` name that looks like a taken one.
fn looks_taken(what: &str, name: &str) -> Error {
    Error::already_exists(format!(
        "{what} name {name:?} looks like a name that is taken; choose another"
    ))
}

/// `limit` as a page size; 0 is refused, as the contract says.
fn page_size(limit: u32) -> Result<usize> {
    if limit == 0 {
        return Err(Error::invalid_input("limit must be at least 1"));
    }
    Ok(usize::try_from(limit).unwrap_or(usize::MAX))
}

#[async_trait]
impl AccountStore for MemoryAccountStore {
    fn capabilities(&self) -> AccountCapabilities {
        AccountCapabilities::ALL
    }

    async fn create_user(&self, new: NewUser) -> Result<User> {
        let mut state = self.lock();
        if state.user_names.contains_key(new.canonical_name()) {
            return Err(Error::already_exists(format!(
                "user name {:?} is taken; choose another",
                new.name()
            )));
        }
        if state.user_skeletons.contains(new.skeleton()) {
            return Err(looks_taken("user", new.name()));
        }
        state.last_user_id += 1;
        let user = User {
            id: UserId(state.last_user_id),
            name: new.name().to_string(),
            created_at: Timestamp::now(),
        };
        state
            .user_names
            .insert(new.canonical_name().to_string(), user.id);
        state.user_skeletons.insert(new.skeleton().to_string());
        state.users.insert(
            user.id,
            StoredUser {
                user: user.clone(),
                password_hash: new.password_hash().clone(),
            },
        );
        Ok(user)
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        Ok(self.lock().users.get(&id).map(|stored| stored.user.clone()))
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .lock()
            .user_named(name)
            .map(|stored| stored.user.clone()))
    }

    async fn credentials(&self, name: &str) -> Result<Option<(User, PasswordHash)>> {
        Ok(self
            .lock()
            .user_named(name)
            .map(|stored| (stored.user.clone(), stored.password_hash.clone())))
    }

    async fn search_users(
        &self,
        prefix: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<User>> {
        let limit = page_size(limit)?;
        let prefix = canonical_name(prefix);
        // The cursor is the last canonical name of the previous page; one that sorts before the
        // prefix cannot skip anything, so the scan starts at the prefix then.
        let start = match cursor {
            Some(Cursor(last)) if *last >= prefix => Bound::Excluded(last.as_str()),
            _ => Bound::Included(prefix.as_str()),
        };
        let state = self.lock();
        let mut matches = state
            .user_names
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|(canonical, _)| canonical.starts_with(&prefix))
            .filter_map(|(canonical, id)| Some((canonical, &state.users.get(id)?.user)));
        let page: Vec<_> = matches.by_ref().take(limit).collect();
        let more = matches.next().is_some();
        let next = page
            .last()
            .filter(|_| more)
            .map(|(canonical, _)| Cursor((*canonical).clone()));
        Ok(Page {
            items: page.into_iter().map(|(_, user)| user.clone()).collect(),
            next,
        })
    }

    async fn create_group(&self, new: NewGroup) -> Result<Group> {
        let mut state = self.lock();
        let owner = new.owner();
        if !state.users.contains_key(&owner) {
            return Err(Error::not_found(format!(
                "group owner {owner} does not exist; create the user first"
            )));
        }
        if state.group_names.contains_key(new.canonical_name()) {
            return Err(Error::already_exists(format!(
                "group name {:?} is taken; choose another",
                new.name()
            )));
        }
        if state.group_skeletons.contains(new.skeleton()) {
            return Err(looks_taken("group", new.name()));
        }
        state.group_skeletons.insert(new.skeleton().to_string());
        state.last_group_id += 1;
        let settings = new.group_settings();
        let group = Group {
            id: GroupId(state.last_group_id),
            name: new.name().to_string(),
            owner,
            created_at: Timestamp::now(),
            access: settings.access,
            history: settings.history,
        };
        state
            .group_names
            .insert(new.canonical_name().to_string(), group.id);
        state.groups.insert(group.id, group.clone());
        let founder = Membership {
            user: owner,
            role: Role::Owner,
            since: Seq(1),
        };
        state
            .members
            .insert(group.id, BTreeMap::from([(owner, founder)]));
        state.memberships.entry(owner).or_default().insert(group.id);
        Ok(group)
    }

    async fn update_group(&self, id: GroupId, settings: GroupSettings) -> Result<Group> {
        let mut state = self.lock();
        let group = state
            .groups
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("group {id} does not exist")))?;
        group.access = settings.access;
        group.history = settings.history;
        Ok(group.clone())
    }

    async fn group(&self, id: GroupId) -> Result<Option<Group>> {
        Ok(self.lock().groups.get(&id).cloned())
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let state = self.lock();
        Ok(state
            .group_names
            .get(&canonical_name(name))
            .and_then(|id| state.groups.get(id))
            .cloned())
    }

    async fn add_member(&self, group: GroupId, user: UserId, since: Seq) -> Result<bool> {
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        if state
            .bans
            .get(&group)
            .is_some_and(|bans| bans.contains(&user))
        {
            return Err(Error::permission_denied(format!(
                "user {user} is banned from group {group}"
            )));
        }
        let members = state.members.entry(group).or_default();
        if members.contains_key(&user) {
            return Ok(false);
        }
        members.insert(
            user,
            Membership {
                user,
                role: Role::Member,
                since,
            },
        );
        state.memberships.entry(user).or_default().insert(group);
        Ok(true)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        state.not_the_owner(group, user, "removed")?;
        Ok(state.remove_membership(group, user))
    }

    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<Membership>> {
        let state = self.lock();
        state.group_exists(group)?;
        page_by_user(state.members.get(&group), cursor, limit, "members")
    }

    async fn membership(&self, group: GroupId, user: UserId) -> Result<Option<Membership>> {
        Ok(self
            .lock()
            .members
            .get(&group)
            .and_then(|members| members.get(&user))
            .copied())
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> Result<()> {
        if role == Role::Owner {
            return Err(Error::invalid_input(
                "a group has one owner, its creator; make the user an admin instead",
            ));
        }
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        state.not_the_owner(group, user, "given another role")?;
        let membership = state
            .members
            .get_mut(&group)
            .and_then(|members| members.get_mut(&user))
            .ok_or_else(|| {
                Error::not_found(format!("user {user} is not a member of group {group}"))
            })?;
        membership.role = role;
        Ok(())
    }

    async fn ban(&self, group: GroupId, user: UserId) -> Result<bool> {
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        state.not_the_owner(group, user, "banned")?;
        state.remove_membership(group, user);
        Ok(state.bans.entry(group).or_default().insert(user))
    }

    async fn unban(&self, group: GroupId, user: UserId) -> Result<bool> {
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        Ok(state
            .bans
            .get_mut(&group)
            .is_some_and(|bans| bans.remove(&user)))
    }

    async fn bans(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>> {
        let state = self.lock();
        state.group_exists(group)?;
        let bans: Option<BTreeMap<UserId, UserId>> = state
            .bans
            .get(&group)
            .map(|bans| bans.iter().map(|user| (*user, *user)).collect());
        page_by_user(bans.as_ref(), cursor, limit, "bans")
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        let state = self.lock();
        state.user_exists(user)?;
        Ok(state
            .memberships
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| state.groups.get(id).cloned())
            .collect())
    }

    async fn revoke_session(&self, session_id: &str, until: Timestamp) -> Result<()> {
        check_session_id(session_id)?;
        let mut state = self.lock();
        let now = Timestamp::now();
        if state.revoked.len() >= 1024 && state.revoked.len().is_power_of_two() {
            // Expired revocations name tokens that are refused anyway.
            state.revoked.retain(|_, until| *until > now);
        }
        let kept = state.revoked.entry(session_id.to_string()).or_insert(until);
        *kept = (*kept).max(until);
        Ok(())
    }

    async fn is_session_revoked(&self, session_id: &str) -> Result<bool> {
        check_session_id(session_id)?;
        let now = Timestamp::now();
        Ok(self
            .lock()
            .revoked
            .get(session_id)
            .is_some_and(|until| *until > now))
    }

    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        Ok(self
            .lock()
            .members
            .get(&group)
            .is_some_and(|members| members.contains_key(&user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn the_memory_backend_is_registered_and_refuses_unknown_keys() {
        let factory = crate::registry::factory::<dyn AccountStore>("accounts", "memory")
            .expect("memory is registered");

        let store = factory
            .build(BackendOptions::new("accounts", "memory"))
            .await
            .expect("builds with no keys");
        assert_eq!(store.capabilities(), AccountCapabilities::ALL);

        let options = BackendOptions::new("accounts", "memory").with_option("path", "x");
        let err = factory.build(options).await.err().expect("unknown key");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("path"), "{err}");
    }
}
