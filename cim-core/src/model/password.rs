//! [`PasswordHash`]: argon2id hashes, computed at most one per core at a time, in memory that is
//! allocated once and reused.
//!
//! Each argon2id computation takes one core for tens of milliseconds and 19 MiB of memory on
//! purpose: that is what makes guessing expensive. Two consequences shape this module.
//!
//! - **A queue.** Run unbounded on tokio's blocking pool (up to 512 threads), a burst of logins
//!   made every one of them slower and took gigabytes: 200 logins in flight held about 4 GB.
//!   Queued behind one permit per core, the same burst runs at the same total speed.
//! - **A fixed set of buffers.** A fresh 19 MiB buffer per computation, freed afterwards, is not
//!   given back to the system: glibc raises its mmap threshold after the first large free and
//!   keeps later buffers in per-thread arenas, so the process grew from 16 MiB to 477 MiB after
//!   500 wrong logins and stayed there. Here each permit owns one buffer, allocated on first use
//!   and reused by every computation after it: hashing memory is bounded by cores × 19 MiB.

use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};

use argon2::password_hash::{Output, ParamsString, Salt, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;

use crate::{Error, Result};

/// A password hash in PHC string form (`$argon2id$v=19$...`): salted and deliberately slow.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// The longest password accepted, in bytes (hashing is linear in it; this bounds the cost of
    /// a hostile request).
    pub const MAX_PASSWORD_LEN: usize = 1024;

    /// Hashes `password` with argon2id (the crate's default parameters) and a fresh random
    /// salt, on a blocking thread.
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
        with_memory("hashing", move |memory| {
            let salt = SaltString::generate(&mut OsRng);
            let argon = Argon2::default();
            let output = compute(&argon, password.as_bytes(), salt.as_salt(), None, memory)?;
            let params = ParamsString::try_from(argon.params()).map_err(hash_error)?;
            let phc = argon2::password_hash::PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params,
                salt: Some(salt.as_salt()),
                hash: Some(output),
            };
            Ok(PasswordHash(phc.to_string()))
        })
        .await
    }

    /// The hash of an account that has no password (one created from an application's token):
    /// no password matches it. It is a PHC string of its own algorithm, `$cim-no-password`, so
    /// every backend stores and reads it back like any other hash.
    pub fn none() -> Self {
        PasswordHash(NO_PASSWORD.to_string())
    }

    /// Whether this is the hash of an account without a password ([`PasswordHash::none`]).
    pub fn is_none(&self) -> bool {
        self.0 == NO_PASSWORD
    }

    /// Rebuilds a hash read back from storage; fails if `phc` is not a PHC string.
    pub fn from_phc(phc: impl Into<String>) -> Result<Self> {
        let phc = phc.into();
        argon2::password_hash::PasswordHash::new(&phc).map_err(malformed)?;
        Ok(PasswordHash(phc))
    }

    /// The PHC string, for storage.
    pub fn as_phc(&self) -> &str {
        &self.0
    }

    /// Whether `password` matches, checked on a blocking thread (with the parameters the hash
    /// was made with, which may be other than today's defaults).
    pub async fn verify(&self, password: &str) -> Result<bool> {
        if password.len() > Self::MAX_PASSWORD_LEN || self.is_none() {
            return Ok(false);
        }
        let phc = self.0.clone();
        let password = password.to_owned();
        with_memory("verifying", move |memory| {
            let parsed = argon2::password_hash::PasswordHash::new(&phc).map_err(malformed)?;
            let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
                return Err(Error::internal(
                    "stored password hash has no salt or no hash",
                ));
            };
            let algorithm = Algorithm::try_from(parsed.algorithm).map_err(malformed)?;
            let version = parsed
                .version
                .map(Version::try_from)
                .transpose()
                .map_err(malformed)?
                .unwrap_or_default();
            let params = Params::try_from(&parsed).map_err(malformed)?;
            let argon = Argon2::new(algorithm, version, params);
            let computed = compute(
                &argon,
                password.as_bytes(),
                salt,
                Some(expected.len()),
                memory,
            )?;
            // `Output` compares in constant time.
            Ok(computed == expected)
        })
        .await
    }
}

