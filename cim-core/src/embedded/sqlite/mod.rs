//! Accounts and messages in one SQLite file: cim on a single node, durably, with no server to run.
//!
//! [`SqliteStore`] implements both [`AccountStore`] and [`MessageStore`] over one connection
//! pool (reads and the rarer writes) and one writer thread (appends and acks). Registered as backend `sqlite` for `[accounts]` and `[messages]`, it opens
//! `<data_dir>/<file>`, where `file` defaults to `<namespace>.db` (`cim.db` with the default
//! namespace), so two namespaces never share a file:
//!
//! ```toml
//! [messages]
//! backend = "sqlite"
//! file = "messages.db"   # optional, relative to data_dir
//! ```
//!
//! Why it is built the way it is:
//!
//! - **One pool per file per process.** Opening a file that this process has open already
//!   returns the same store, so `[accounts]` and `[messages]` pointing at one file share its
//!   pool, and the schema is migrated once. (SQLite would cope with two pools on one WAL file;
//!   sharing avoids migrations racing each other, which sqlx does not lock on SQLite.)
//! - **WAL, `synchronous = FULL`, 5 s busy timeout, foreign keys on.** Readers never block the
//!   writer; a commit is on disk when `append` returns (the `durable` capability); a writer
//!   waits for another instead of failing at once.
//! - **Appends and acks are committed in groups** by one writer thread with its own
//!   connection (the `commit` module): many per transaction, each acknowledged only after the commit that holds it, so the node
//!   is durable without paying a disk flush per message.
//! - **Every multi-statement write runs in `BEGIN IMMEDIATE`**, which takes the write lock up
//!   front. A deferred transaction that reads then writes can fail with `SQLITE_BUSY` without
//!   waiting, when another connection committed in between; an immediate one just queues. That
//!   is what makes concurrent appends to one conversation gap-free without retries.
//! - **Static SQL only.** Variable-length inputs (a user's groups, search words) are bound as
//!   one JSON array and unpacked with `json_each`, so no SQL text is ever built from input.
//! - **Versioned migrations** (`migrations/sqlite`, embedded at build time) run at every open;
//!   applied ones are skipped.
//! - **Search** uses an FTS5 trigram index over the lower-cased body (see the `messages`
//!   module), which the writer fills after each commit rather than inside it (the
//!   `search_index` module): an acknowledgement waits for the message's rows, not its index.

mod accounts;
mod columns;
mod commit;
mod error;
mod messages;
mod search_index;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use serde::Deserialize;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Mutex;

use self::commit::Committer;
use crate::registry::{AccountStoreFactory, BackendOptions, BuildFuture, MessageStoreFactory};
use crate::{AccountStore, Error, MessageStore, Result};

inventory::submit! {
    AccountStoreFactory::new(
        "sqlite",
        "SQLite file under the data directory (single node, durable)",
        build_accounts,
    )
}

inventory::submit! {
    MessageStoreFactory::new(
        "sqlite",
        "SQLite file under the data directory (single node, durable)",
        build_messages,
    )
}

/// The `sqlite` backend's own keys, in `[accounts]` or `[messages]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SqliteConfig {
    /// The database file, relative to the data directory (an absolute path is used as is).
    /// Default: `<namespace>.db`.
    file: Option<PathBuf>,
}

/// How long a statement waits for another connection's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a free connection before giving up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections per file. SQLite has one writer at a time; the others serve reads (WAL lets
/// them run alongside the writer).
const MAX_CONNECTIONS: u32 = 8;

/// The stores this process has open, by canonical file path. Weak, so that a store dropped by
/// every user closes its pool instead of living as long as the process.
static OPEN_FILES: LazyLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> =
    LazyLock::new(Default::default);

