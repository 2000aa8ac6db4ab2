//! Users: the account as stored, and a new one to create.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{NameRules, PasswordHash, Timestamp, UserId, canonical_name, name_skeleton};
use crate::Result;

/// A user account as stored (without its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// The name as the user typed it (NFC).
    pub name: String,
    /// When the account was created.
    pub created_at: Timestamp,
}

/// A validated new account: the name checked against [`NameRules`], the password already hashed.
///
/// The only way to build one is [`NewUser::new`], so a store can never be handed a plain password.
#[derive(Clone)]
pub struct NewUser {
    name: String,
    canonical: String,
    skeleton: String,
    password_hash: PasswordHash,
}

impl NewUser {
    /// Validates `name` and `password` and hashes the password (argon2id, on a blocking thread:
    /// it takes tens of milliseconds on purpose).
    pub async fn new(name: &str, password: &str, rules: &NameRules) -> Result<Self> {
        let name = rules.validate("user name", name)?;
        let password_hash = PasswordHash::hash(password).await?;
        Ok(NewUser {
            canonical: canonical_name(&name),
            skeleton: name_skeleton(&name),
            name,
            password_hash,
        })
    }

    /// Validates `name` for an account without a password ([`PasswordHash::none`]): one that
    /// an application's token created, which only such a token logs in.
    pub fn without_password(name: &str, rules: &NameRules) -> Result<Self> {
        let name = rules.validate("user name", name)?;
        Ok(NewUser {
            canonical: canonical_name(&name),
            skeleton: name_skeleton(&name),
            name,
            password_hash: PasswordHash::none(),
        })
    }

    /// The name to store and show (NFC).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The canonical name, the uniqueness key (see [`canonical_name`]).
    pub fn canonical_name(&self) -> &str {
        &self.canonical
    }

    /// The confusable skeleton, the second uniqueness key (see [`name_skeleton`]): no two
    /// users have names that look alike.
    pub fn skeleton(&self) -> &str {
        &self.skeleton
    }

    /// The password hash to store.
    pub fn password_hash(&self) -> &PasswordHash {
        &self.password_hash
    }
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_user_validates_name_and_password() {
        let rules = NameRules::default();
        assert!(NewUser::new("a b", "pw", &rules).await.is_err());
        assert!(NewUser::new("alice", "", &rules).await.is_err());
        let user = NewUser::new("Alice", "pw", &rules).await.expect("valid");
        assert_eq!(user.name(), "Alice");
        assert_eq!(user.canonical_name(), "alice");
    }

    #[tokio::test]
    async fn an_account_without_a_password_matches_no_password() {
        let rules = NameRules::default();
        assert!(NewUser::without_password("a b", &rules).is_err());
        let user = NewUser::without_password("Bob", &rules).expect("valid");
        assert!(user.password_hash().is_none());
        let stored = PasswordHash::from_phc(user.password_hash().as_phc()).expect("a PHC string");
        assert!(stored.is_none(), "read back from storage, it is still none");
        for password in ["", "x", "$cim-no-password"] {
            assert!(
                !stored.verify(password).await.expect("verify"),
                "{password}"
            );
        }
    }
}
