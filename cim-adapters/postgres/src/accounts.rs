//! [`AccountStore`] for [`PostgresStore`].
//!
//! Tables: `users`, `chat_groups` (with the group's `access` and `history` settings),
//! `group_members` (one row per member, with their `role` and `since`), `group_bans` (one
//! row per banned user) and `revoked_sessions` (one row per revoked login, with the time it is
//! revoked until). Roles and settings are stored as their stable lower-case names.
//!
//! Uniqueness of names is two `UNIQUE` indexes, on the canonical-name column and on the
//! skeleton column (both computed in Rust, see [`NewUser::skeleton`]), so of concurrent creates
//! of one name, or of names that look alike, PostgreSQL lets exactly one insert through and the
//! others fail with a unique violation, reported as `AlreadyExists`. Rows from before the
//! skeleton column existed get theirs from [`backfill_skeletons`] when the store opens; of two
//! old names that look alike the later keeps NULL, which the index allows. Users and groups
//! are never deleted and a group's owner never changes, so checking that a group and a user
//! exist, or who owns a group, before touching a membership cannot race with anything.
//!
//! Bans are the one place where two statements of different callers must not interleave. A
//! ban deletes the membership and inserts the ban; an add inserts the membership unless a ban
//! exists. Under READ COMMITTED each statement sees what was committed when it started, so
//! without more an add could check for a ban before the ban commits and insert its row after
//! the ban's delete ran: a banned member. Both therefore first take a transaction-scoped
//! advisory lock on the pair (see [`PAIR_LOCK`]), and only then, in a later statement (with a
//! fresh snapshot), look at and change the rows: whichever comes second sees all of what the
//! first did.
//!
//! Prefix search is a range scan on the canonical-name index: names starting with `p` are
//! exactly those in `[p, successor(p))`, where the successor increments the last character
//! (see [`prefix_upper_bound`]). The column has "C" collation, which compares text byte by
//! byte, and UTF-8 byte order is code point order, so this holds for every script and for `%`
//! and `_`, which mean nothing in a range.
//!
//! Revoked logins are one upsert that keeps the later time (`GREATEST`), so concurrent
//! revocations of one login, from any node, end with the latest. Their times are compared with
//! the calling node's clock, not the database's: a token's expiry is checked on that clock too,
//! so a revocation lasts exactly as long as the tokens it refuses would otherwise be accepted.
//! Rows whose time has passed are deleted by the next revocation; a revocation whose time has
//! passed already is not stored at all.

use async_trait::async_trait;
use cim_core::account_store::check_session_id;
use cim_core::{
    AccountCapabilities, AccountStore, Cursor, Error, Group, GroupAccess, GroupHistory, GroupId,
    GroupSettings, Membership, NewGroup, NewUser, Page, PasswordHash, Result, Role, Seq, Timestamp,
    User, UserId, canonical_name, name_skeleton,
};
use sqlx::{FromRow, PgConnection};

use crate::PostgresStore;
use crate::columns::{int, named, unsigned};
use crate::error::{During, db_error, is_unique_violation, unique_error};
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
    access: String,
    history: String,
}

/// The columns a [`GroupRow`] is read from, for `concat!` into static SQL.
macro_rules! group_columns {
    () => {
        "id, name, owner, created_at, access, history"
    };
}

impl GroupRow {
    fn into_group(self) -> Result<Group> {
        Ok(Group {
            id: GroupId(unsigned(self.id, "chat_groups.id")?),
            name: self.name,
            owner: UserId(unsigned(self.owner, "chat_groups.owner")?),
            created_at: Timestamp(self.created_at),
            access: named(&self.access, "chat_groups.access", GroupAccess::parse)?,
            history: named(&self.history, "chat_groups.history", GroupHistory::parse)?,
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
            role: named(&self.role, "group_members.role", Role::parse)?,
            since: Seq(unsigned(self.since, "group_members.since")?),
        })
    }
}

/// What the add-unless-banned statement of [`AccountStore::add_member`] found and did.
#[derive(FromRow)]
struct AddRow {
    banned: bool,
    added: bool,
}

