//! sqlx and rusqlite errors turned into [`Error`] at the edge of the backend.
//!
//! Callers branch on an [`ErrorKind`](crate::ErrorKind), so what matters is telling apart the
//! failures a retry can fix (a busy file, an exhausted pool) from those it cannot (a broken
//! file, a bug). Every error names the backend and the operation and keeps the driver's error as
//! its source.

use sqlx::error::{DatabaseError, ErrorKind as DbErrorKind};

use crate::Error;

/// SQLite's primary result codes that matter here (the low byte of an extended code).
/// <https://www.sqlite.org/rescode.html>
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_NOTADB: i32 = 26;
/// Extended codes of a uniqueness violation.
const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;

/// Converts a sqlx error raised by `operation` into a cim error with context and source.
pub(super) fn db_error(operation: &'static str, e: sqlx::Error) -> Error {
    let error = match &e {
        sqlx::Error::Database(db) => database_error(db.as_ref()),
        sqlx::Error::PoolTimedOut => Error::unavailable(
            "no SQLite connection became free in time; the node is overloaded, retry later",
        ),
        sqlx::Error::PoolClosed => {
            Error::unavailable("the SQLite store was closed").set_retryable(false)
        }
        sqlx::Error::Io(_) => Error::unavailable("reading or writing the SQLite file failed"),
        sqlx::Error::WorkerCrashed => Error::internal("the SQLite connection's worker thread died"),
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => bad_row(),
        _ => unexpected(),
    };
    in_context(error, operation, e)
}

/// Like [`db_error`], but a unique-constraint violation becomes `taken()`, the caller's
/// [`AlreadyExists`](crate::ErrorKind::AlreadyExists) error that says which name is taken.
pub(super) fn unique_error(
    operation: &'static str,
    e: sqlx::Error,
    taken: impl FnOnce() -> Error,
) -> Error {
    let unique =
        matches!(&e, sqlx::Error::Database(db) if db.kind() == DbErrorKind::UniqueViolation);
    if unique {
        in_context(taken(), operation, e)
    } else {
        db_error(operation, e)
    }
}

fn database_error(db: &dyn DatabaseError) -> Error {
    if db.kind() == DbErrorKind::UniqueViolation {
        return Error::already_exists(format!("the row exists already: {}", db.message()));
    }
    let code = db
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .unwrap_or_default();
    code_error(code, db.message())
}

/// Converts an error of the writer thread's rusqlite connection, raised by `operation`, like
/// [`db_error`] does sqlx's.
pub(super) fn sqlite_error(operation: &'static str, e: rusqlite::Error) -> Error {
    let error = match &e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let message = message.as_deref().unwrap_or("no message");
            if matches!(
                failure.extended_code,
                SQLITE_CONSTRAINT_UNIQUE | SQLITE_CONSTRAINT_PRIMARYKEY
            ) {
                Error::already_exists(format!("the row exists already: {message}"))
            } else {
                code_error(failure.extended_code, message)
            }
        }
        rusqlite::Error::QueryReturnedNoRows
        | rusqlite::Error::InvalidColumnIndex(_)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => bad_row(),
        _ => unexpected(),
    };
    in_context(error, operation, e)
}

/// A row that does not decode into what the store wrote.
fn bad_row() -> Error {
    Error::internal(
        "a stored row does not have the expected shape; the file may be from another program",
    )
}

/// A driver error this backend has no better word for.
fn unexpected() -> Error {
    Error::internal("the SQLite store failed unexpectedly")
}

/// `error` naming the backend and `operation`, with the driver's error `source`.
fn in_context(
    error: Error,
    operation: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    error
        .with_context("backend", "sqlite")
        .with_context("operation", operation)
        .with_source(source)
}

/// The error for SQLite result `code` (primary or extended) with SQLite's `message`.
fn code_error(code: i32, message: &str) -> Error {
    match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => Error::unavailable(
            "the SQLite file stayed locked by another writer past the busy timeout; retry",
        )
        .set_retryable(true),
        SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN => Error::unavailable(format!(
            "the SQLite file cannot be read or written ({message}); check the disk and the data \
             directory"
        )),
        SQLITE_READONLY => Error::unavailable(format!(
            "the SQLite file is read-only ({message}); check its permissions"
        ))
        .set_retryable(false),
        SQLITE_CORRUPT | SQLITE_NOTADB => Error::internal(format!(
            "the SQLite file is damaged or not a database ({message}); restore it from a backup"
        )),
        _ => Error::internal(format!("SQLite refused a statement: {message}")),
    }
}

/// Extension for sqlx and rusqlite results: `.during("append")?` converts the error with
/// [`db_error`] or [`sqlite_error`].
pub(super) trait During<T> {
    /// The value, or the error converted for `operation`.
    fn during(self, operation: &'static str) -> crate::Result<T>;
}

impl<T> During<T> for Result<T, sqlx::Error> {
    fn during(self, operation: &'static str) -> crate::Result<T> {
        self.map_err(|e| db_error(operation, e))
    }
}

impl<T> During<T> for Result<T, rusqlite::Error> {
    fn during(self, operation: &'static str) -> crate::Result<T> {
        self.map_err(|e| sqlite_error(operation, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn pool_exhaustion_is_retryable_unavailable_with_context() {
        let err = db_error("append", sqlx::Error::PoolTimedOut);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_retryable());
        assert_eq!(
            err.context(),
            [
                ("backend", "sqlite".to_string()),
                ("operation", "append".to_string())
            ]
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn the_writer_connection_s_errors_are_told_apart_like_the_pool_s() {
        let failure = |code, extended_code| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error {
                    code,
                    extended_code,
                },
                Some("message".to_string()),
            )
        };
        let busy = sqlite_error(
            "group commit",
            failure(rusqlite::ErrorCode::DatabaseBusy, 5),
        );
        assert_eq!(busy.kind(), ErrorKind::Unavailable);
        assert!(busy.is_retryable());
        assert!(
            busy.context()
                .contains(&("operation", "group commit".to_string()))
        );
        let full = sqlite_error("append", failure(rusqlite::ErrorCode::DiskFull, 13));
        assert_eq!(full.kind(), ErrorKind::Unavailable);
        let unique = sqlite_error(
            "append",
            failure(rusqlite::ErrorCode::ConstraintViolation, 2067),
        );
        assert_eq!(unique.kind(), ErrorKind::AlreadyExists);
        let corrupt = sqlite_error("append", failure(rusqlite::ErrorCode::DatabaseCorrupt, 11));
        assert_eq!(corrupt.kind(), ErrorKind::Internal);
        let shape = sqlite_error("append", rusqlite::Error::QueryReturnedNoRows);
        assert_eq!(shape.kind(), ErrorKind::Internal);
        assert!(std::error::Error::source(&shape).is_some());
    }

    #[test]
    fn decode_failures_are_internal() {
        let err = db_error("user", sqlx::Error::ColumnNotFound("name".into()));
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(!err.is_retryable());
    }
}
