//! [`SessionStore`] on PostgreSQL: [`PostgresSessionStore`].
//!
//! - **Liveness** is a heartbeat row per server (`session_servers.expires_at`, set to the
//!   database's clock plus the TTL by every refresh and every bind). A session is live while its
//!   server's row is in the future; reads join on it, so a crashed server's sessions vanish
//!   together when its row expires, without anything deleting them.
//! - **Bind** renews the server's row, then in one transaction either inserts the
//!   user's row (`ON CONFLICT DO NOTHING`: of concurrent first binds exactly one inserts, the
//!   others wait for it on the primary key and then find its row) or locks the existing row
//!   `FOR UPDATE` and decides by the policy. Concurrent binds of one user are thus serialised on
//!   that user's row; other users never wait.
//! - **Unbind** is one `DELETE` that compares user, server and connection, and only of a live
//!   session.
//! - **Listing** pages by user id over the primary key, cursor = last user id.

use std::time::Duration;

use async_trait::async_trait;
use cim_core::{
    BindOutcome, BindPolicy, ConnectionId, Cursor, Error, Page, Result, ServerId, Session,
    SessionCapabilities, SessionRef, SessionStore, Timestamp, UserId,
};
use sqlx::FromRow;

use crate::columns::{int, unsigned};
use crate::error::During;
use crate::{PostgresConfig, PostgresStore};
use cim_core::paging::{fetch_size, id_cursor, into_page};

/// How long sessions outlive their server's last refresh when the section sets no `ttl`.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30);

/// How often bind retries when the row it found was unbound before it could lock it.
const BIND_ATTEMPTS: usize = 5;

/// The columns a [`SessionRow`] is read from.
macro_rules! session_columns {
    () => {
        "s.user_id, s.server_id, s.connection_id, s.device, s.login_at"
    };
}

/// Online sessions in a PostgreSQL schema. Cheap to clone.
///
/// Registered as backend `postgres` for `[sessions]`; the TTL is the section's `ttl`.
#[derive(Debug, Clone)]
pub struct PostgresSessionStore {
    store: PostgresStore,
    ttl_ms: i64,
}

#[derive(FromRow)]
struct SessionRow {
    user_id: i64,
    server_id: String,
    connection_id: i64,
    device: String,
    login_at: i64,
}

impl SessionRow {
    fn into_session(self) -> Result<Session> {
        Ok(Session {
            user_id: UserId(unsigned(self.user_id, "sessions.user_id")?),
            server_id: ServerId::new(self.server_id).map_err(|e| {
                Error::internal(format!("sessions.server_id holds an invalid id: {e}"))
                    .with_context("backend", "postgres")
            })?,
            connection_id: ConnectionId(unsigned(self.connection_id, "sessions.connection_id")?),
            device: self.device,
            login_at: Timestamp(self.login_at),
        })
    }
}

impl PostgresSessionStore {
    /// Connects like [`PostgresStore::connect`]; sessions outlive their server's last refresh
    /// by `ttl`.
    pub async fn connect(
        config: &PostgresConfig,
        namespace: &str,
        ttl: Duration,
    ) -> Result<PostgresSessionStore> {
        if ttl.is_zero() {
            return Err(Error::config("[sessions] ttl must be above zero"));
        }
        let store = PostgresStore::connect(config, namespace).await?;
        Ok(PostgresSessionStore {
            store,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// The store underneath (its pool and schema).
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }
}

/// Upserts a server's heartbeat row: alive for another `$2` milliseconds.
const REFRESH_SERVER: &str = "INSERT INTO session_servers AS v (server_id, expires_at) \
     VALUES ($1, now_ms() + $2) \
     ON CONFLICT (server_id) DO UPDATE SET expires_at = EXCLUDED.expires_at";

#[async_trait]
impl SessionStore for PostgresSessionStore {
    fn capabilities(&self) -> SessionCapabilities {
        SessionCapabilities::ALL
    }

    async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
        const OPERATION: &str = "bind";
        let pool = self.store.pool();
        // Any bind, even a rejected one, proves its server alive. Outside the transaction, so
        // that binds on one server do not queue on its heartbeat row.
        sqlx::query(REFRESH_SERVER)
            .bind(session.server_id.as_str())
            .bind(self.ttl_ms)
            .execute(pool)
            .await
            .during(OPERATION)?;
        for _ in 0..BIND_ATTEMPTS {
            let mut tx = pool.begin().await.during(OPERATION)?;
            let inserted = sqlx::query(
                "INSERT INTO sessions (user_id, server_id, connection_id, device, login_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(int(session.user_id.0))
            .bind(session.server_id.as_str())
            .bind(int(session.connection_id.0))
            .bind(&session.device)
            .bind(session.login_at.as_millis())
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
            if inserted.rows_affected() == 1 {
                tx.commit().await.during(OPERATION)?;
                return Ok(BindOutcome::Bound);
            }
            let existing: Option<SessionRow> = sqlx::query_as(concat!(
                "SELECT ",
                session_columns!(),
                " FROM sessions s WHERE s.user_id = $1 FOR UPDATE"
            ))
            .bind(int(session.user_id.0))
            .fetch_optional(&mut *tx)
            .await
            .during(OPERATION)?;
            let Some(existing) = existing else {
                // Unbound between our insert and our lock: start over.
                tx.rollback().await.during(OPERATION)?;
                continue;
            };
            // A statement of its own, so that it sees the heartbeat of the server the locked
            // row names now (a join in the locking statement would re-check the row it found
            // before waiting, with the heartbeat of the server the row named then).
            let live: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM session_servers \
                 WHERE server_id = $1 AND expires_at > now_ms())",
            )
            .bind(&existing.server_id)
            .fetch_one(&mut *tx)
            .await
            .during(OPERATION)?;
            let stored = existing.into_session()?;
            let outcome = if !live || stored.reference() == session.reference() {
                BindOutcome::Bound
            } else if policy == BindPolicy::Reject {
                tx.rollback().await.during(OPERATION)?;
                return Err(Error::already_exists(format!(
                    "user {} is already online on server {}; unbind that session first or bind \
                     with the replace policy",
                    stored.user_id, stored.server_id
                )));
            } else {
                BindOutcome::Replaced(stored)
            };
            sqlx::query(
                "UPDATE sessions SET server_id = $2, connection_id = $3, device = $4, \
                 login_at = $5 WHERE user_id = $1",
            )
            .bind(int(session.user_id.0))
            .bind(session.server_id.as_str())
            .bind(int(session.connection_id.0))
            .bind(&session.device)
            .bind(session.login_at.as_millis())
            .execute(&mut *tx)
            .await
            .during(OPERATION)?;
            tx.commit().await.during(OPERATION)?;
            return Ok(outcome);
        }
        Err(Error::unavailable(format!(
            "binding user {} kept racing with unbinds; retry",
            session.user_id
        ))
        .with_context("backend", "postgres")
        .with_context("operation", OPERATION))
    }

