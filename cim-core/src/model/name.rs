//! Rules for user and group names, and the canonical form that makes them unique.
//!
//! Names are Unicode: any letter or digit of any script, plus `_`, `-` and `.`. They are stored as
//! typed (NFC-normalised) and shown that way, but uniqueness and prefix search use the canonical
//! form, [`canonical_name`]: NFC, then lower case. So `Zoë`, `ZOË` and `zoe\u{308}` are one name,
//! while `zoe` is another. Characters that the chat client gives a meaning (`;`, `:`, `#`, `@`,
//! white space) are never part of a name.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

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
        if let Some(bad) = normalized
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(Error::invalid_input(format!(
                "{what} {name:?} contains {bad:?}; use letters, digits, '_', '-' or '.'"
            )));
        }
        Ok(normalized)
    }
}

/// The canonical form of a name: NFC, then Unicode lower case. Two names are the same name when
/// their canonical forms are equal; prefix search compares canonical forms.
pub fn canonical_name(name: &str) -> String {
    name.nfc().collect::<String>().to_lowercase()
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
    fn canonical_form_folds_case_and_normalisation() {
        assert_eq!(canonical_name("ZOË"), canonical_name("zoe\u{308}"));
        assert_ne!(canonical_name("zoe"), canonical_name("zoë"));
    }
}
