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
use crate::account_store::check_session_id;
use crate::paging::{fetch_size, id_cursor, into_page};
use crate::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupAccess, GroupHistory, GroupId,
    GroupSettings, Membership, NewGroup, NewUser, Page, PasswordHash, Result, Role, Seq, Timestamp,
    User, UserId, canonical_name, name_skeleton,
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
    access: String,
    history: String,
}

impl GroupRow {
    fn into_group(self) -> Result<Group> {
        Ok(Group {
            id: GroupId(unsigned(self.id, "chat_groups.id")?),
            name: self.name,
            owner: UserId(unsigned(self.owner, "chat_groups.owner")?),
            created_at: Timestamp(self.created_at),
            access: GroupAccess::parse(&self.access)
                .ok_or_else(|| corrupt("chat_groups.access", &self.access))?,
            history: GroupHistory::parse(&self.history)
                .ok_or_else(|| corrupt("chat_groups.history", &self.history))?,
        })
    }
}

#[derive(FromRow)]
struct MemberRow {
    user_id: i64,
    role: String,
    since: i64,
}

impl MemberRow {
    fn into_membership(self) -> Result<Membership> {
        Ok(Membership {
            user: UserId(unsigned(self.user_id, "group_members.user_id")?),
            role: Role::parse(&self.role)
                .ok_or_else(|| corrupt("group_members.role", &self.role))?,
            since: Seq(unsigned(self.since, "group_members.since")?),
        })
    }
}

