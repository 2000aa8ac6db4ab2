//! The `[auth]` section: the secret that signs login tokens.
//!
//! Every route and server of a deployment must share it: the route signs the token at login,
//! the server checks it when the client connects. `cim standalone` needs no configuration: it
//! generates a secret on first start and keeps it in its data directory, so tokens survive a
//! restart.

use std::path::{Path, PathBuf};

use cim_core::token::TokenKey;
use cim_core::{Error, Result, SecretString};
use figment::Figment;
use serde::Deserialize;

/// The `[auth]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The shared secret itself (at least 32 bytes; prefer `CIM_AUTH__SECRET` to a file).
    pub secret: Option<SecretString>,
    /// A file holding the secret (its content, trimmed).
    pub secret_file: Option<PathBuf>,
}

/// The name of the secret file `cim standalone` keeps in its data directory.
const STANDALONE_SECRET_FILE: &str = "token.secret";

impl AuthConfig {
    /// The `[auth]` section of `figment`.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        if !figment.contains("auth") {
            return Ok(AuthConfig::default());
        }
        figment
            .extract_inner("auth")
            .map_err(|e| Error::config(format!("invalid [auth] section: {e}")))
    }

    /// The configured key, or a `Config` error saying how to configure one.
    pub fn key(&self) -> Result<TokenKey> {
        match (&self.secret, &self.secret_file) {
            (Some(secret), _) => TokenKey::new(secret.expose().as_bytes()),
            (None, Some(path)) => TokenKey::new(read_secret(path)?.as_bytes()),
            (None, None) => Err(Error::config(
                "no token secret: set [auth] secret (or CIM_AUTH__SECRET) or [auth] secret_file \
                 to the same value on every route and server",
            )),
        }
    }

    /// The configured key, or one kept in `data_dir` (generated on first use).
    pub fn key_or_generate(&self, data_dir: &Path) -> Result<TokenKey> {
        if self.secret.is_some() || self.secret_file.is_some() {
            return self.key();
        }
        let path = data_dir.join(STANDALONE_SECRET_FILE);
        if !path.exists() {
            write_private(&path, TokenKey::generate_secret().as_bytes()).map_err(|e| {
                Error::config(format!(
                    "cannot write the token secret to {}",
                    path.display()
                ))
                .with_source(e)
            })?;
        }
        TokenKey::new(read_secret(&path)?.as_bytes())
    }
}

fn read_secret(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            Error::config(format!(
                "cannot read the token secret from {}",
                path.display()
            ))
            .with_source(e)
        })
}

/// Writes a new file that only its owner may read (0600) from the moment it exists.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_generates_a_secret_once_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = AuthConfig::default();
        let first = auth.key_or_generate(dir.path()).expect("generated");
        let (token, _) = first
            .issue(cim_core::UserId(1), "a", std::time::Duration::from_secs(60))
            .expect("issue");
        let again = auth.key_or_generate(dir.path()).expect("read back");
        assert!(
            again.verify(&token).is_ok(),
            "the kept secret must be the same"
        );
    }

    #[test]
    fn a_missing_secret_outside_standalone_is_a_config_error() {
        let err = AuthConfig::default().key().expect_err("no secret");
        assert_eq!(err.kind(), cim_core::ErrorKind::Config);
        assert!(err.message().contains("CIM_AUTH__SECRET"), "{err}");
    }
}
