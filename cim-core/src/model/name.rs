//! Rules for user and group names, and the two forms that make them unique.
//!
//! Names are Unicode: letters and digits of any script that Unicode recommends for identifiers
//! (UTS #39's General Security Profile, itself built on UTS #31), plus `_`, `-` and `.`. They
//! are stored as typed (NFC-normalised) and shown that way. Two forms decide when two names are
//! one:
//!
//! - the **canonical form**, [`canonical_name`]: NFC, then lower case, so `Zoë`, `ZOË` and
//!   `zoe\u{308}` are one name; look-ups and prefix search use it;
//! - the **skeleton**, [`name_skeleton`]: UTS #39's confusable skeleton, in lower case,
//!   the same for names that *look* the same (`alice` and `аlice` with a Cyrillic `а`, `paul1`
//!   and `pauIl`), so that nobody can take a name that passes for someone else's.
//!
//! A name must also stay within one script, or a mix Unicode considers safe (Latin with Han and
//! Kana, say: UTS #39's "moderately restrictive" level), contain a letter or a digit, and not
//! start with `.` or `-`. Characters that the chat client gives a meaning (`;`, `:`, `#`, `@`,
//! white space) are never part of a name.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;
use unicode_security::{GeneralSecurityProfile, RestrictionLevel, RestrictionLevelDetection};

use crate::{Error, Result};

/// Limits on names, configurable in `[accounts]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NameRules {
    /// The longest name accepted, in characters (Unicode scalar values, after NFC).
    pub max_len: usize,
}

impl Default for NameRules {
    fn default() -> Self {
        NameRules { max_len: 32 }
    }
}

impl NameRules {
    /// Checks `name` and returns its stored form (NFC), or an
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) error that says what is wrong. `what` is
    /// "user name" or "group name", for the message.
    pub fn validate(&self, what: &str, name: &str) -> Result<String> {
        let normalized: String = name.nfc().collect();
        let len = normalized.chars().count();
        if len == 0 {
            return Err(Error::invalid_input(format!("{what} must not be empty")));
        }
        if len > self.max_len {
            return Err(Error::invalid_input(format!(
                "{what} {name:?} is {len} characters long; the limit is {}",
                self.max_len
            )));
        }
        if let Some(bad) = normalized.chars().find(|c| !is_name_char(*c)) {
            return Err(Error::invalid_input(format!(
                "{what} {name:?} contains {bad:?} (U+{:04X}); use letters, digits, '_', '-' or \
                 '.' (letters and digits of the scripts Unicode recommends for names; \
                 full-width, mathematical and other look-alike forms are not)",
                u32::from(bad)
            )));
        }
        if !normalized.chars().any(char::is_alphanumeric) {
            return Err(Error::invalid_input(format!(
                "{what} {name:?} has no letter or digit"
            )));
        }
        if normalized.starts_with(['.', '-']) {
            return Err(Error::invalid_input(format!(
                "{what} {name:?} starts with {:?}; start with a letter, a digit or '_'",
                normalized.chars().next().unwrap_or('.')
            )));
        }
        if normalized.detect_restriction_level() > RestrictionLevel::ModeratelyRestrictive {
            return Err(Error::invalid_input(format!(
                "{what} {name:?} mixes scripts in a way that lets it pass for another name; \
                 write it in one script"
            )));
        }
        Ok(normalized)
    }
}

/// Whether `c` may be part of a name: a letter or digit Unicode recommends for identifiers, or
/// `_`, `-`, `.`.
fn is_name_char(c: char) -> bool {
    matches!(c, '_' | '-' | '.') || (c.is_alphanumeric() && c.identifier_allowed())
}

/// The canonical form of a name: NFC, then Unicode lower case. Two names are the same name when
/// their canonical forms are equal; look-ups and prefix search compare canonical forms.
pub fn canonical_name(name: &str) -> String {
    name.nfc().collect::<String>().to_lowercase()
}

/// The confusable skeleton of a name (UTS #39) of its NFKC form, in lower case: two names look
/// alike when their skeletons are equal, and a store takes only the first of them. The skeleton
/// comes before the lower case, so that `I` (capital i) and `l` still count as alike. It is a
/// key, not something to show.
pub fn name_skeleton(name: &str) -> String {
    let compatible: String = name.nfkc().collect();
    unicode_security::skeleton(&compatible)
        .collect::<String>()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_letters_of_any_script() {
        let rules = NameRules::default();
        for ok in ["alice", "Zoë", "李雷", "user_1.x-y", "Ωμέγα"] {
            assert!(rules.validate("user name", ok).is_ok(), "{ok:?} rejected");
        }
    }

    #[test]
    fn rejects_empty_long_and_syntax_characters() {
        let rules = NameRules { max_len: 5 };
        for bad in ["", "toolong", "a b", "a;b", "#g", "a:b", "x\u{0}", "@me"] {
            let err = rules.validate("user name", bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn look_alike_forms_and_punctuation_only_names_are_refused() {
        let rules = NameRules::default();
        for bad in [
            "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", // fullwidth "alice"
            "\u{430}lice",                              // Cyrillic a, Latin lice
            "\u{1d41a}lice",                            // mathematical bold a
            ".",
            "..",
            "-",
            "_",
            ".alice",
            "-bob",
        ] {
            let err = rules.validate("user name", bad).expect_err(bad);
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
        for ok in [
            "a.b",
            "_bot",
            "bob-2",
            "user_1.x-y",
            "李雷",
            "Ωμέγα",
            "山田taro",
        ] {
            assert!(rules.validate("user name", ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn look_alike_names_share_a_skeleton_and_different_ones_do_not() {
        // All-Cyrillic "аррӏе" passes the script rules, but looks like "apple".
        assert_eq!(
            name_skeleton("\u{430}\u{440}\u{440}\u{4cf}\u{435}"),
            name_skeleton("apple")
        );
        assert_eq!(name_skeleton("paul1"), name_skeleton("paull"));
        assert_eq!(
            name_skeleton("pauI1"),
            name_skeleton("paull"),
            "capital i and l"
        );
        assert_eq!(name_skeleton("Alice"), name_skeleton("alice"));
        assert_ne!(name_skeleton("alice"), name_skeleton("alina"));
        assert_ne!(name_skeleton("zoë"), name_skeleton("zoe"));
    }

    #[test]
    fn canonical_form_folds_case_and_normalisation() {
        assert_eq!(canonical_name("ZOË"), canonical_name("zoe\u{308}"));
        assert_ne!(canonical_name("zoe"), canonical_name("zoë"));
    }
}
