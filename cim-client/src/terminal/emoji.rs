//! Emoji by alias: `:smile:` in a typed message becomes 😄 before it is sent.
//!
//! Terminals make emoji hard to type, so the original client listed them in pages; a small
//! fixed table is enough for that, and keeps the client free of a large Unicode data crate.
//! Unknown aliases are left as typed, so `10:30:` or `:D` never change.

/// Alias (without colons) and emoji, in the order `:emoji` lists them.
pub const EMOJI: &[(&str, &str)] = &[
    ("smile", "😄"),
    ("grin", "😁"),
    ("joy", "😂"),
    ("wink", "😉"),
    ("blush", "😊"),
    ("heart_eyes", "😍"),
    ("thinking", "🤔"),
    ("neutral", "😐"),
    ("sweat", "😅"),
    ("cry", "😢"),
    ("sob", "😭"),
    ("angry", "😠"),
    ("scream", "😱"),
    ("sleeping", "😴"),
    ("sunglasses", "😎"),
    ("party", "🥳"),
    ("thumbsup", "👍"),
    ("thumbsdown", "👎"),
    ("clap", "👏"),
    ("wave", "👋"),
    ("pray", "🙏"),
    ("ok_hand", "👌"),
    ("muscle", "💪"),
    ("eyes", "👀"),
    ("heart", "❤️"),
    ("broken_heart", "💔"),
    ("fire", "🔥"),
    ("sparkles", "✨"),
    ("star", "⭐"),
    ("tada", "🎉"),
    ("rocket", "🚀"),
    ("coffee", "☕"),
    ("beer", "🍺"),
    ("pizza", "🍕"),
    ("cake", "🍰"),
    ("crab", "🦀"),
    ("cat", "🐱"),
    ("dog", "🐶"),
    ("sun", "☀️"),
    ("rain", "🌧️"),
    ("check", "✅"),
    ("x", "❌"),
    ("warning", "⚠️"),
    ("bulb", "💡"),
    ("bug", "🐛"),
    ("100", "💯"),
];

/// How many emoji one `:emoji` page shows.
pub const PAGE_SIZE: usize = 12;

/// The emoji for `alias` (without colons).
pub fn lookup(alias: &str) -> Option<&'static str> {
    EMOJI
        .iter()
        .find(|(known, _)| *known == alias)
        .map(|(_, emoji)| *emoji)
}

/// The number of `:emoji` pages.
pub fn page_count() -> usize {
    EMOJI.len().div_ceil(PAGE_SIZE)
}

/// Page `page` (1-based) of the table; empty past the end.
pub fn page(page: usize) -> &'static [(&'static str, &'static str)] {
    let start = page.saturating_sub(1).saturating_mul(PAGE_SIZE);
    let end = start.saturating_add(PAGE_SIZE).min(EMOJI.len());
    EMOJI.get(start..end).unwrap_or_default()
}

/// Replaces every known `:alias:` in `text` with its emoji.
pub fn replace_aliases(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(':') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let replaced = after.find(':').and_then(|end| {
            let alias = &after[..end];
            lookup(alias).map(|emoji| (emoji, end))
        });
        match replaced {
            Some((emoji, end)) => {
                out.push_str(emoji);
                rest = &after[end + 1..];
            }
            None => {
                // Not an alias: keep the colon; the next one may open an alias.
                out.push(':');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_aliases_are_replaced_anywhere_in_the_text() {
        assert_eq!(replace_aliases(":smile:"), "😄");
        assert_eq!(
            replace_aliases("ship it :rocket::tada: now"),
            "ship it 🚀🎉 now"
        );
    }

    #[test]
    fn unknown_aliases_and_stray_colons_stay_as_typed() {
        for text in [
            "at 10:30: lunch",
            ":D",
            "a:b:c",
            "::",
            ":nope: :smile",
            "日本語:",
        ] {
            assert_eq!(replace_aliases(text), text);
        }
        assert_eq!(replace_aliases("time 10:smile:"), "time 10😄");
    }

    #[test]
    fn aliases_are_unique() {
        for (i, (alias, _)) in EMOJI.iter().enumerate() {
            assert!(
                !EMOJI[i + 1..].iter().any(|(other, _)| other == alias),
                "{alias} listed twice"
            );
            assert!(!alias.contains(':') && !alias.contains(' '));
        }
    }

    #[test]
    fn pages_cover_the_table_and_past_the_end_is_empty() {
        let listed: usize = (1..=page_count()).map(|p| page(p).len()).sum();
        assert_eq!(listed, EMOJI.len());
        assert_eq!(page(1)[0], ("smile", "😄"));
        assert!(page(page_count() + 1).is_empty());
        assert_eq!(page(0), page(1), "page 0 is read as the first page");
    }
}
