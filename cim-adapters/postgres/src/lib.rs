//! # cim-adapter-postgres
//!
//! cim's PostgreSQL backend, for deployments where several cim nodes share their state:
//! [`PostgresStore`] implements [`AccountStore`] and [`MessageStore`] over one connection pool,
//! [`PostgresSessionStore`] implements [`SessionStore`] and [`PostgresMetaStore`] implements
//! [`MetaStore`] on the same kind of schema. Registered as backend `postgres` for `[meta]`,
//! `[sessions]`, `[accounts]` and `[messages]` (keys: [`PostgresConfig`]); a binary registers it by linking this crate, e.g. by calling
//! [`link`].
//!
//! Why it is built the way it is:
//!
//! - **One schema per namespace.** Every table lives in a schema named after the section's
//!   namespace, created at start if missing, and every pooled connection has its `search_path`
//!   set to it (a startup parameter, so it holds from the first statement and survives
//!   reconnects). Two deployments, or two test cases, can share one database and never see each
//!   other's rows.
//! - **Migrations are embedded** (`migrations/`, versioned) and run at every start; applied ones
//!   are skipped. sqlx's PostgreSQL advisory lock (keyed by the database name) is held while
//!   they run and while the store then fills in what SQL cannot compute (the name skeletons of
//!   rows older than their column), so nodes starting together migrate one after the other; the
//!   schema itself is created under a transaction-scoped advisory lock of ours for the same
//!   reason.
//! - **Runtime-checked SQL only**, from static strings: building never needs a database, and no
//!   SQL text is ever built from input. Variable-length inputs are bound as arrays.
//! - **Bounded waits.** `connect_timeout` bounds how long an operation waits for a connection
//!   (so a server that is down gives `Unavailable`, not a hang) and `statement_timeout` is set
//!   on every connection, so a stuck statement gives `Timeout`. The pool checks a connection
//!   before handing it out, so after a server restart the store reconnects by itself.
//! - **Errors are converted at the edge** by SQLSTATE (see the `error` module); the URL, which
//!   may carry a password, is only ever shown redacted.

mod accounts;
mod columns;
mod config;
mod error;
mod messages;
mod meta;
mod sessions;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use cim_core::registry::{
    AccountStoreFactory, BackendOptions, BuildFuture, MessageStoreFactory, MetaStoreFactory,
    SessionStoreFactory,
};
use cim_core::{AccountStore, Error, MessageStore, MetaStore, Result, SessionStore};
use sqlx::migrate::Migrate;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection};

pub use config::PostgresConfig;
pub use meta::{DEFAULT_META_TTL, PostgresMetaStore};
pub use sessions::{DEFAULT_SESSION_TTL, PostgresSessionStore};

use error::During;

inventory::submit! {
    AccountStoreFactory::new(
        "postgres",
        "PostgreSQL database, one schema per namespace (shared by every node)",
        build_accounts,
    )
}

inventory::submit! {
    MessageStoreFactory::new(
        "postgres",
        "PostgreSQL database, one schema per namespace (shared by every node)",
        build_messages,
    )
}

inventory::submit! {
    SessionStoreFactory::new(
        "postgres",
        "PostgreSQL database: a heartbeat row per server, sessions expire with it",
        build_sessions,
    )
}

inventory::submit! {
    MetaStoreFactory::new(
        "postgres",
        "PostgreSQL database: leased rows, LISTEN/NOTIFY for watch",
        build_meta,
    )
}

/// Makes sure this crate is linked into the binary, so that its backends are registered.
/// Call it once from `main`; it does nothing else.
pub fn link() {}

/// The key of the advisory lock held while creating a namespace's schema (`cim` in ASCII).
const SCHEMA_LOCK_KEY: i64 = 0x0063_696d;

/// Accounts and messages in one PostgreSQL schema. Cheap to clone: clones share one pool.
///
/// Implements [`AccountStore`] and [`MessageStore`] with every capability, durably. See the
/// [crate documentation](crate) for the design.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    schema: String,
    url: String,
}

