//! [`AccountStore`] for [`SqliteStore`].
//!
//! Uniqueness of names is the `UNIQUE` constraint on the canonical-name column, so of
//! concurrent creates of one name SQLite lets exactly one insert through and the others fail
//! with a constraint violation, reported as `AlreadyExists`. Users and groups are never
//! deleted, so checking that a group and a user exist before touching a membership cannot race
//! with anything, and the membership change itself is one statement.
//!
//! Prefix search is a range scan on the canonical-name index: names starting with `p` are
//! exactly those in `[p, successor(p))`, where the successor increments the last character
//! (see [`prefix_upper_bound`]). SQLite compares text byte by byte, and UTF-8 byte order is
//! code point order, so this holds for every script and for `%` and `_`, which mean nothing in
//! a range.

use async_trait::async_trait;
use sqlx::FromRow;

use super::SqliteStore;
use super::columns::{int, unsigned};
use super::error::{During, unique_error};
use crate::paging::{fetch_size, id_cursor, into_page};
use crate::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupId, NewGroup, NewUser, Page,
    PasswordHash, Result, Timestamp, User, UserId, canonical_name,
};

#[derive(FromRow)]
struct UserRow {
    id: i64,
    name: String,
    created_at: i64,
}

impl UserRow {
    fn into_user(self) -> Result<User> {
        Ok(User {
            id: UserId(unsigned(self.id, "users.id")?),
            name: self.name,
            created_at: Timestamp(self.created_at),
        })
    }
}

#[derive(FromRow)]
struct SearchRow {
    id: i64,
    name: String,
    canonical: String,
    created_at: i64,
}

#[derive(FromRow)]
struct CredentialsRow {
    id: i64,
    name: String,
    created_at: i64,
    password_hash: String,
}

#[derive(FromRow)]
struct GroupRow {
    id: i64,
    name: String,
    owner: i64,
    created_at: i64,
}

impl GroupRow {
    fn into_group(self) -> Result<Group> {
        Ok(Group {
            id: GroupId(unsigned(self.id, "chat_groups.id")?),
            name: self.name,
            owner: UserId(unsigned(self.owner, "chat_groups.owner")?),
            created_at: Timestamp(self.created_at),
        })
    }
}

/// The smallest string above every string that starts with `prefix`: `prefix` with its last
/// character incremented (dropping trailing characters that cannot be). `None` when there is
/// no such string: the prefix is empty or all `char::MAX`, and the range is unbounded.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

impl SqliteStore {
    /// `NotFound` unless the group exists.
    async fn ensure_group(&self, group: GroupId, operation: &'static str) -> Result<()> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chat_groups WHERE id = ?)")
                .bind(int(group.0))
                .fetch_one(self.pool())
                .await
                .during(operation)?;
        if exists {
            Ok(())
        } else {
            Err(Error::not_found(format!("group {group} does not exist")))
        }
    }

