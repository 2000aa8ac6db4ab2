//! Users, groups and password hashes.

use std::fmt;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::{GroupId, NameRules, Timestamp, UserId, canonical_name};
use crate::{Error, Result};

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

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's id.
    pub id: GroupId,
    /// The group's name (unique, same rules as user names).
    pub name: String,
    /// The user who created the group.
    pub owner: UserId,
    /// When the group was created.
    pub created_at: Timestamp,
}

/// A validated new account: the name checked against [`NameRules`], the password already hashed.
///
/// The only way to build one is [`NewUser::new`], so a store can never be handed a plain password.
#[derive(Clone)]
pub struct NewUser {
    name: String,
    canonical: String,
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
            name,
            password_hash,
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

/// A validated new group.
#[derive(Debug, Clone)]
pub struct NewGroup {
    name: String,
    canonical: String,
    owner: UserId,
}

impl NewGroup {
    /// Validates the group `name`; `owner` becomes the group's first member.
    pub fn new(name: &str, owner: UserId, rules: &NameRules) -> Result<Self> {
        let name = rules.validate("group name", name)?;
        Ok(NewGroup {
            canonical: canonical_name(&name),
            name,
            owner,
        })
    }

    /// The name to store and show (NFC).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The canonical name, the uniqueness key.
    pub fn canonical_name(&self) -> &str {
        &self.canonical
    }

    /// The creator, and first member.
    pub fn owner(&self) -> UserId {
        self.owner
    }
}

/// A password hash in PHC string form (`$argon2id$v=19$...`): salted and deliberately slow.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// The longest password accepted, in bytes (hashing is linear in it; this bounds the cost of
    /// a hostile request).
    pub const MAX_PASSWORD_LEN: usize = 1024;

    /// Hashes `password` with argon2id and a fresh random salt, on a blocking thread.
    pub async fn hash(password: &str) -> Result<Self> {
        if password.is_empty() {
            return Err(Error::invalid_input("password must not be empty"));
        }
        if password.len() > Self::MAX_PASSWORD_LEN {
            return Err(Error::invalid_input(format!(
                "password is longer than {} bytes",
                Self::MAX_PASSWORD_LEN
            )));
        }
        let password = password.to_owned();
        on_hashing_thread("hashing", move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| PasswordHash(hash.to_string()))
                .map_err(|e| Error::internal(format!("hashing the password failed: {e}")))
        })
        .await
    }

    /// Rebuilds a hash read back from storage; fails if `phc` is not a PHC string.
    pub fn from_phc(phc: impl Into<String>) -> Result<Self> {
        let phc = phc.into();
        argon2::password_hash::PasswordHash::new(&phc)
            .map_err(|e| Error::internal(format!("stored password hash is malformed: {e}")))?;
        Ok(PasswordHash(phc))
    }

    /// The PHC string, for storage.
    pub fn as_phc(&self) -> &str {
        &self.0
    }

    /// Whether `password` matches, checked on a blocking thread.
    pub async fn verify(&self, password: &str) -> Result<bool> {
        if password.len() > Self::MAX_PASSWORD_LEN {
            return Ok(false);
        }
        let phc = self.0.clone();
        let password = password.to_owned();
        on_hashing_thread("verifying", move || {
            let parsed = argon2::password_hash::PasswordHash::new(&phc)
                .map_err(|e| Error::internal(format!("stored password hash is malformed: {e}")))?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }
}

/// Runs an argon2 computation on a blocking thread, at most one per core at a time.
///
/// Each argon2id computation takes one core for tens of milliseconds and 19 MiB of memory. Run
/// unbounded on tokio's blocking pool (up to 512 threads), a burst of logins made every one of
/// them slower and took gigabytes: 200 logins in flight held about 4 GB in the route. Queued
/// behind one permit per core, the same burst runs at the same total speed with a few dozen MiB.
async fn on_hashing_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    let permits = PERMITS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(1, |cores| cores.get()))
    });
    // Never closed, so acquiring cannot fail; the error path is for completeness.
    let _permit = permits
        .acquire()
        .await
        .map_err(|e| Error::internal(format!("the password {what} queue is closed: {e}")))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("the password {what} task died: {e}")))?
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_verifications_queues_and_every_one_answers_right() {
        let hash = PasswordHash::hash("correct horse").await.expect("hash");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let checks = (0..cores * 3).map(|i| {
            let hash = hash.clone();
            tokio::spawn(async move {
                let password = if i % 2 == 0 { "correct horse" } else { "wrong" };
                (i, hash.verify(password).await.expect("verify"))
            })
        });
        for check in futures::future::join_all(checks).await {
            let (i, matched) = check.expect("task");
            assert_eq!(matched, i % 2 == 0, "check {i}");
        }
    }

    #[tokio::test]
    async fn hash_verifies_the_right_password_only() {
        let hash = PasswordHash::hash("correct horse").await.expect("hash");
        assert!(hash.as_phc().starts_with("$argon2id$"));
        assert!(hash.verify("correct horse").await.expect("verify"));
        assert!(!hash.verify("wrong horse").await.expect("verify"));
        let again = PasswordHash::hash("correct horse").await.expect("hash");
        assert_ne!(hash, again, "salts must differ");
        assert_eq!(format!("{hash:?}"), "PasswordHash(<redacted>)");
    }

    #[tokio::test]
    async fn new_user_validates_name_and_password() {
        let rules = NameRules::default();
        assert!(NewUser::new("a b", "pw", &rules).await.is_err());
        assert!(NewUser::new("alice", "", &rules).await.is_err());
        let user = NewUser::new("Alice", "pw", &rules).await.expect("valid");
        assert_eq!(user.name(), "Alice");
        assert_eq!(user.canonical_name(), "alice");
    }
}