impl PostgresStore {
    /// Connects to the database `config.url` names, creates the schema `namespace` if missing
    /// and brings its tables up to date.
    ///
    /// Fails with [`Config`](cim_core::ErrorKind::Config) for a bad URL or a namespace that
    /// cannot name a schema (it must be 1 to 63 lower-case letters, digits and `_`),
    /// [`Unavailable`](cim_core::ErrorKind::Unavailable) if the server cannot be reached
    /// within `connect_timeout`, and [`Internal`](cim_core::ErrorKind::Internal) if the schema
    /// holds migrations this version does not know.
    pub async fn connect(config: &PostgresConfig, namespace: &str) -> Result<PostgresStore> {
        config.validate()?;
        let schema = schema_name(namespace)?;
        let url = config.url.redacted();
        let options = PgConnectOptions::from_str(config.url.expose())
            .map_err(|e| {
                Error::config(format!(
                    "the postgres url {url} is invalid: {e}; expected \
                     postgres://user:password@host:port/database"
                ))
            })?
            .options([
                ("search_path", format!("\"{schema}\"")),
                (
                    "statement_timeout",
                    format!("{}ms", config.statement_timeout.as_millis().max(1)),
                ),
                // "already exists, skipping" notices from idempotent DDL are not news.
                ("client_min_messages", "warning".to_string()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| error::db_error("connect", e).with_context("url", &url))?;
        if let Err(e) = prepare_schema(&pool, &schema).await {
            pool.close().await;
            return Err(e.with_context("url", &url));
        }
        tracing::debug!(%url, %schema, "postgres store ready");
        Ok(PostgresStore {
            shared: Arc::new(Shared { pool, schema, url }),
        })
    }

    /// The schema this store keeps its tables in (the namespace).
    pub fn schema(&self) -> &str {
        &self.shared.schema
    }

    /// Closes the pool, waiting for connections in use to be returned. Operations on this
    /// store (and its clones) fail with [`Unavailable`](cim_core::ErrorKind::Unavailable)
    /// from then on.
    pub async fn close(&self) {
        self.shared.pool.close().await;
    }

    fn pool(&self) -> &PgPool {
        &self.shared.pool
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.shared.url)
            .field("schema", &self.shared.schema)
            .finish()
    }
}

/// `namespace` as a schema name: 1 to 63 (PostgreSQL's identifier limit) lower-case ASCII
/// letters, digits and `_`, so that it can be quoted into DDL without any escaping.
fn schema_name(namespace: &str) -> Result<String> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if namespace.is_empty() || namespace.len() > 63 || !namespace.chars().all(plain) {
        return Err(Error::config(format!(
            "namespace {namespace:?} cannot name a PostgreSQL schema; use 1 to 63 lower-case \
             letters, digits and '_'"
        ))
        .with_context("backend", "postgres"));
    }
    Ok(namespace.to_string())
}

/// Creates the schema if missing, then runs the migrations in it and backfills what SQL cannot
/// compute.
async fn prepare_schema(pool: &PgPool, schema: &str) -> Result<()> {
    const OPERATION: &str = "create_schema";
    let mut conn = pool.acquire().await.during(OPERATION)?;
    let mut tx = conn.begin().await.during(OPERATION)?;
    // Two nodes running CREATE SCHEMA IF NOT EXISTS at once can both miss the other's schema,
    // and one then fails on the catalog's unique index: queue them instead.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .during(OPERATION)?;
    // `schema` is checked by `schema_name` to be plain lower-case letters, digits and '_'.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
    )))
    .execute(&mut *tx)
    .await
    .during(OPERATION)?;
    tx.commit().await.during(OPERATION)?;
    let migrated = migrate(&mut conn, schema).await;
    if migrated.is_err() {
        // The connection may still hold the migration lock (a session lock): closing it is
        // what surely releases it, rather than handing it back to the pool.
        let _ = conn.detach().close().await;
    }
    migrated
}