    /// `NotFound` unless the user exists.
    async fn ensure_user(&self, user: UserId, operation: &'static str) -> Result<()> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?)")
            .bind(int(user.0))
            .fetch_one(self.pool())
            .await
            .during(operation)?;
        if exists {
            Ok(())
        } else {
            Err(Error::not_found(format!("user {user} does not exist")))
        }
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    fn capabilities(&self) -> AccountCapabilities {
        AccountCapabilities::ALL
    }

    async fn create_user(&self, new: NewUser) -> Result<User> {
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (name, canonical, password_hash, created_at) VALUES (?, ?, ?, ?) \
             RETURNING id, name, created_at",
        )
        .bind(new.name())
        .bind(new.canonical_name())
        .bind(new.password_hash().as_phc())
        .bind(Timestamp::now().as_millis())
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            unique_error("create_user", e, || {
                Error::already_exists(format!(
                    "user name {:?} is taken; choose another",
                    new.name()
                ))
            })
        })?;
        row.into_user()
    }

    async fn user(&self, id: UserId) -> Result<Option<User>> {
        let row: Option<UserRow> =
            sqlx::query_as("SELECT id, name, created_at FROM users WHERE id = ?")
                .bind(int(id.0))
                .fetch_optional(self.pool())
                .await
                .during("user")?;
        row.map(UserRow::into_user).transpose()
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row: Option<UserRow> =
            sqlx::query_as("SELECT id, name, created_at FROM users WHERE canonical = ?")
                .bind(canonical_name(name))
                .fetch_optional(self.pool())
                .await
                .during("user_by_name")?;
        row.map(UserRow::into_user).transpose()
    }

    async fn credentials(&self, name: &str) -> Result<Option<(User, PasswordHash)>> {
        let row: Option<CredentialsRow> = sqlx::query_as(
            "SELECT id, name, created_at, password_hash FROM users WHERE canonical = ?",
        )
        .bind(canonical_name(name))
        .fetch_optional(self.pool())
        .await
        .during("credentials")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash = PasswordHash::from_phc(row.password_hash).map_err(|e| {
            e.with_context("backend", "sqlite")
                .with_context("operation", "credentials")
        })?;
        let user = UserRow {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
        }
        .into_user()?;
        Ok(Some((user, hash)))
    }

    async fn search_users(
        &self,
        prefix: &str,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<User>> {
        let fetch = fetch_size(limit)?;
        let prefix = canonical_name(prefix);
        // The cursor is the last canonical name returned; the next page starts strictly after
        // it (and never before the prefix, which the first bound keeps).
        let after = cursor.map_or("", |Cursor(last)| last.as_str());
        let rows: Vec<SearchRow> = match prefix_upper_bound(&prefix) {
            Some(upper) => {
                sqlx::query_as(
                    "SELECT id, name, canonical, created_at FROM users \
                     WHERE canonical >= ?1 AND canonical > ?2 AND canonical < ?3 \
                     ORDER BY canonical LIMIT ?4",
                )
                .bind(&prefix)
                .bind(after)
                .bind(upper)
                .bind(fetch)
                .fetch_all(self.pool())
                .await
            }
            None => {
                sqlx::query_as(
                    "SELECT id, name, canonical, created_at FROM users \
                     WHERE canonical >= ?1 AND canonical > ?2 \
                     ORDER BY canonical LIMIT ?3",
                )
                .bind(&prefix)
                .bind(after)
                .bind(fetch)
                .fetch_all(self.pool())
                .await
            }
        }
        .during("search_users")?;
        let page = into_page(rows, limit, |row| row.canonical.clone());
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|row| {
                    UserRow {
                        id: row.id,
                        name: row.name,
                        created_at: row.created_at,
                    }
                    .into_user()
                })
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    async fn create_group(&self, new: NewGroup) -> Result<Group> {
        const OPERATION: &str = "create_group";
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .during(OPERATION)?;
        let owner_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = ?)")
                .bind(int(new.owner().0))
                .fetch_one(&mut *tx)
                .await
                .during(OPERATION)?;
        if !owner_exists {
            return Err(Error::not_found(format!(
                "group owner {} does not exist; create the user first",
                new.owner()
            )));
        }
        let row: GroupRow = sqlx::query_as(
            "INSERT INTO chat_groups (name, canonical, owner, created_at) VALUES (?, ?, ?, ?) \
             RETURNING id, name, owner, created_at",
        )
        .bind(new.name())
        .bind(new.canonical_name())
        .bind(int(new.owner().0))
        .bind(Timestamp::now().as_millis())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            unique_error(OPERATION, e, || {
                Error::already_exists(format!(
                    "group name {:?} is taken; choose another",
                    new.name()
                ))
            })
        })?;
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES (?, ?)")
            .bind(row.id)
            .bind(row.owner)
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
        tx.commit().await.during(OPERATION)?;
        row.into_group()
    }

    async fn group(&self, id: GroupId) -> Result<Option<Group>> {
        let row: Option<GroupRow> =
            sqlx::query_as("SELECT id, name, owner, created_at FROM chat_groups WHERE id = ?")
                .bind(int(id.0))
                .fetch_optional(self.pool())
                .await
                .during("group")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let row: Option<GroupRow> = sqlx::query_as(
            "SELECT id, name, owner, created_at FROM chat_groups WHERE canonical = ?",
        )
        .bind(canonical_name(name))
        .fetch_optional(self.pool())
        .await
        .during("group_by_name")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn add_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.ensure_group(group, "add_member").await?;
        self.ensure_user(user, "add_member").await?;
        let done = sqlx::query(
            "INSERT INTO group_members (group_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .execute(self.pool())
        .await
        .during("add_member")?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.ensure_group(group, "remove_member").await?;
        self.ensure_user(user, "remove_member").await?;
        let done = sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(int(group.0))
            .bind(int(user.0))
            .execute(self.pool())
            .await
            .during("remove_member")?;
        Ok(done.rows_affected() == 1)
    }

    async fn members(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>> {
        let fetch = fetch_size(limit)?;
        let after = id_cursor(cursor, "members")?;
        self.ensure_group(group, "members").await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM group_members WHERE group_id = ? AND user_id > ? \
             ORDER BY user_id LIMIT ?",
        )
        .bind(int(group.0))
        .bind(int(after))
        .bind(fetch)
        .fetch_all(self.pool())
        .await
        .during("members")?;
        let ids = ids
            .into_iter()
            .map(|id| unsigned(id, "group_members.user_id").map(UserId))
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(ids, limit, UserId::to_string))
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        self.ensure_user(user, "user_groups").await?;
        let rows: Vec<GroupRow> = sqlx::query_as(
            "SELECT g.id, g.name, g.owner, g.created_at \
             FROM group_members m JOIN chat_groups g ON g.id = m.group_id \
             WHERE m.user_id = ? ORDER BY g.id",
        )
        .bind(int(user.0))
        .fetch_all(self.pool())
        .await
        .during("user_groups")?;
        rows.into_iter().map(GroupRow::into_group).collect()
    }

    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?")
                .bind(int(group.0))
                .bind(int(user.0))
                .fetch_optional(self.pool())
                .await
                .during("is_member")?;
        Ok(found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::{ErrorKind, NameRules};

    async fn open() -> (TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("cim.db"))
            .await
            .expect("store opens");
        (dir, store)
    }

    /// Argon2 makes this the slow part of these tests: keep the number of calls modest.
    async fn new_user(name: &str) -> NewUser {
        NewUser::new(name, "secret", &NameRules::default())
            .await
            .expect("valid user")
    }

    async fn create(store: &SqliteStore, name: &str) -> User {
        store
            .create_user(new_user(name).await)
            .await
            .expect("user is created")
    }

    fn new_group(name: &str, owner: UserId) -> NewGroup {
        NewGroup::new(name, owner, &NameRules::default()).expect("valid group")
    }

    fn names(page: &Page<User>) -> Vec<&str> {
        page.items.iter().map(|user| user.name.as_str()).collect()
    }

    #[test]
    fn the_prefix_upper_bound_increments_the_last_character() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound("a%").as_deref(), Some("a&"));
        assert_eq!(
            prefix_upper_bound("z\u{d7ff}").as_deref(),
            Some("z\u{e000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("\u{10ffff}"), None);
    }

    #[tokio::test]
    async fn users_get_increasing_ids_and_are_found_by_id_and_any_case_of_their_name() {
        let (_dir, store) = open().await;

        let alice = create(&store, "Alice").await;
        let bob = create(&store, "bob").await;

        assert!(bob.id > alice.id);
        assert_eq!(alice.name, "Alice", "the name is kept as typed");
        assert_eq!(
            store.user(alice.id).await.expect("user"),
            Some(alice.clone())
        );
        assert_eq!(
            store.user_by_name("ALICE").await.expect("by name"),
            Some(alice.clone())
        );
        assert_eq!(store.user(UserId(99)).await.expect("user"), None);
        assert_eq!(store.user(UserId(u64::MAX)).await.expect("user"), None);
        assert_eq!(store.user_by_name("carol").await.expect("by name"), None);

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
    }

    #[tokio::test]
    async fn a_user_name_taken_in_another_case_or_normal_form_is_already_exists() {
        let (_dir, store) = open().await;
        create(&store, "Zoë").await;

        let err = store
            .create_user(new_user("ZOE\u{308}").await)
            .await
            .expect_err("same canonical name");

        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(err.message().contains("ZOË"), "{err}");
        assert!(err.context().contains(&("backend", "sqlite".to_string())));
    }

    #[tokio::test]
    async fn of_concurrent_creates_of_one_name_exactly_one_succeeds() {
        let (_dir, store) = open().await;
        let new = new_user("racer").await;

        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let new = new.clone();
                tokio::spawn(async move { store.create_user(new).await })
            })
            .collect();
        let mut created = 0;
        for attempt in attempts {
            match attempt.await.expect("task") {
                Ok(_) => created += 1,
                Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
            }
        }

        assert_eq!(created, 1);
    }

    #[tokio::test]
    async fn prefix_search_pages_through_canonical_names_in_order() {
        let (_dir, store) = open().await;
        for name in ["Zoë", "zoey", "ZOLTAN", "Ωμέγα", "zo_y", "zp"] {
            create(&store, name).await;
        }

        // Canonical order: "zo_y" < "zoey" < "zoltan" < "zoë" ('ë' is above ASCII).
        let first = store.search_users("ZO", None, 2).await.expect("search");
        assert_eq!(names(&first), ["zo_y", "zoey"]);
        let cursor = first.next.expect("more results");
        let second = store
            .search_users("ZO", Some(&cursor), 2)
            .await
            .expect("search");
        assert_eq!(names(&second), ["ZOLTAN", "Zoë"]);
        assert_eq!(second.next, None);

        let underscore = store.search_users("zo_", None, 10).await.expect("search");
        assert_eq!(names(&underscore), ["zo_y"], "_ is no wildcard");
        let percent = store.search_users("z%", None, 10).await.expect("search");
        assert!(percent.items.is_empty(), "% is no wildcard");
        let decomposed = store
            .search_users("zoe\u{308}", None, 10)
            .await
            .expect("search");
        assert_eq!(names(&decomposed), ["Zoë"]);
        let greek = store.search_users("ΩΜ", None, 10).await.expect("search");
        assert_eq!(names(&greek), ["Ωμέγα"]);
        let everyone = store.search_users("", None, 10).await.expect("search");
        assert_eq!(everyone.items.len(), 6);
        let err = store.search_users("z", None, 0).await.expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn the_owner_is_the_first_member_and_membership_changes_report_whether_they_did() {
        let (_dir, store) = open().await;
        let owner = create(&store, "owner").await;
        let bob = create(&store, "bob").await;

        let group = store
            .create_group(new_group("Team", owner.id))
            .await
            .expect("group is created");

        assert_eq!((group.name.as_str(), group.owner), ("Team", owner.id));
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
        let (_dir, store) = open().await;
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
        let (_dir, store) = open().await;
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
            [first.clone(), second]
        );

        let bad = Cursor("not-an-id".into());
        let err = store
            .members(first.id, Some(&bad), 2)
            .await
            .expect_err("bad cursor");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = store.members(first.id, None, 0).await.expect_err("limit 0");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn accounts_survive_closing_and_reopening_the_file_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cim.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let alice = create(&store, "alice").await;
        let group = store
            .create_group(new_group("team", alice.id))
            .await
            .expect("group");
        store.close().await;
        drop(store);

        let store = Arc::new(SqliteStore::open(&path).await.expect("reopens"));

        let (user, hash) = store
            .credentials("ALICE")
            .await
            .expect("credentials")
            .expect("alice survived");
        assert_eq!(user, alice);
        assert!(hash.verify("secret").await.expect("verify"));
        assert_eq!(store.user_groups(alice.id).await.expect("groups"), [group]);
        let bob = create(&store, "bob").await;
        assert!(bob.id > alice.id);
    }
}
