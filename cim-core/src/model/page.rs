//! Cursor pagination.

use serde::{Deserialize, Serialize};

/// An opaque position in a listing, returned by one page and passed back to get the next.
///
/// Its content is the backend's business; callers only hand it back. Cursor listings are
/// complete and duplicate-free: an item present for the whole walk through the pages appears in
/// exactly one page.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in the listing's order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// A page with no items and no successor.
    pub fn empty() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
}