/// Runs the migrations, then [`accounts::backfill_skeletons`], holding sqlx's migration lock
/// (a session-level advisory lock keyed by the database name) on `conn` for both: nodes
/// starting together migrate one after the other, and the second finds nothing left to
/// backfill. The migrator's own locking is turned off: it would take and release the same lock
/// around the migrations alone.
async fn migrate(conn: &mut PgConnection, schema: &str) -> Result<()> {
    Migrate::lock(conn)
        .await
        .map_err(|e| migrate_error(schema, e))?;
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    // `run_direct` is `run` on a connection already acquired: `run(&mut *conn)` would do the
    // same, but its `Acquire<'a>` bound keeps the compiler from proving this future `Send`
    // (sqlx keeps `run_direct` public for that reason).
    migrator
        .run_direct(None, conn, false)
        .await
        .map_err(|e| migrate_error(schema, e))?;
    accounts::backfill_skeletons(conn)
        .await
        .map_err(|e| e.with_context("schema", schema))?;
    Migrate::unlock(conn)
        .await
        .map_err(|e| migrate_error(schema, e))
}

fn migrate_error(schema: &str, e: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError;
    let error = match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            return error::db_error("migrate", e).with_context("schema", schema);
        }
        MigrateError::VersionMissing(version) => Error::internal(format!(
            "schema {schema} was migrated by a newer cim (version {version} is unknown here); \
             upgrade cim or use another namespace"
        )),
        MigrateError::VersionMismatch(version) | MigrateError::Dirty(version) => {
            Error::internal(format!(
                "schema {schema} does not match migration {version}; it was changed by hand or \
                 a migration failed halfway: restore it from a backup"
            ))
        }
        _ => Error::internal(format!("migrating schema {schema} failed")),
    };
    error
        .with_context("backend", "postgres")
        .with_context("operation", "migrate")
        .with_source(e)
}

async fn open(options: &BackendOptions) -> Result<PostgresStore> {
    let config: PostgresConfig = options.parse()?;
    PostgresStore::connect(&config, options.namespace()).await
}

fn build_accounts(options: BackendOptions) -> BuildFuture<dyn AccountStore> {
    Box::pin(async move {
        let store = open(&options).await?;
        Ok(Arc::new(store) as Arc<dyn AccountStore>)
    })
}

fn build_messages(options: BackendOptions) -> BuildFuture<dyn MessageStore> {
    Box::pin(async move {
        let store = open(&options).await?;
        Ok(Arc::new(store) as Arc<dyn MessageStore>)
    })
}

fn build_meta(options: BackendOptions) -> BuildFuture<dyn MetaStore> {
    Box::pin(async move {
        let config: PostgresConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_META_TTL);
        let store = PostgresMetaStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn MetaStore>)
    })
}

fn build_sessions(options: BackendOptions) -> BuildFuture<dyn SessionStore> {
    Box::pin(async move {
        let config: PostgresConfig = options.parse()?;
        let ttl = options.ttl().unwrap_or(DEFAULT_SESSION_TTL);
        let store = PostgresSessionStore::connect(&config, options.namespace(), ttl).await?;
        Ok(Arc::new(store) as Arc<dyn SessionStore>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::ErrorKind;

    #[test]
    fn namespaces_that_cannot_name_a_schema_are_config_errors() {
        assert_eq!(schema_name("run_1").expect("plain"), "run_1");
        for bad in ["", "Prod", "a-b", "a\"b", &"x".repeat(64)] {
            let err = schema_name(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_registry_refuses_a_missing_url_and_unknown_keys() {
        let missing = BackendOptions::new("messages", "postgres");
        let err = cim_core::registry::build::<dyn MessageStore>(missing)
            .await
            .err()
            .expect("no url");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("url"), "{err}");

        let misspelt = BackendOptions::new("accounts", "postgres")
            .with_option("url", "postgres://u:hunter2@127.0.0.1:1/db")
            .with_option("poolsize", 3);
        let err = cim_core::registry::build::<dyn AccountStore>(misspelt)
            .await
            .err()
            .expect("unknown key");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("poolsize"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_within_the_timeout_and_hides_the_password() {
        let mut config = PostgresConfig::new("postgres://app:hunter2@127.0.0.1:1/cim");
        config.connect_timeout = std::time::Duration::from_millis(300);

        let err = PostgresStore::connect(&config, "nowhere")
            .await
            .expect_err("nothing listens on port 1");

        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }
}
