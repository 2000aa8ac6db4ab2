//! The `postgres` backend as a cim node builds it: by name, from a config section, for each of
//! the four traits, against a real server (started here, or `CIM_TEST_POSTGRES_URL`).

use cim_core::registry::{self, BackendOptions};
use cim_core::{AccountStore, MessageStore, MetaStore, SessionStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_builds_from_config_by_name() {
    let Some(target) = tokio::task::spawn_blocking(cim_backend_fixtures::postgres::postgres)
        .await
        .expect("the fixture task runs")
    else {
        return;
    };
    cim_adapter_postgres::link();
    let options = |section: &str| {
        BackendOptions::new(section, "postgres")
            .with_namespace("registry_build")
            .with_ttl(Some(std::time::Duration::from_secs(5)))
            .with_option("url", target.address())
            .with_option("pool_size", 2)
            .with_option("connect_timeout", "2s")
            .with_option("statement_timeout", "5s")
    };

    let meta = registry::build::<dyn MetaStore>(options("meta"))
        .await
        .expect("meta builds");
    let sessions = registry::build::<dyn SessionStore>(options("sessions"))
        .await
        .expect("sessions build");
    let accounts = registry::build::<dyn AccountStore>(options("accounts"))
        .await
        .expect("accounts build");
    let messages = registry::build::<dyn MessageStore>(options("messages"))
        .await
        .expect("messages build");

    assert!(meta.capabilities().watch);
    assert_eq!(sessions.count_online().await.expect("count"), 0);
    assert!(accounts.capabilities().prefix_search);
    assert!(messages.capabilities().durable);
    assert!(meta.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn a_bad_duration_is_a_config_error_naming_the_key() {
    let options = BackendOptions::new("messages", "postgres")
        .with_option("url", "postgres://u@127.0.0.1:1/db")
        .with_option("statement_timeout", "soon");

    let err = registry::build::<dyn MessageStore>(options)
        .await
        .err()
        .expect("bad duration");

    assert_eq!(err.kind(), cim_core::ErrorKind::Config);
    assert!(err.message().contains("statement_timeout"), "{err}");
}