/// The PHC string of [`PasswordHash::none`].
const NO_PASSWORD: &str = "$cim-no-password";

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// The hash of `password` with `salt`, `output_len` bytes long (the parameters' own length by
/// default), computed in `memory` (grown if these parameters need more than it has).
fn compute(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: Salt<'_>,
    output_len: Option<usize>,
    memory: &mut Vec<Block>,
) -> Result<Output> {
    let mut salt_bytes = [0u8; Salt::MAX_LENGTH];
    let salt = salt.decode_b64(&mut salt_bytes).map_err(malformed)?;
    let needed = argon.params().block_count();
    if memory.len() < needed {
        memory.resize(needed, Block::default());
    }
    let len = output_len
        .or(argon.params().output_len())
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(len, |out| {
        argon
            .hash_password_into_with_memory(password, salt, out, &mut memory[..needed])
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(hash_error)
}

/// The hashing permits and their buffers: one of each per core.
struct Workspaces {
    permits: Semaphore,
    /// Buffers not in use. At most one per permit exists, since only a permit holder takes one.
    idle: Mutex<Vec<Vec<Block>>>,
}

/// Runs `work` on a blocking thread, with one core's permit and that permit's memory.
async fn with_memory<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce(&mut Vec<Block>) -> Result<T> + Send + 'static,
) -> Result<T> {
    static WORKSPACES: OnceLock<Workspaces> = OnceLock::new();
    let workspaces = WORKSPACES.get_or_init(|| Workspaces {
        permits: Semaphore::new(
            std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        ),
        idle: Mutex::new(Vec::new()),
    });
    // Never closed, so acquiring cannot fail; the error path is for completeness.
    let _permit = workspaces
        .permits
        .acquire()
        .await
        .map_err(|e| Error::internal(format!("the password {what} queue is closed: {e}")))?;
    let mut memory = workspaces
        .idle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop()
        .unwrap_or_default();
    let (result, mut memory) = tokio::task::spawn_blocking(move || {
        let result = work(&mut memory);
        (result, memory)
    })
    .await
    .map_err(|e| Error::internal(format!("the password {what} task died: {e}")))?;
    // A hash made with more memory than today's default grew the buffer: give that back.
    let default_blocks = Params::DEFAULT.block_count();
    if memory.len() > default_blocks {
        memory.truncate(default_blocks);
        memory.shrink_to_fit();
    }
    workspaces
        .idle
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(memory);
    result
}

fn malformed(e: impl fmt::Display) -> Error {
    Error::internal(format!("stored password hash is malformed: {e}"))
}

fn hash_error(e: argon2::password_hash::Error) -> Error {
    Error::internal(format!("hashing the password failed: {e}"))
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher;

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
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hash.verify("correct horse").await.expect("verify"));
        assert!(!hash.verify("wrong horse").await.expect("verify"));
        let again = PasswordHash::hash("correct horse").await.expect("hash");
        assert_ne!(hash, again, "salts must differ");
        assert_eq!(format!("{hash:?}"), "PasswordHash(<redacted>)");
    }

    #[tokio::test]
    async fn hashes_made_by_the_argon2_crate_itself_verify_whatever_their_parameters() {
        // Hashes stored before this module reused memory, and hashes made with other costs,
        // must keep working.
        for params in [
            Params::DEFAULT,
            Params::new(8 * 1024, 1, 1, None).expect("params"),
            Params::new(32 * 1024, 1, 1, Some(16)).expect("params"),
        ] {
            let salt = SaltString::generate(&mut OsRng);
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            let phc = argon
                .hash_password(b"correct horse", &salt)
                .expect("the crate hashes")
                .to_string();
            let hash = PasswordHash::from_phc(phc).expect("valid PHC");
            assert!(hash.verify("correct horse").await.expect("verify"));
            assert!(!hash.verify("correct horsE").await.expect("verify"));
        }
        // And ours verify with the crate's own verifier.
        let ours = PasswordHash::hash("correct horse").await.expect("hash");
        let parsed = argon2::password_hash::PasswordHash::new(ours.as_phc()).expect("PHC");
        argon2::PasswordVerifier::verify_password(&Argon2::default(), b"correct horse", &parsed)
            .expect("the crate agrees");
    }

    #[tokio::test]
    async fn a_malformed_stored_hash_is_an_internal_error_not_a_mismatch() {
        assert!(PasswordHash::from_phc("not a hash").is_err());
        let broken = PasswordHash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ".into());
        let err = broken.verify("x").await.expect_err("no hash part");
        assert_eq!(err.kind(), crate::ErrorKind::Internal);
    }
}
