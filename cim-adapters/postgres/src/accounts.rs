//! [`AccountStore`] for [`PostgresStore`].
//!
//! Uniqueness of names is the `UNIQUE` constraint on the canonical-name column, so of
//! concurrent creates of one name PostgreSQL lets exactly one insert through and the others
//! fail with a unique violation, reported as `AlreadyExists`. Users and groups are never
//! deleted, so checking that a group and a user exist before touching a membership cannot race
//! with anything, and the membership change itself is one statement.
//!
//! Prefix search is a range scan on the canonical-name index: names starting with `p` are
//! exactly those in `[p, successor(p))`, where the successor increments the last character
//! (see [`prefix_upper_bound`]). The column has "C" collation, which compares text byte by
//! byte, and UTF-8 byte order is code point order, so this holds for every script and for `%` and `_`, which mean nothing in
//! a range.

use async_trait::async_trait;
use cim_core::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupId, NewGroup, NewUser, Page,
    PasswordHash, Result, Timestamp, User, UserId, canonical_name,
};
use sqlx::FromRow;

use crate::PostgresStore;
use crate::columns::{int, unsigned};
use crate::error::{During, unique_error};
use cim_core::paging::{fetch_size, id_cursor, into_page};

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

impl PostgresStore {
    /// `NotFound` unless the group exists.
    async fn ensure_group(&self, group: GroupId, operation: &'static str) -> Result<()> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chat_groups WHERE id = $1)")
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
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
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
impl AccountStore for PostgresStore {
    fn capabilities(&self) -> AccountCapabilities {
        AccountCapabilities::ALL
    }

    async fn create_user(&self, new: NewUser) -> Result<User> {
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (name, canonical, password_hash, created_at) VALUES ($1, $2, $3, $4) \
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
            sqlx::query_as("SELECT id, name, created_at FROM users WHERE id = $1")
                .bind(int(id.0))
                .fetch_optional(self.pool())
                .await
                .during("user")?;
        row.map(UserRow::into_user).transpose()
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row: Option<UserRow> =
            sqlx::query_as("SELECT id, name, created_at FROM users WHERE canonical = $1")
                .bind(canonical_name(name))
                .fetch_optional(self.pool())
                .await
                .during("user_by_name")?;
        row.map(UserRow::into_user).transpose()
    }

    async fn credentials(&self, name: &str) -> Result<Option<(User, PasswordHash)>> {
        let row: Option<CredentialsRow> = sqlx::query_as(
            "SELECT id, name, created_at, password_hash FROM users WHERE canonical = $1",
        )
        .bind(canonical_name(name))
        .fetch_optional(self.pool())
        .await
        .during("credentials")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let hash = PasswordHash::from_phc(row.password_hash).map_err(|e| {
            e.with_context("backend", "postgres")
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
                     WHERE canonical >= $1 AND canonical > $2 AND canonical < $3 \
                     ORDER BY canonical LIMIT $4",
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
                     WHERE canonical >= $1 AND canonical > $2 \
                     ORDER BY canonical LIMIT $3",
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
        let mut tx = self.pool().begin().await.during(OPERATION)?;
        let owner_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
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
            "INSERT INTO chat_groups (name, canonical, owner, created_at) VALUES ($1, $2, $3, $4) \
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
        sqlx::query("INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)")
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
            sqlx::query_as("SELECT id, name, owner, created_at FROM chat_groups WHERE id = $1")
                .bind(int(id.0))
                .fetch_optional(self.pool())
                .await
                .during("group")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let row: Option<GroupRow> = sqlx::query_as(
            "SELECT id, name, owner, created_at FROM chat_groups WHERE canonical = $1",
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
            "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
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
        let done = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
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
            "SELECT user_id FROM group_members WHERE group_id = $1 AND user_id > $2 \
             ORDER BY user_id LIMIT $3",
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
             WHERE m.user_id = $1 ORDER BY g.id",
        )
        .bind(int(user.0))
        .fetch_all(self.pool())
        .await
        .during("user_groups")?;
        rows.into_iter().map(GroupRow::into_group).collect()
    }

    async fn is_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM group_members WHERE group_id = $1 AND user_id = $2")
                .bind(int(group.0))
                .bind(int(user.0))
                .fetch_optional(self.pool())
                .await
                .during("is_member")?;
        Ok(found.is_some())
    }
}
