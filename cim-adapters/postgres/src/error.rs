//! sqlx errors turned into [`Error`] at the edge of the backend.
//!
//! Callers branch on an [`ErrorKind`](cim_core::ErrorKind): what matters is telling apart what a
//! retry can fix (the server is down or restarting, the pool is exhausted, a transaction lost a
//! race) from what it cannot (a bug, a schema from elsewhere, missing rights). PostgreSQL says
//! which by its SQLSTATE class. Every error names the backend and the operation, and keeps the
//! sqlx error as its source. Nothing here ever prints the connection URL.

use cim_core::Error;
use sqlx::error::{DatabaseError, ErrorKind as DbErrorKind};

/// Converts a sqlx error raised by `operation` into a cim error with context and source.
pub(crate) fn db_error(operation: &'static str, e: sqlx::Error) -> Error {
    let error = match &e {
        sqlx::Error::Database(db) => database_error(db.as_ref()),
        sqlx::Error::PoolTimedOut => Error::unavailable(
            "no PostgreSQL connection became available in time (connect_timeout): the server is \
             unreachable or the pool is exhausted; retry later",
        ),
        sqlx::Error::PoolClosed => {
            Error::unavailable("the PostgreSQL store was closed").set_retryable(false)
        }
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => Error::unavailable(
            "the connection to PostgreSQL failed; it is reconnected on the next call, retry",
        ),
        sqlx::Error::Tls(_) => Error::unavailable(
            "the TLS handshake with PostgreSQL failed; check `sslmode` in the url",
        )
        .set_retryable(false),
        sqlx::Error::Configuration(_) => Error::config(
            "the PostgreSQL url is invalid; expected postgres://user:password@host:port/database",
        ),
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => Error::internal(
            "a stored row does not have the expected shape; is another program writing to this \
             schema?",
        ),
        _ => Error::internal("the PostgreSQL store failed unexpectedly"),
    };
    error
        .with_context("backend", "postgres")
        .with_context("operation", operation)
        .with_source(e)
}

/// Like [`db_error`], but a unique-constraint violation becomes `taken()`, the caller's
/// [`AlreadyExists`](cim_core::ErrorKind::AlreadyExists) error that says which name is taken.
pub(crate) fn unique_error(
    operation: &'static str,
    e: sqlx::Error,
    taken: impl FnOnce() -> Error,
) -> Error {
    if is_unique_violation(&e) {
        taken()
            .with_context("backend", "postgres")
            .with_context("operation", operation)
            .with_source(e)
    } else {
        db_error(operation, e)
    }
}

/// Whether `e` is PostgreSQL refusing a row that would duplicate a `UNIQUE` key.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == DbErrorKind::UniqueViolation)
}

fn database_error(db: &dyn DatabaseError) -> Error {
    let code = db.code().unwrap_or_default();
    let message = db.message();
    match code.as_ref() {
        "23505" => Error::already_exists(format!("the row exists already: {message}")),
        // query_canceled: statement_timeout expired (or an operator cancelled the query).
        "57014" => Error::timeout(format!(
            "PostgreSQL cancelled the statement ({message}); it ran longer than \
             statement_timeout"
        )),
        // serialization_failure, deadlock_detected: lost a race with another transaction.
        "40001" | "40P01" => Error::unavailable(format!(
            "a concurrent transaction got in the way ({message}); retry"
        )),
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is going away or
        // still starting.
        "57P01" | "57P02" | "57P03" => Error::unavailable(format!(
            "PostgreSQL is shutting down or starting up ({message})"
        )),
        "3D000" | "42501" => Error::unavailable(format!(
            "PostgreSQL refused access ({message}); check the database in the url and the \
             user's rights"
        ))
        .set_retryable(false),
        // connection_exception, insufficient_resources (too many connections, disk full),
        // operator_intervention.
        code if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") => {
            Error::unavailable(format!("PostgreSQL cannot serve right now ({message})"))
        }
        code if code.starts_with("28") => Error::unavailable(format!(
            "PostgreSQL rejected the credentials ({message}); check the user and password in \
             the url"
        ))
        .set_retryable(false),
        _ => Error::internal(format!("PostgreSQL refused a statement: {message}")),
    }
}

/// Extension for sqlx results: `.during("append")?` converts the error with [`db_error`].
pub(crate) trait During<T> {
    /// The value, or the error converted for `operation`.
    fn during(self, operation: &'static str) -> cim_core::Result<T>;
}

impl<T> During<T> for Result<T, sqlx::Error> {
    fn during(self, operation: &'static str) -> cim_core::Result<T> {
        self.map_err(|e| db_error(operation, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::ErrorKind;

    #[test]
    fn an_unreachable_server_is_retryable_unavailable_with_context() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            let err = db_error("append", e);
            assert_eq!(err.kind(), ErrorKind::Unavailable);
            assert!(err.is_retryable());
            assert_eq!(
                err.context(),
                [
                    ("backend", "postgres".to_string()),
                    ("operation", "append".to_string())
                ]
            );
            assert!(std::error::Error::source(&err).is_some());
        }
    }

    #[test]
    fn decode_failures_are_internal() {
        let err = db_error("user", sqlx::Error::ColumnNotFound("name".into()));
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(!err.is_retryable());
    }
}
