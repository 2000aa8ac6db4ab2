//! How domain values are laid out in PostgreSQL columns, and read back.
//!
//! PostgreSQL's `BIGINT` is signed 64-bit while cim's ids and sequence numbers are `u64`. Values
//! going in saturate at `i64::MAX`: no stored id or sequence ever gets there, so a larger
//! argument still compares correctly (it finds nothing, or bounds nothing). Values coming out
//! must be non-negative; anything else means the schema was not written by this backend, an
//! [`Internal`](cim_core::ErrorKind::Internal) error. Closed sets of values (a member's role, a
//! group's access and history) are stored as their stable lower-case names, `TEXT` rather than
//! an enum type, so that adding a value needs no `ALTER TYPE`; a name this backend does not know
//! is an `Internal` error the same way.

use cim_core::{ConversationId, Error, Recipient, Result};

/// `value` as a PostgreSQL `BIGINT`, saturating at `i64::MAX`.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored integer as a `u64`; `column` names it in the error.
pub(crate) fn unsigned(value: i64, column: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt(format!("column {column} holds {value}")))
}

/// A stored lower-case name read back with `parse` (e.g. [`Role::parse`](cim_core::Role::parse));
/// `column` names it in the error.
pub(crate) fn named<T>(
    value: &str,
    column: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T> {
    parse(value).ok_or_else(|| corrupt(format!("column {column} holds {value:?}")))
}

/// The `(to_kind, to_id)` columns of a recipient.
pub(crate) fn recipient_columns(to: Recipient) -> (&'static str, i64) {
    match to {
        Recipient::User(user) => ("user", int(user.0)),
        Recipient::Group(group) => ("group", int(group.0)),
    }
}

/// The recipient stored as `(to_kind, to_id)`.
pub(crate) fn recipient(kind: &str, id: i64) -> Result<Recipient> {
    let id = unsigned(id, "to_id")?;
    match kind {
        "user" => Ok(Recipient::User(cim_core::UserId(id))),
        "group" => Ok(Recipient::Group(cim_core::GroupId(id))),
        other => Err(corrupt(format!("column to_kind holds {other:?}"))),
    }
}

/// A conversation stored in its text form.
pub(crate) fn conversation(text: &str) -> Result<ConversationId> {
    text.parse()
        .map_err(|_| corrupt(format!("column conversation holds {text:?}")))
}

fn corrupt(what: String) -> Error {
    Error::internal(format!(
        "the PostgreSQL schema holds data this backend never writes ({what}); is another program writing to it?"
    ))
    .with_context("backend", "postgres")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cim_core::{ErrorKind, GroupId, UserId};

    #[test]
    fn ids_beyond_sqlite_integers_saturate() {
        assert_eq!(int(7), 7);
        assert_eq!(int(u64::MAX), i64::MAX);
    }

    #[test]
    fn negative_or_unknown_stored_values_are_internal_errors() {
        assert_eq!(
            unsigned(-1, "id").expect_err("negative").kind(),
            ErrorKind::Internal
        );
        assert_eq!(
            recipient("robot", 1).expect_err("kind").kind(),
            ErrorKind::Internal
        );
        assert_eq!(
            conversation("x:1").expect_err("text").kind(),
            ErrorKind::Internal
        );
        assert_eq!(
            named("root", "group_members.role", cim_core::Role::parse)
                .expect_err("role")
                .kind(),
            ErrorKind::Internal
        );
    }

    #[test]
    fn recipients_round_trip_through_their_columns() {
        for to in [Recipient::User(UserId(3)), Recipient::Group(GroupId(4))] {
            let (kind, id) = recipient_columns(to);
            assert_eq!(recipient(kind, id).expect("round trip"), to);
        }
    }
}