    async fn get(&self, user: UserId) -> Result<Option<Session>> {
        let row: Option<SessionRow> = sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s JOIN session_servers v ON v.server_id = s.server_id \
             WHERE s.user_id = $1 AND v.expires_at > now_ms()"
        ))
        .bind(int(user.0))
        .fetch_optional(self.store.pool())
        .await
        .during("get")?;
        row.map(SessionRow::into_session).transpose()
    }

    async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
        let ids: Vec<i64> = users.iter().map(|user| int(user.0)).collect();
        let rows: Vec<SessionRow> = sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s JOIN session_servers v ON v.server_id = s.server_id \
             WHERE s.user_id = ANY($1) AND v.expires_at > now_ms()"
        ))
        .bind(ids)
        .fetch_all(self.store.pool())
        .await
        .during("get_many")?;
        rows.into_iter().map(SessionRow::into_session).collect()
    }

    async fn unbind(&self, session: &SessionRef) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM sessions s USING session_servers v \
             WHERE s.user_id = $1 AND s.server_id = $2 AND s.connection_id = $3 \
               AND v.server_id = s.server_id AND v.expires_at > now_ms()",
        )
        .bind(int(session.user_id.0))
        .bind(session.server_id.as_str())
        .bind(int(session.connection_id.0))
        .execute(self.store.pool())
        .await
        .during("unbind")?;
        Ok(done.rows_affected() == 1)
    }

    async fn refresh_server(&self, server: &ServerId) -> Result<()> {
        sqlx::query(REFRESH_SERVER)
            .bind(server.as_str())
            .bind(self.ttl_ms)
            .execute(self.store.pool())
            .await
            .during("refresh_server")?;
        Ok(())
    }

    async fn remove_server(&self, server: &ServerId) -> Result<u64> {
        // Every row of the server goes; only the live ones were sessions still.
        let live: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM sessions WHERE server_id = $1 RETURNING 1) \
             SELECT CASE WHEN EXISTS (SELECT 1 FROM session_servers \
                                      WHERE server_id = $1 AND expires_at > now_ms()) \
                         THEN (SELECT count(*) FROM gone) ELSE 0 END",
        )
        .bind(server.as_str())
        .fetch_one(self.store.pool())
        .await
        .during("remove_server")?;
        Ok(unsigned(live, "count")?)
    }

    async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
        let fetch = fetch_size(limit)?;
        let after = id_cursor(cursor, "list_online")?;
        let rows: Vec<SessionRow> = sqlx::query_as(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s JOIN session_servers v ON v.server_id = s.server_id \
             WHERE s.user_id > $1 AND v.expires_at > now_ms() \
             ORDER BY s.user_id LIMIT $2"
        ))
        .bind(int(after))
        .bind(fetch)
        .fetch_all(self.store.pool())
        .await
        .during("list_online")?;
        let sessions = rows
            .into_iter()
            .map(SessionRow::into_session)
            .collect::<Result<Vec<_>>>()?;
        Ok(into_page(sessions, limit, |session| {
            session.user_id.to_string()
        }))
    }

    async fn count_online(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions s JOIN session_servers v ON v.server_id = s.server_id \
             WHERE v.expires_at > now_ms()",
        )
        .fetch_one(self.store.pool())
        .await
        .during("count_online")?;
        Ok(unsigned(count, "count")?)
    }
}
