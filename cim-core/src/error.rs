//! The one error type of cim-core.
//!
//! Every backend, ours or a third party's, converts its own failures into [`Error`] at the edge, so
//! callers (the server, the route, an embedding service) branch on an [`ErrorKind`] and on
//! [`Error::is_retryable`] and never on a backend's error type. The message says what happened in
//! words a user can act on; [`Error::with_context`] adds where (backend, key, operation); the
//! original error, when there is one, stays reachable through [`std::error::Error::source`].

use std::fmt;
use std::time::Duration;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist (user, group, server, session, conversation).
    NotFound,
    /// The thing to create exists already (a user name, a group name, a bound session under
    /// [`BindPolicy::Reject`](crate::BindPolicy::Reject)).
    AlreadyExists,
    /// A precondition did not hold: the state changed under the caller since it last read it.
    /// Re-read and decide again.
    Conflict,
    /// The input is malformed or outside a configured limit. Retrying the same input fails again.
    InvalidInput,
    /// The credentials or token are wrong, expired or missing.
    Unauthenticated,
    /// The caller is known but not allowed to do this (not a member of the group, not its
    /// owner, not allowed to broadcast). Retrying the same request fails again.
    PermissionDenied,
    /// The caller is over a rate limit. Retrying after [`Error::retry_after`] may succeed.
    RateLimited,
    /// The backend cannot be reached or refused to serve (connection lost, pool exhausted,
    /// server shutting down). Retrying later may help.
    Unavailable,
    /// The operation did not finish within its deadline. Its effect is unknown: retry only
    /// idempotent operations.
    Timeout,
    /// The backend does not offer this operation; its capabilities say so.
    Unsupported,
    /// The configuration is wrong: an unknown backend, a bad key or value.
    Config,
    /// A bug or a broken invariant: stored data that cannot be decoded, a task that died.
    Internal,
}

impl ErrorKind {
    /// A stable, lower-case name (`not_found`, `already_exists`, ...), used in logs and in the
    /// HTTP and wire protocols.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Config => "config",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether this kind is, by default, worth retrying unchanged.
    fn retryable_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::RateLimited
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from cim-core or from a backend, with a kind, a message and context.
///
/// Build one with a constructor named after its kind ([`Error::not_found`], ...) and add context
/// with [`Error::with_context`] and the source with [`Error::with_source`].
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    retryable: bool,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The result type of cim-core and of every backend trait.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            context: Vec::new(),
            retryable: kind.retryable_by_default(),
            retry_after: None,
            source: None,
        }
    }

    /// [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// [`ErrorKind::AlreadyExists`].
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }

    /// [`ErrorKind::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// [`ErrorKind::Unauthenticated`].
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }

    /// [`ErrorKind::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    /// [`ErrorKind::RateLimited`]: the caller may try again after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut error = Self::new(ErrorKind::RateLimited, message);
        error.retry_after = Some(retry_after);
        error
    }

    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// [`ErrorKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// [`ErrorKind::Unsupported`]: `operation` is not among the backend's capabilities.
    pub fn unsupported(operation: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("{} is not supported by this backend", operation.into()),
        )
    }

    /// [`ErrorKind::Config`].
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Adds a `key: value` pair saying where the error happened (backend, operation, key...).
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Overrides whether retrying may help (by default: only `Unavailable` and `Timeout`).
    pub fn set_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The context pairs, in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// How long to wait before retrying, when the error says (a rate limit does).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (key, value)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{key}: {value}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("retryable", &self.retryable);
        if let Some(retry_after) = self.retry_after {
            d.field("retry_after", &retry_after);
        }
        if !self.context.is_empty() {
            d.field("context", &self.context);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// Fails with [`ErrorKind::Unsupported`] naming `operation` unless `supported`: the one-line
/// check a backend puts at the top of an operation its capabilities may not include.
pub fn ensure_supported(supported: bool, operation: &str) -> Result<()> {
    if supported {
        Ok(())
    } else {
        Err(Error::unsupported(operation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_kind_message_context_and_source() {
        let err = Error::unavailable("cannot reach the store")
            .with_context("backend", "redis")
            .with_context("operation", "bind")
            .with_source(std::io::Error::other("connection refused"));
        assert_eq!(
            err.to_string(),
            "unavailable: cannot reach the store (backend: redis, operation: bind): connection refused"
        );
        assert!(err.is_retryable());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn only_transient_kinds_are_retryable_by_default() {
        assert!(Error::timeout("t").is_retryable());
        assert!(!Error::not_found("n").is_retryable());
        assert!(!Error::conflict("c").is_retryable());
        assert!(Error::conflict("c").set_retryable(true).is_retryable());
    }
}
