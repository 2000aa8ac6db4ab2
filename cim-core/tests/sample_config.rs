//! The sample `cim.toml` at the repository root is documentation: it must stay valid, name the
//! defaults, and build a working set of stores.

use std::path::PathBuf;

use cim_core::{CoreConfig, Stores};

fn sample_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cim.toml")
}

#[test]
fn sample_config_states_the_defaults() {
    let sample = CoreConfig::load(Some(&sample_path())).expect("the sample cim.toml parses");
    let defaults = CoreConfig::default();
    assert_eq!(sample.data_dir, defaults.data_dir);
    assert_eq!(sample.namespace, defaults.namespace);
    assert_eq!(sample.names, defaults.names);
    for section in ["meta", "sessions", "accounts", "messages", "balancer"] {
        assert_eq!(
            sample
                .backend_options(section)
                .expect("sample section")
                .backend(),
            defaults
                .backend_options(section)
                .expect("default section")
                .backend(),
            "[{section}] in the sample names another backend than the default"
        );
    }
}

#[tokio::test]
async fn sample_config_builds_every_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = CoreConfig::load(Some(&sample_path())).expect("the sample cim.toml parses");
    config.data_dir = dir.path().to_path_buf();
    let stores = Stores::from_config(&config)
        .await
        .expect("every backend of the sample builds");
    assert_eq!(stores.balancer.name(), "consistent_hash");
    assert!(stores.meta.list().await.expect("list servers").is_empty());
}

#[tokio::test]
async fn unknown_backend_lists_the_registered_ones() {
    let config = CoreConfig::from_toml("[meta]\nbackend = \"nope\"").expect("parses");
    let err = Stores::from_config(&config)
        .await
        .expect_err("an unknown backend must not build");
    assert_eq!(err.kind(), cim_core::ErrorKind::Config);
    assert!(err.message().contains("\"nope\""), "{err}");
    assert!(
        err.message().contains("memory"),
        "registered names missing: {err}"
    );
}

#[tokio::test]
async fn misspelt_backend_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config =
        CoreConfig::from_toml("[messages]\nbackend = \"sqlite\"\nfiel = \"x.db\"").expect("parses");
    config.data_dir = dir.path().to_path_buf();
    let err = Stores::from_config(&config)
        .await
        .expect_err("an unknown key must not build");
    assert_eq!(err.kind(), cim_core::ErrorKind::Config);
    assert!(err.to_string().contains("fiel"), "{err}");
}