/// Serialises the changes of one (group, user) pair that must not interleave: a ban and an
/// add (see the module documentation). Taken with `pg_advisory_xact_lock(key1, key2)`, the
/// keys being the group and the user id folded to 31 bits ([`pair_lock_key`]); PostgreSQL
/// releases it at commit or rollback, so no path can leak it.
///
/// Why an advisory lock rather than locking the group's row: it serialises only what
/// conflicts, one user's ban with that user's add, so members joining a busy group do not
/// queue behind one another, and it can be taken before the rows it protects exist (there is
/// no ban row to lock before the ban). The two-key form lives in a key space of its own,
/// apart from the one-key locks of sqlx's migrations and of schema creation. Keys are not
/// unique across namespaces or ids 2^31 apart; such a collision only makes one caller wait a
/// few statements for another, never changes an outcome.
const PAIR_LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";

/// An id as one key of [`PAIR_LOCK`]: its low 31 bits, which are what differs between ids
/// that are close.
fn pair_lock_key(id: u64) -> i32 {
    i32::try_from(id & 0x7fff_ffff).unwrap_or(i32::MAX)
}

/// Takes [`PAIR_LOCK`] for (`group`, `user`) in the transaction `tx` is in.
async fn lock_pair(
    tx: &mut PgConnection,
    group: GroupId,
    user: UserId,
    operation: &'static str,
) -> Result<()> {
    sqlx::query(PAIR_LOCK)
        .bind(pair_lock_key(group.0))
        .bind(pair_lock_key(user.0))
        .execute(tx)
        .await
        .during(operation)?;
    Ok(())
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

    /// `InvalidInput` if `user` owns `group`, who cannot be `what` ("removed", "banned"...).
    async fn ensure_not_owner(
        &self,
        group: GroupId,
        user: UserId,
        what: &str,
        operation: &'static str,
    ) -> Result<()> {
        let owns: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM chat_groups WHERE id = $1 AND owner = $2)",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .fetch_one(self.pool())
        .await
        .during(operation)?;
        if owns {
            Err(Error::invalid_input(format!(
                "user {user} owns group {group} and cannot be {what}; a group always has its owner"
            )))
        } else {
            Ok(())
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

/// How many rows [`backfill_skeletons`] reads at a time, so that a large table is not held in
/// memory at once.
const BACKFILL_BATCH: i64 = 1000;

/// The statements that backfill one table's skeletons, and what its rows are called in a
/// warning.
struct Backfill {
    what: &'static str,
    /// The next rows without a skeleton after id `$1`, at most `$2`, by id.
    select: &'static str,
    /// Sets row `$2`'s skeleton to `$1`, unless something did meanwhile.
    update: &'static str,
}

const USER_SKELETONS: Backfill = Backfill {
    what: "user",
    select: "SELECT id, name FROM users WHERE skeleton IS NULL AND id > $1 ORDER BY id LIMIT $2",
    update: "UPDATE users SET skeleton = $1 WHERE id = $2 AND skeleton IS NULL",
};

const GROUP_SKELETONS: Backfill = Backfill {
    what: "group",
    select: "SELECT id, name FROM chat_groups WHERE skeleton IS NULL AND id > $1 \
             ORDER BY id LIMIT $2",
    update: "UPDATE chat_groups SET skeleton = $1 WHERE id = $2 AND skeleton IS NULL",
};

/// Gives the users and groups created before names had skeletons theirs (migration 0008 adds
/// the columns; SQL cannot compute a UTS #39 skeleton). Rows are visited by id, so of two old
/// names that look alike the first keeps its skeleton and the later keeps NULL, with a
/// warning: neither loses its account, and no third look-alike gets in.
///
/// Run after the migrations on the connection that holds their advisory lock (see
/// `prepare_schema`), so nodes starting together do not backfill the same rows at once. Each
/// update is a statement of its own: a look-alike refused by the index costs only its row.
pub(crate) async fn backfill_skeletons(conn: &mut PgConnection) -> Result<()> {
    for table in [USER_SKELETONS, GROUP_SKELETONS] {
        backfill_table(conn, &table).await?;
    }
    Ok(())
}

async fn backfill_table(conn: &mut PgConnection, table: &Backfill) -> Result<()> {
    const OPERATION: &str = "backfill_skeletons";
    let mut after = 0_i64;
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(table.select)
            .bind(after)
            .bind(BACKFILL_BATCH)
            .fetch_all(&mut *conn)
            .await
            .during(OPERATION)?;
        let Some((last, _)) = rows.last() else {
            return Ok(());
        };
        after = *last;
        for (id, name) in rows {
            let updated = sqlx::query(table.update)
                .bind(name_skeleton(&name))
                .bind(id)
                .execute(&mut *conn)
                .await;
            match updated {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => tracing::warn!(
                    id,
                    name,
                    "an older {} name looks like another one; it keeps no skeleton",
                    table.what
                ),
                Err(e) => return Err(db_error(OPERATION, e)),
            }
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
            "INSERT INTO users (name, canonical, skeleton, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, name, created_at",
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
        let settings = new.group_settings();
        let row: GroupRow = sqlx::query_as(concat!(
            "INSERT INTO chat_groups (name, canonical, skeleton, owner, created_at, access, \
             history) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
            group_columns!()
        ))
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
            "INSERT INTO group_members (group_id, user_id, role, since) \
             VALUES ($1, $2, 'owner', 1)",
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
        let row: Option<GroupRow> = sqlx::query_as(concat!(
            "UPDATE chat_groups SET access = $1, history = $2 WHERE id = $3 RETURNING ",
            group_columns!()
        ))
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
        let row: Option<GroupRow> = sqlx::query_as(concat!(
            "SELECT ",
            group_columns!(),
            " FROM chat_groups WHERE id = $1"
        ))
        .bind(int(id.0))
        .fetch_optional(self.pool())
        .await
        .during("group")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn group_by_name(&self, name: &str) -> Result<Option<Group>> {
        let row: Option<GroupRow> = sqlx::query_as(concat!(
            "SELECT ",
            group_columns!(),
            " FROM chat_groups WHERE canonical = $1"
        ))
        .bind(canonical_name(name))
        .fetch_optional(self.pool())
        .await
        .during("group_by_name")?;
        row.map(GroupRow::into_group).transpose()
    }

    async fn add_member(&self, group: GroupId, user: UserId, since: Seq) -> Result<bool> {
        const OPERATION: &str = "add_member";
        self.ensure_group(group, OPERATION).await?;
        self.ensure_user(user, OPERATION).await?;
        let mut tx = self.pool().begin().await.during(OPERATION)?;
        lock_pair(&mut tx, group, user, OPERATION).await?;
        // One statement, so one snapshot, taken after the lock: the ban it checks for and the
        // answer it gives agree, also when an unban commits meanwhile.
        let outcome: AddRow = sqlx::query_as(
            "WITH ban AS (SELECT EXISTS (SELECT 1 FROM group_bans \
                                        WHERE group_id = $1 AND user_id = $2) AS banned), \
                  added AS (INSERT INTO group_members (group_id, user_id, role, since) \
                            SELECT $1, $2, 'member', $3 FROM ban WHERE NOT ban.banned \
                            ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT ban.banned, EXISTS (SELECT 1 FROM added) AS added FROM ban",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .bind(int(since.0))
        .fetch_one(&mut *tx)
        .await
        .during(OPERATION)?;
        tx.commit().await.during(OPERATION)?;
        if outcome.banned {
            return Err(Error::permission_denied(format!(
                "user {user} is banned from group {group}; unban them first"
            )));
        }
        Ok(outcome.added)
    }

    async fn remove_member(&self, group: GroupId, user: UserId) -> Result<bool> {
        const OPERATION: &str = "remove_member";
        self.ensure_group(group, OPERATION).await?;
        self.ensure_user(user, OPERATION).await?;
        self.ensure_not_owner(group, user, "removed", OPERATION)
            .await?;
        let done = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(int(group.0))
            .bind(int(user.0))
            .execute(self.pool())
            .await
            .during(OPERATION)?;
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
            "SELECT user_id, role, since FROM group_members WHERE group_id = $1 AND user_id > $2 \
             ORDER BY user_id LIMIT $3",
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
            "SELECT user_id, role, since FROM group_members WHERE group_id = $1 AND user_id = $2",
        )
        .bind(int(group.0))
        .bind(int(user.0))
        .fetch_optional(self.pool())
        .await
        .during("membership")?;
        row.map(MemberRow::into_membership).transpose()
    }

    async fn set_role(&self, group: GroupId, user: UserId, role: Role) -> Result<()> {
        const OPERATION: &str = "set_role";
        if role == Role::Owner {
            return Err(Error::invalid_input(
                "a group has one owner, its creator; make the user an admin instead",
            ));
        }
        self.ensure_group(group, OPERATION).await?;
        self.ensure_user(user, OPERATION).await?;
        self.ensure_not_owner(group, user, "given another role", OPERATION)
            .await?;
        let done = sqlx::query(
            "UPDATE group_members SET role = $1 WHERE group_id = $2 AND user_id = $3 \
             AND role <> 'owner'",
        )
        .bind(role.as_str())
        .bind(int(group.0))
        .bind(int(user.0))
        .execute(self.pool())
        .await
        .during(OPERATION)?;
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
        let mut tx = self.pool().begin().await.during(OPERATION)?;
        lock_pair(&mut tx, group, user, OPERATION).await?;
        sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
            .bind(int(group.0))
            .bind(int(user.0))
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
        let done = sqlx::query(
            "INSERT INTO group_bans (group_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
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
        // No lock: an add racing the unban either sees the ban (and refuses) or does not (and
        // adds); both are right, and its answer is from one snapshot.
        self.ensure_group(group, "unban").await?;
        self.ensure_user(user, "unban").await?;
        let done = sqlx::query("DELETE FROM group_bans WHERE group_id = $1 AND user_id = $2")
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
            "SELECT user_id FROM group_bans WHERE group_id = $1 AND user_id > $2 \
             ORDER BY user_id LIMIT $3",
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
             WHERE m.user_id = $1 ORDER BY g.id",
        )
        .bind(int(user.0))
        .fetch_all(self.pool())
        .await
        .during("user_groups")?;
        rows.into_iter().map(GroupRow::into_group).collect()
    }

    async fn revoke_session(&self, session_id: &str, until: Timestamp) -> Result<()> {
        const OPERATION: &str = "revoke_session";
        check_session_id(session_id)?;
        let now = Timestamp::now();
        sqlx::query("DELETE FROM revoked_sessions WHERE until <= $1")
            .bind(now.as_millis())
            .execute(self.pool())
            .await
            .during(OPERATION)?;
        if until <= now {
            // Its tokens are expired already: nothing to refuse, and a later revocation kept
            // before stays as it is.
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO revoked_sessions AS r (session_id, until) VALUES ($1, $2) \
             ON CONFLICT (session_id) DO UPDATE SET until = GREATEST(r.until, EXCLUDED.until)",
        )
        .bind(session_id)
        .bind(until.as_millis())
        .execute(self.pool())
        .await
        .during(OPERATION)?;
        Ok(())
    }

    async fn is_session_revoked(&self, session_id: &str) -> Result<bool> {
        check_session_id(session_id)?;
        let revoked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM revoked_sessions WHERE session_id = $1 AND until > $2)",
        )
        .bind(session_id)
        .bind(Timestamp::now().as_millis())
        .fetch_one(self.pool())
        .await
        .during("is_session_revoked")?;
        Ok(revoked)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_lock_keys_are_the_low_31_bits_of_the_id() {
        assert_eq!(pair_lock_key(7), 7);
        assert_eq!(pair_lock_key(0x7fff_ffff), i32::MAX);
        assert_eq!(pair_lock_key(0x8000_0005), 5, "ids 2^31 apart share a key");
        assert_eq!(pair_lock_key(u64::MAX), i32::MAX);
    }
}
