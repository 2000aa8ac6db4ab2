//! [`AccountStore`] in process memory.
//!
//! The whole state sits behind one mutex, so checking that a name is free and taking it are one
//! step: of concurrent creates of a name exactly one wins, with no further machinery. Names are
//! indexed by their canonical form; the user index is an ordered map, so prefix search is a range
//! scan and its cursor is simply the last canonical name returned. Passwords are never checked
//! under the lock: the trait's `verify_credentials` fetches the hash with
//! [`credentials`](AccountStore::credentials) and runs the (deliberately slow) argon2 check after.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde::Deserialize;

use crate::registry::{AccountStoreFactory, BackendOptions, BuildFuture};
use crate::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupId, NewGroup, NewUser, Page,
    PasswordHash, Result, Timestamp, User, UserId, canonical_name,
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
    groups: HashMap<GroupId, Group>,
    /// Canonical name to id.
    group_names: HashMap<String, GroupId>,
    members: HashMap<GroupId, BTreeSet<UserId>>,
    /// The reverse of `members`, so a user's groups come without scanning every group.
    memberships: HashMap<UserId, BTreeSet<GroupId>>,
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
        state.last_user_id += 1;
        let user = User {
            id: UserId(state.last_user_id),
            name: new.name().to_string(),
            created_at: Timestamp::now(),
        };
        state
            .user_names
            .insert(new.canonical_name().to_string(), user.id);
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
        state.last_group_id += 1;
        let group = Group {
            id: GroupId(state.last_group_id),
            name: new.name().to_string(),
            owner,
            created_at: Timestamp::now(),
        };
        state
            .group_names
            .insert(new.canonical_name().to_string(), group.id);
        state.groups.insert(group.id, group.clone());
        state.members.insert(group.id, BTreeSet::from([owner]));
        state.memberships.entry(owner).or_default().insert(group.id);
        Ok(group)
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

    async fn add_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        let added = state.members.entry(group).or_default().insert(user);
        state.memberships.entry(user).or_default().insert(group);
        Ok(added)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let mut state = self.lock();
        state.group_exists(group)?;
        state.user_exists(user)?;
        let removed = state
            .members
            .get_mut(&group)
            .is_some_and(|members| members.remove(&user));
        if let Some(groups) = state.memberships.get_mut(&user) {
            groups.remove(&group);
        }
        Ok(removed)
    }

    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>> {
        let limit = page_size(limit)?;
        let after = cursor
            .map(|Cursor(last)| {
                last.parse::<UserId>().map_err(|_| {
                    Error::invalid_input(format!(
                        "cursor {last:?} was not returned by members; pass back the previous \
                         page's cursor, or none for the first page"
                    ))
                })
            })
            .transpose()?;
        let state = self.lock();
        state.group_exists(group)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut members = state
            .members
            .get(&group)
            .into_iter()
            .flat_map(|members| members.range((start, Bound::Unbounded)))
            .copied();
        let items: Vec<UserId> = members.by_ref().take(limit).collect();
        let more = members.next().is_some();
        let next = items
            .last()
            .filter(|_| more)
            .map(|last| Cursor(last.to_string()));
        Ok(Page { items, next })
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

    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        Ok(self
            .lock()
            .members
            .get(&group)
            .is_some_and(|members| members.contains(&user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, NameRules};

    /// Argon2 makes this the slow part of these tests: keep the number of calls modest.
    async fn new_user(name: &str, password: &str) -> NewUser {
        NewUser::new(name, password, &NameRules::default())
            .await
            .expect("valid user")
    }

    async fn create(store: &MemoryAccountStore, name: &str) -> User {
        store
            .create_user(new_user(name, "secret").await)
            .await
            .expect("user is created")
    }

    fn new_group(name: &str, owner: UserId) -> NewGroup {
        NewGroup::new(name, owner, &NameRules::default()).expect("valid group")
    }

    #[tokio::test]
    async fn users_get_increasing_ids_and_are_found_by_id_and_any_case_of_their_name() {
        let store = MemoryAccountStore::new();

        let alice = create(&store, "Alice").await;
        let bob = create(&store, "bob").await;

        assert_eq!((alice.id, bob.id), (UserId(1), UserId(2)));
        assert_eq!(alice.name, "Alice", "the name is kept as typed");
        assert_eq!(
            store.user(alice.id).await.expect("user"),
            Some(alice.clone())
        );
        assert_eq!(
            store.user_by_name("ALICE").await.expect("by name"),
            Some(alice)
        );
        assert_eq!(store.user(UserId(99)).await.expect("user"), None);
        assert_eq!(store.user_by_name("carol").await.expect("by name"), None);
    }

    #[tokio::test]
    async fn a_user_name_taken_in_another_case_or_normal_form_is_already_exists() {
        let store = MemoryAccountStore::new();
        create(&store, "Alice").await;
        create(&store, "Zoë").await;

        let err = store
            .create_user(new_user("ALICE", "other").await)
            .await
            .expect_err("same canonical name");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(err.message().contains("ALICE"), "{err}");

        let decomposed = new_user("ZOE\u{308}", "other").await;
        let err = store.create_user(decomposed).await.expect_err("same name");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    }

    #[tokio::test]
    async fn credentials_verify_the_right_password_only() {
        let store = MemoryAccountStore::new();
        let alice = create(&store, "Alice").await;

        let (user, hash) = store
            .credentials("alice")
            .await
            .expect("credentials")
            .expect("alice exists");
        assert_eq!(user, alice);
        assert!(hash.verify("secret").await.expect("verify"));
        assert_eq!(
            store.credentials("nobody").await.expect("credentials"),
            None
        );

        let verified = store.verify_credentials("ALICE", "secret").await;
        assert_eq!(verified.expect("right password"), alice);
        let wrong = store.verify_credentials("alice", "guess").await;
        assert_eq!(
            wrong.expect_err("wrong password").kind(),
            ErrorKind::Unauthenticated
        );
        let unknown = store.verify_credentials("nobody", "secret").await;
        assert_eq!(
            unknown.expect_err("unknown user").kind(),
            ErrorKind::Unauthenticated
        );
    }

    #[tokio::test]
    async fn prefix_search_pages_through_canonical_names_in_order() {
        let store = MemoryAccountStore::new();
        for name in ["Zoë", "zoey", "ZOLTAN", "Ωμέγα"] {
            create(&store, name).await;
        }
        let names = |page: &Page<User>| -> Vec<String> {
            page.items.iter().map(|user| user.name.clone()).collect()
        };

        // Canonical order: "zoey" < "zoltan" < "zoë" ('ë' sorts after ASCII letters).
        let first = store.search_users("ZO", None, 2).await.expect("search");
        assert_eq!(names(&first), ["zoey", "ZOLTAN"]);
        let cursor = first.next.expect("more results");
        let second = store
            .search_users("ZO", Some(&cursor), 2)
            .await
            .expect("search");
        assert_eq!(names(&second), ["Zoë"]);
        assert_eq!(second.next, None);

        let decomposed = store
            .search_users("zoe\u{308}", None, 10)
            .await
            .expect("search");
        assert_eq!(names(&decomposed), ["Zoë"]);
        let greek = store.search_users("ΩΜ", None, 10).await.expect("search");
        assert_eq!(names(&greek), ["Ωμέγα"]);
        let none = store.search_users("x", None, 10).await.expect("search");
        assert_eq!(none, Page::empty());

        let err = store
            .search_users("zo", None, 0)
            .await
            .expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn a_group_starts_with_its_owner_and_membership_changes_report_whether_they_did() {
        let store = MemoryAccountStore::new();
        let owner = create(&store, "owner").await;
        let bob = create(&store, "bob").await;

        let group = store
            .create_group(new_group("Team", owner.id))
            .await
            .expect("group is created");
        assert_eq!((group.id, group.owner), (GroupId(1), owner.id));
        assert_eq!(
            store.group(group.id).await.expect("group"),
            Some(group.clone())
        );
        assert_eq!(
            store.group_by_name("TEAM").await.expect("by name"),
            Some(group.clone())
        );
        let members = store.members(group.id, None, 10).await.expect("members");
        assert_eq!(members.items, [owner.id]);

        assert!(store.add_member(group.id, bob.id).await.expect("add"));
        assert!(!store.add_member(group.id, bob.id).await.expect("add again"));
        assert_eq!(
            store.user_groups(bob.id).await.expect("groups"),
            std::slice::from_ref(&group)
        );
        assert!(store.remove_member(group.id, bob.id).await.expect("remove"));
        assert!(
            !store
                .remove_member(group.id, bob.id)
                .await
                .expect("remove again")
        );
        assert_eq!(store.user_groups(bob.id).await.expect("groups"), []);
    }

    #[tokio::test]
    async fn group_operations_on_missing_groups_or_users_are_not_found() {
        let store = MemoryAccountStore::new();
        let owner = create(&store, "owner").await;
        let group = store
            .create_group(new_group("team", owner.id))
            .await
            .expect("group is created");

        let missing_owner = store.create_group(new_group("other", UserId(99))).await;
        assert_eq!(
            missing_owner.expect_err("no owner").kind(),
            ErrorKind::NotFound
        );
        let taken = store.create_group(new_group("TEAM", owner.id)).await;
        assert_eq!(
            taken.expect_err("name taken").kind(),
            ErrorKind::AlreadyExists
        );

        let not_found = [
            store.add_member(GroupId(99), owner.id).await.map(|_| ()),
            store.add_member(group.id, UserId(99)).await.map(|_| ()),
            store.remove_member(GroupId(99), owner.id).await.map(|_| ()),
            store.remove_member(group.id, UserId(99)).await.map(|_| ()),
            store.members(GroupId(99), None, 10).await.map(|_| ()),
            store.user_groups(UserId(99)).await.map(|_| ()),
        ];
        for result in not_found {
            assert_eq!(result.expect_err("missing").kind(), ErrorKind::NotFound);
        }
        assert_eq!(store.group(GroupId(99)).await.expect("group"), None);
        assert_eq!(store.group_by_name("nope").await.expect("by name"), None);
    }

    #[tokio::test]
    async fn members_are_paged_by_user_id_and_groups_listed_by_group_id() {
        let store = MemoryAccountStore::new();
        let owner = create(&store, "owner").await;
        let bob = create(&store, "bob").await;
        let carol = create(&store, "carol").await;
        let first = store
            .create_group(new_group("first", carol.id))
            .await
            .expect("group");
        let second = store
            .create_group(new_group("second", owner.id))
            .await
            .expect("group");
        for user in [bob.id, owner.id] {
            store.add_member(first.id, user).await.expect("add");
        }
        store.add_member(second.id, carol.id).await.expect("add");

        let page = store.members(first.id, None, 2).await.expect("members");
        assert_eq!(page.items, [owner.id, bob.id]);
        let cursor = page.next.expect("more members");
        let page = store
            .members(first.id, Some(&cursor), 2)
            .await
            .expect("members");
        assert_eq!(page.items, [carol.id]);
        assert_eq!(page.next, None);
        assert_eq!(
            store.user_groups(carol.id).await.expect("groups"),
            [first, second]
        );

        let bad = Cursor("not-an-id".into());
        let err = store
            .members(GroupId(1), Some(&bad), 2)
            .await
            .expect_err("bad cursor");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = store
            .members(GroupId(1), None, 0)
            .await
            .expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

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