fn corrupt(column: &str, value: &str) -> Error {
    Error::internal(format!(
        "the SQLite file holds data this backend never writes (column {column} holds {value:?})"
    ))
    .with_context("backend", "sqlite")
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

    /// `InvalidInput` if `user` owns `group`.
    async fn ensure_not_owner(
        &self,
        group: GroupId,
        user: UserId,
        what: &str,
        operation: &'static str,
    ) -> Result<()> {
        let owns: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM chat_groups WHERE id = ? AND owner = ?)",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .fetch_one(self.pool())
        .await
        .during(operation)?;
        if owns {
            Err(Error::invalid_input(format!(
                "user {user} owns group {group} and cannot be {what}"
            )))
        } else {
            Ok(())
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

/// Gives the users and groups created before names had skeletons theirs (migration 0006 adds
/// the columns; SQL cannot compute a UTS #39 skeleton). Two old names that look alike keep the
/// first one's skeleton only: neither loses its account, and no third look-alike gets in.
pub(super) async fn backfill_skeletons(pool: &sqlx::SqlitePool) -> Result<()> {
    let users: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, name FROM users WHERE skeleton IS NULL ORDER BY id")
            .fetch_all(pool)
            .await
            .during("backfill_skeletons")?;
    for (id, name) in users {
        let done = sqlx::query("UPDATE users SET skeleton = ? WHERE id = ?")
            .bind(name_skeleton(&name))
            .bind(id)
            .execute(pool)
            .await;
        skip_look_alike(done, "user", &name)?;
    }
    let groups: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, name FROM chat_groups WHERE skeleton IS NULL ORDER BY id")
            .fetch_all(pool)
            .await
            .during("backfill_skeletons")?;
    for (id, name) in groups {
        let done = sqlx::query("UPDATE chat_groups SET skeleton = ? WHERE id = ?")
            .bind(name_skeleton(&name))
            .bind(id)
            .execute(pool)
            .await;
        skip_look_alike(done, "group", &name)?;
    }
    Ok(())
}

/// A backfill update's outcome: a look-alike of an older name is left without a skeleton.
fn skip_look_alike(
    done: std::result::Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>,
    what: &str,
    name: &str,
) -> Result<()> {
    match done {
        Ok(_) => Ok(()),
        Err(e) => {
            let error = unique_error("backfill_skeletons", e, || Error::already_exists(""));
            if error.kind() == crate::ErrorKind::AlreadyExists {
                tracing::warn!(
                    name,
                    "an older {what} name looks like another; it keeps no skeleton"
                );
                Ok(())
            } else {
                Err(error)
            }
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
            "INSERT INTO users (name, canonical, skeleton, password_hash, created_at) \
             VALUES (?, ?, ?, ?, ?) RETURNING id, name, created_at",
        )
        .bind(new.name())
        .bind(new.canonical_name())
        .bind(new.skeleton())
        .bind(new.password_hash().as_phc())
        .bind(Timestamp::now().as_millis())
        .fetch_one(self.pool())
        .await
        .map_err(|e| {
            unique_error("create_user", e, || {
                Error::already_exists(format!(
                    "user name {:?} is taken (or looks like one that is); choose another",
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
        let settings = new.group_settings();
        let row: GroupRow = sqlx::query_as(
            "INSERT INTO chat_groups (name, canonical, skeleton, owner, created_at, access, \
             history) VALUES (?, ?, ?, ?, ?, ?, ?) \
             RETURNING id, name, owner, created_at, access, history",
        )
        .bind(new.name())
        .bind(new.canonical_name())
        .bind(new.skeleton())
        .bind(int(new.owner().0))
        .bind(Timestamp::now().as_millis())
        .bind(settings.access.as_str())
        .bind(settings.history.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            unique_error(OPERATION, e, || {
                Error::already_exists(format!(
                    "group name {:?} is taken (or looks like one that is); choose another",
                    new.name()
                ))
            })
        })?;
        sqlx::query(
            "INSERT INTO group_members (group_id, user_id, role, since) VALUES (?, ?, 'owner', 1)",
        )
        .bind(row.id)
        .bind(row.owner)
        .execute(&mut *tx)
        .await
        .during(OPERATION)?;
        tx.commit().await.during(OPERATION)?;
        row.into_group()
    }

    async fn update_group(&self, id: GroupId, settings: GroupSettings) -> Result<Group> {
        let row: Option<GroupRow> = sqlx::query_as(
            "UPDATE chat_groups SET access = ?, history = ? WHERE id = ? \
             RETURNING id, name, owner, created_at, access, history",
        )
        .bind(settings.access.as_str())
        .bind(settings.history.as_str())
        .bind(int(id.0))
        .fetch_optional(self.pool())
        .await
        .during("update_group")?;
        row.ok_or_else(|| Error::not_found(format!("group {id} does not exist")))?
            .into_group()
    }

    async fn group(&self, id: GroupId) -> Result<Option<Group>> {
        let row: Option<GroupRow> = sqlx::query_as(
            "SELECT id, name, owner, created_at, access, history FROM chat_groups WHERE id = ?",
        )
        .bind(int(id.0))
        .fetch_optional(self.pool())
        .await
        .during("group")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let row: Option<GroupRow> = sqlx::query_as(
            "SELECT id, name, owner, created_at, access, history FROM chat_groups \
             WHERE canonical = ?",
        )
        .bind(canonical_name(name))
        .fetch_optional(self.pool())
        .await
        .during("group_by_name")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn add_member(&self, group: GroupId, user: UserId, since: Seq) -> Result<bool> {
        self.ensure_group(group, "add_member").await?;
        self.ensure_user(user, "add_member").await?;
        // One statement: SQLite runs it under its write lock, so a ban committed before it is
        // seen, and a ban after it removes the row again.
        let done = sqlx::query(
            "INSERT INTO group_members (group_id, user_id, role, since) \
             SELECT ?1, ?2, 'member', ?3 WHERE NOT EXISTS \
             (SELECT 1 FROM group_bans WHERE group_id = ?1 AND user_id = ?2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .bind(int(since.0))
        .execute(self.pool())
        .await
        .during("add_member")?;
        if done.rows_affected() == 1 {
            return Ok(true);
        }
        let banned: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM group_bans WHERE group_id = ? AND user_id = ?)",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .fetch_one(self.pool())
        .await
        .during("add_member")?;
        if banned {
            return Err(Error::permission_denied(format!(
                "user {user} is banned from group {group}"
            )));
        }
        Ok(false)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.ensure_group(group, "remove_member").await?;
        self.ensure_user(user, "remove_member").await?;
        self.ensure_not_owner(group, user, "removed", "remove_member")
            .await?;
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
    ) -> Result<Page<Membership>> {
        let fetch = fetch_size(limit)?;
        let after = id_cursor(cursor, "members")?;
        self.ensure_group(group, "members").await?;
        let rows: Vec<MemberRow> = sqlx::query_as(
            "SELECT user_id, role, since FROM group_members WHERE group_id = ? AND user_id > ? \
             ORDER BY user_id LIMIT ?",
        )
        .bind(int(group.0))
        .bind(int(after))
        .bind(fetch)
        .fetch_all(self.pool())
        .await
        .during("members")?;
        let members = rows
            .into_iter()
            .map(MemberRow::into_membership)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(members, limit, |member| member.user.to_string()))
    }

    async fn membership(&self, group: GroupId, user: UserId) -> Result<Option<Membership>> {
        let row: Option<MemberRow> = sqlx::query_as(
            "SELECT user_id, role, since FROM group_members WHERE group_id = ? AND user_id = ?",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .fetch_optional(self.pool())
        .await
        .during("membership")?;
        row.map(MemberRow::into_membership).transpose()
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> Result<()> {
        if role == Role::Owner {
            return Err(Error::invalid_input(
                "a group has one owner, its creator; make the user an admin instead",
            ));
        }
        self.ensure_group(group, "set_role").await?;
        self.ensure_user(user, "set_role").await?;
        self.ensure_not_owner(group, user, "given another role", "set_role")
            .await?;
        let done = sqlx::query(
            "UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ? \
             AND role <> 'owner'",
        )
        .bind(role.as_str())
        .bind(int(group.0))
        .bind(int(user.0))
        .execute(self.pool())
        .await
        .during("set_role")?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "user {user} is not a member of group {group}"
            )))
        }
    }

    async fn ban(&self, group: GroupId, user: UserId) -> Result<bool> {
        const OPERATION: &str = "ban";
        self.ensure_group(group, OPERATION).await?;
        self.ensure_user(user, OPERATION).await?;
        self.ensure_not_owner(group, user, "banned", OPERATION)
            .await?;
        let mut tx = self
            .pool()
            .begin_with("BEGIN IMMEDIATE")
            .await
            .during(OPERATION)?;
        sqlx::query("DELETE FROM group_members WHERE group_id = ? AND user_id = ?")
            .bind(int(group.0))
            .bind(int(user.0))
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
        let done = sqlx::query(
            "INSERT INTO group_bans (group_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .execute(&mut *tx)
        .await
        .during(OPERATION)?;
        tx.commit().await.during(OPERATION)?;
        Ok(done.rows_affected() == 1)
    }

    async fn unban(&self, group: GroupId, user: UserId) -> Result<bool> {
        self.ensure_group(group, "unban").await?;
        self.ensure_user(user, "unban").await?;
        let done = sqlx::query("DELETE FROM group_bans WHERE group_id = ? AND user_id = ?")
            .bind(int(group.0))
            .bind(int(user.0))
            .execute(self.pool())
            .await
            .during("unban")?;
        Ok(done.rows_affected() == 1)
    }

    async fn bans(
        &self,
        group: GroupId,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Page<UserId>> {
        let fetch = fetch_size(limit)?;
        let after = id_cursor(cursor, "bans")?;
        self.ensure_group(group, "bans").await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM group_bans WHERE group_id = ? AND user_id > ? \
             ORDER BY user_id LIMIT ?",
        )
        .bind(int(group.0))
        .bind(int(after))
        .bind(fetch)
        .fetch_all(self.pool())
        .await
        .during("bans")?;
        let ids = ids
            .into_iter()
            .map(|id| unsigned(id, "group_bans.user_id").map(UserId))
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(ids, limit, UserId::to_string))
    }

    async fn user_groups(&self, user: UserId) -> Result<Vec<Group>> {
        self.ensure_user(user, "user_groups").await?;
        let rows: Vec<GroupRow> = sqlx::query_as(
            "SELECT g.id, g.name, g.owner, g.created_at, g.access, g.history \
             FROM group_members m JOIN chat_groups g ON g.id = m.group_id \
             WHERE m.user_id = ? ORDER BY g.id",
        )
        .bind(int(user.0))
        .fetch_all(self.pool())
        .await
        .during("user_groups")?;
        rows.into_iter().map(GroupRow::into_group).collect()
    }

    async fn revoke_session(&self, session_id: &str, until: Timestamp) -> Result<()> {
        check_session_id(session_id)?;
        sqlx::query("DELETE FROM revoked_sessions WHERE until <= ?")
            .bind(Timestamp::now().as_millis())
            .execute(self.pool())
            .await
            .during("revoke_session")?;
        sqlx::query(
            "INSERT INTO revoked_sessions (session_id, until) VALUES (?, ?) \
             ON CONFLICT (session_id) DO UPDATE SET until = max(until, excluded.until)",
        )
        .bind(session_id)
        .bind(until.as_millis())
        .execute(self.pool())
        .await
        .during("revoke_session")?;
        Ok(())
    }

    async fn is_session_revoked(&self, session_id: &str) -> Result<bool> {
        check_session_id(session_id)?;
        let revoked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM revoked_sessions WHERE session_id = ? AND until > ?)",
        )
        .bind(session_id)
        .bind(Timestamp::now().as_millis())
        .fetch_one(self.pool())
        .await
        .during("is_session_revoked")?;
        Ok(revoked)
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

    use super::*;
    use crate::NameRules;

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
    async fn names_from_before_skeletons_get_theirs_when_the_file_opens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cim.db");
        let store = SqliteStore::open(&path).await.expect("opens");
        let hash = PasswordHash::hash("secret").await.expect("hash");
        // Rows as a cim without skeletons wrote them: two names that look alike.
        for name in ["paul1", "paull"] {
            sqlx::query(
                "INSERT INTO users (name, canonical, password_hash, created_at) \
                 VALUES (?, ?, ?, 0)",
            )
            .bind(name)
            .bind(name)
            .bind(hash.as_phc())
            .execute(store.pool())
            .await
            .expect("an old row");
        }
        store.close().await;
        drop(store);

        let store = SqliteStore::open(&path)
            .await
            .expect("reopens and backfills");
        let skeletons: Vec<Option<String>> =
            sqlx::query_scalar("SELECT skeleton FROM users ORDER BY id")
                .fetch_all(store.pool())
                .await
                .expect("read back");
        assert_eq!(
            skeletons,
            [Some(crate::name_skeleton("paul1")), None],
            "the first keeps the skeleton, the later look-alike none"
        );
        assert!(
            store
                .user_by_name("paull")
                .await
                .expect("look-up")
                .is_some()
        );
        let err = store
            .create_user(new_user("pauI1").await)
            .await
            .expect_err("a third look-alike");
        assert_eq!(err.kind(), crate::ErrorKind::AlreadyExists);
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
