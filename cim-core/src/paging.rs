//! Cursor pagination helpers for backends: page sizes and the cursors' text forms.
//!
//! Shared by the SQL backends (sqlite here, the postgres adapter) so that every backend reads
//! and writes the same cursor forms and refuses a limit of 0 the same way.
//!
//! A page query fetches one row more than the page holds; that extra row only says whether a
//! next page exists, so the last page never comes with a cursor to an empty page. A cursor is
//! the sort key of the last item returned, so the next query starts strictly after it: pages
//! stay complete and duplicate-free while rows are added or removed elsewhere in the listing.

use crate::{ConversationId, Cursor, Error, Page, Result, Seq};

/// `limit` as an SQL `LIMIT`; a limit of 0 is refused ([`InvalidInput`](crate::ErrorKind)), as
/// the contracts say.
pub fn checked_limit(limit: u32) -> Result<i64> {
    if limit == 0 {
        return Err(Error::invalid_input("limit must be at least 1"));
    }
    Ok(i64::from(limit))
}

/// How many rows to fetch for a page of `limit` items: one more. A limit of 0 is refused.
pub fn fetch_size(limit: u32) -> Result<i64> {
    Ok(checked_limit(limit)? + 1)
}

/// The page of at most `limit` of `rows` (fetched with [`fetch_size`]), with a cursor made by
/// `cursor_of` from its last item when more rows follow.
pub fn into_page<T>(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = rows
        .last()
        .filter(|_| more)
        .map(|last| Cursor(cursor_of(last)));
    Page { items: rows, next }
}

/// The id in a cursor made from a numeric id by `listing`; anything else is `InvalidInput`.
pub fn id_cursor(cursor: Option<&Cursor>, listing: &str) -> Result<u64> {
    match cursor {
        None => Ok(0),
        Some(Cursor(text)) => text.parse::<u64>().map_err(|_| bad_cursor(text, listing)),
    }
}

/// The text form of a [`pending`](crate::MessageStore::pending) cursor: `<conversation>/<seq>`,
/// e.g. `d:1:2/17`.
pub fn pending_cursor(conversation: ConversationId, seq: Seq) -> String {
    format!("{conversation}/{seq}")
}

/// Parses a [`pending_cursor`].
pub fn parse_pending_cursor(cursor: &Cursor) -> Result<(ConversationId, Seq)> {
    let text = &cursor.0;
    let (conversation, seq) = text
        .rsplit_once('/')
        .ok_or_else(|| bad_cursor(text, "pending"))?;
    let conversation = conversation
        .parse::<ConversationId>()
        .map_err(|_| bad_cursor(text, "pending"))?;
    let seq = seq
        .parse::<Seq>()
        .map_err(|_| bad_cursor(text, "pending"))?;
    Ok((conversation, seq))
}

fn bad_cursor(text: &str, listing: &str) -> Error {
    Error::invalid_input(format!(
        "cursor {text:?} was not returned by {listing}; pass back the previous page's cursor, \
         or none for the first page"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, GroupId, UserId};

    #[test]
    fn a_limit_of_zero_is_invalid_input() {
        assert_eq!(
            fetch_size(0).expect_err("zero").kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(fetch_size(10).expect("ten"), 11);
    }

    #[test]
    fn only_a_page_with_rows_beyond_it_has_a_cursor() {
        let page = into_page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(page.items, [1, 2]);
        assert_eq!(page.next, Some(Cursor("2".into())));
        let last = into_page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(last.next, None);
    }

    #[test]
    fn pending_cursors_round_trip_and_garbage_is_invalid_input() {
        for conversation in [
            ConversationId::direct(UserId(2), UserId(1)),
            ConversationId::Group(GroupId(9)),
        ] {
            let cursor = Cursor(pending_cursor(conversation, Seq(17)));
            let parsed = parse_pending_cursor(&cursor).expect("round trip");
            assert_eq!(parsed, (conversation, Seq(17)));
        }
        assert_eq!(
            pending_cursor(ConversationId::direct(UserId(2), UserId(1)), Seq(17)),
            "d:1:2/17"
        );
        for bad in ["", "d:1:2", "d:1:2/", "x:1/2", "g:1/-3", "g:1/2/3"] {
            let err = parse_pending_cursor(&Cursor(bad.into())).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
        let err = id_cursor(Some(&Cursor("x".into())), "members").expect_err("not a number");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