/// Accounts and messages in one SQLite file. Cheap to clone: clones share one connection pool.
///
/// Implements [`AccountStore`] and [`MessageStore`] with every capability, durably. Registered
/// as backend `sqlite`; see the [module documentation](self) for the design.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    pool: SqlitePool,
    /// The group commit of appends and acks (see the `commit` module).
    committer: Committer,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens the database file at `path`, creating it and its parent directories if missing,
    /// and brings its schema up to date. If this process has the file open already, returns a
    /// handle on the same store (same pool).
    ///
    /// Fails with [`Unavailable`](crate::ErrorKind::Unavailable) if the directory or the file
    /// cannot be created or opened, and [`Internal`](crate::ErrorKind::Internal) if the file is
    /// not a database or holds a schema from a newer cim.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let path = canonical_path(path).await?;
        let mut open_files = OPEN_FILES.lock().await;
        open_files.retain(|_, shared| shared.strong_count() > 0);
        if let Some(shared) = open_files.get(&path).and_then(Weak::upgrade)
            && !shared.pool.is_closed()
            && shared.committer.is_running()
        {
            return Ok(SqliteStore { shared });
        }
        let pool = connect(&path).await?;
        let committer = match Committer::start(&path).await {
            Ok(committer) => committer,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            committer,
            pool,
            path: path.clone(),
        });
        open_files.insert(path, Arc::downgrade(&shared));
        Ok(SqliteStore { shared })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Closes the connection pool, waiting for connections in use to be returned. Every handle
    /// on this file (clones, and stores opened on the same path) is closed with it: their
    /// operations fail with [`Unavailable`](crate::ErrorKind::Unavailable) from then on (writes queued before the close are committed first), and
    /// the next [`SqliteStore::open`] of the path opens the file afresh.
    pub async fn close(&self) {
        self.shared.committer.close().await;
        self.shared.pool.close().await;
    }

    fn pool(&self) -> &SqlitePool {
        &self.shared.pool
    }

    fn committer(&self) -> &Committer {
        &self.shared.committer
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish()
    }
}

/// `path` with its directory created and resolved, so that two spellings of one file share a
/// store. The file system calls run on a blocking thread.
async fn canonical_path(path: &Path) -> Result<PathBuf> {
    let file_name = path.file_name().ok_or_else(|| {
        Error::config(format!("{} does not name a file", path.display()))
            .with_context("backend", "sqlite")
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let resolved = tokio::task::spawn_blocking(move || {
        private_dir(&dir).and_then(|()| std::fs::canonicalize(&dir))
    })
    .await
    .map_err(|e| Error::internal(format!("the task preparing the data directory died: {e}")))?;
    let dir = resolved.map_err(|e| {
        Error::unavailable(format!(
            "cannot create the directory of SQLite file {}: {e}; check the data directory and \
             its permissions",
            path.display()
        ))
        .set_retryable(false)
        .with_context("backend", "sqlite")
        .with_source(e)
    })?;
    Ok(dir.join(file_name))
}

/// Creates `dir` (and its parents) if missing; the directories this creates are readable by
/// their owner only (0700): they hold every account and message.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes the database file, and its WAL and shared-memory files if they exist, readable and
/// writable by their owner only (0600), creating the database file so if it is missing.
/// SQLite creates the WAL and shared-memory files with the database file's permissions, so
/// those that come later are private too.
fn private_files(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !path.exists() {
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(path)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => std::fs::File::open(path),
                    _ => Err(e),
                })?;
        }
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_os_string();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for file in files.iter().filter(|file| file.exists()) {
            let mode = std::fs::metadata(file)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Opens a pool on `path` and runs the migrations.
async fn connect(path: &Path) -> Result<SqlitePool> {
    let private = path.to_path_buf();
    tokio::task::spawn_blocking(move || private_files(&private))
        .await
        .map_err(|e| Error::internal(format!("the task preparing the SQLite file died: {e}")))?
        .map_err(|e| {
            Error::unavailable(format!(
                "cannot create {} or make it private: {e}; check the data directory's \
                 permissions",
                path.display()
            ))
            .set_retryable(false)
            .with_context("backend", "sqlite")
        })?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| error::db_error("open", e).with_context("file", path.display()))?;
    if let Err(e) = sqlx::migrate!("./migrations/sqlite").run(&pool).await {
        pool.close().await;
        return Err(migrate_error(path, e));
    }
    if let Err(e) = accounts::backfill_skeletons(&pool).await {
        pool.close().await;
        return Err(e.with_context("file", path.display()));
    }
    Ok(pool)
}

fn migrate_error(path: &Path, e: sqlx::migrate::MigrateError) -> Error {
    use sqlx::migrate::MigrateError;
    let error = match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => {
            return error::db_error("migrate", e).with_context("file", path.display());
        }
        MigrateError::VersionMissing(version) => Error::internal(format!(
            "{} was written by a newer cim (schema version {version} is unknown here); \
             upgrade cim or use another file",
            path.display()
        )),
        MigrateError::VersionMismatch(version) | MigrateError::Dirty(version) => {
            Error::internal(format!(
                "the schema of {} does not match migration {version}; restore the file from a \
                 backup",
                path.display()
            ))
        }
        _ => Error::internal(format!("migrating {} failed", path.display())),
    };
    error
        .with_context("backend", "sqlite")
        .with_context("operation", "migrate")
        .with_source(e)
}

/// The file a registry build opens: `<data_dir>/<file>`, `file` defaulting to `<namespace>.db`.
fn database_path(options: &BackendOptions) -> Result<PathBuf> {
    let config: SqliteConfig = options.parse()?;
    let file = match config.file {
        Some(file) => file,
        None => {
            let namespace = options.namespace();
            let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
            if namespace.is_empty() || namespace.starts_with('.') || !namespace.chars().all(plain) {
                return Err(Error::config(format!(
                    "[{}] namespace {namespace:?} cannot name the SQLite file; set `file` in the \
                     section, or use a namespace of letters, digits, '_', '-' and '.'",
                    options.section()
                )));
            }
            PathBuf::from(format!("{namespace}.db"))
        }
    };
    Ok(options.data_dir().join(file))
}

fn build_accounts(options: BackendOptions) -> BuildFuture<dyn AccountStore> {
    Box::pin(async move {
        let store = SqliteStore::open(&database_path(&options)?).await?;
        Ok(Arc::new(store) as Arc<dyn AccountStore>)
    })
}

fn build_messages(options: BackendOptions) -> BuildFuture<dyn MessageStore> {
    Box::pin(async move {
        let store = SqliteStore::open(&database_path(&options)?).await?;
        Ok(Arc::new(store) as Arc<dyn MessageStore>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn open_creates_missing_directories_and_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a/b/cim.db");

        let store = SqliteStore::open(&path).await.expect("opens");

        assert!(path.exists());
        assert_eq!(store.path().file_name(), path.file_name());
        store.close().await;
    }

    #[tokio::test]
    async fn opening_an_open_file_again_shares_its_pool() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = SqliteStore::open(&dir.path().join("cim.db"))
            .await
            .expect("opens");

        let spelled_differently = dir.path().join("./x/../cim.db");
        std::fs::create_dir(dir.path().join("x")).expect("dir");
        let second = SqliteStore::open(&spelled_differently)
            .await
            .expect("opens again");

        assert!(Arc::ptr_eq(&first.shared, &second.shared));
        first.close().await;
        let reopened = SqliteStore::open(&dir.path().join("cim.db"))
            .await
            .expect("reopens");
        assert!(
            !Arc::ptr_eq(&first.shared, &reopened.shared),
            "a closed pool is not reused"
        );
        reopened.close().await;
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![b'x'; 4096]).expect("write junk");

        let err = SqliteStore::open(&path).await.expect_err("not a database");

        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    }

    #[tokio::test]
    async fn the_registry_builds_both_stores_on_one_file_named_after_the_namespace() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = |section: &str| {
            BackendOptions::new(section, "sqlite")
                .with_namespace("run_1")
                .with_data_dir(dir.path())
        };

        let accounts = crate::registry::build::<dyn AccountStore>(options("accounts"))
            .await
            .expect("accounts build");
        let messages = crate::registry::build::<dyn MessageStore>(options("messages"))
            .await
            .expect("messages build");

        assert!(dir.path().join("run_1.db").exists());
        assert!(accounts.capabilities().groups);
        assert!(messages.capabilities().durable);
        let explicit = options("messages").with_option("file", "other.db");
        crate::registry::build::<dyn MessageStore>(explicit)
            .await
            .expect("builds with an explicit file");
        assert!(dir.path().join("other.db").exists());
    }

    #[tokio::test]
    async fn the_registry_refuses_unknown_keys_and_unusable_namespaces() {
        let dir = tempfile::tempdir().expect("temp dir");
        let misspelt = BackendOptions::new("accounts", "sqlite")
            .with_data_dir(dir.path())
            .with_option("path", "x.db");
        let err = crate::registry::build::<dyn AccountStore>(misspelt)
            .await
            .err()
            .expect("unknown key");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("path"), "{err}");

        let slashed = BackendOptions::new("messages", "sqlite")
            .with_data_dir(dir.path())
            .with_namespace("prod/eu");
        let err = crate::registry::build::<dyn MessageStore>(slashed)
            .await
            .err()
            .expect("namespace with a slash");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("file"), "{err}");
    }
}
