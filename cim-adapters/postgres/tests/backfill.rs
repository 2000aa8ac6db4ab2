//! Upgrading a schema whose rows predate a column that SQL cannot fill: the store computes the
//! values in Rust when it opens, after migrating. Here the name skeletons of migration 0008:
//! rows written by the schema before it get theirs, the first of two old look-alikes keeps it,
//! and from then on a new look-alike is refused. Runs against a real server (started here, or
//! `CIM_TEST_POSTGRES_URL`), in a schema of its own that it drops at the end.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use cim_adapter_postgres::{PostgresConfig, PostgresStore};
use cim_core::{AccountStore, ErrorKind, NameRules, NewGroup, NewUser, UserId, name_skeleton};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};

/// The last migration before names had skeletons.
const BEFORE_SKELETONS: i64 = 7;

/// A namespace no other run uses, even on a shared server.
fn fresh_namespace() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("backfill_{}_{nanos}", std::process::id())
}

/// A connection working in `schema`, as the store's are.
async fn connect_in(url: &str, schema: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url)
        .expect("the fixture's url parses")
        .options([("search_path", format!("\"{schema}\""))]);
    PgConnection::connect_with(&options)
        .await
        .expect("connects")
}

/// Inserts a user as the schema before migration 0008 had it: no skeleton.
async fn old_user(conn: &mut PgConnection, name: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO users (name, canonical, password_hash, created_at) \
         VALUES ($1, $1, '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA', 0) RETURNING id",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .expect("inserts an old user")
}

/// Inserts a group as the schema before migration 0008 had it: no skeleton.
async fn old_group(conn: &mut PgConnection, name: &str, owner: i64) {
    sqlx::query(
        "INSERT INTO chat_groups (name, canonical, owner, created_at) VALUES ($1, $1, $2, 0)",
    )
    .bind(name)
    .bind(owner)
    .execute(conn)
    .await
    .expect("inserts an old group");
}

/// The users' stored skeletons, by id.
const USER_SKELETONS: &str = "SELECT skeleton FROM users ORDER BY id";
/// The groups' stored skeletons, by id.
const GROUP_SKELETONS: &str = "SELECT skeleton FROM chat_groups ORDER BY id";

async fn skeletons(conn: &mut PgConnection, select: &'static str) -> Vec<Option<String>> {
    sqlx::query_scalar(select)
        .fetch_all(conn)
        .await
        .expect("reads skeletons")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_names_get_skeletons_at_start_and_a_new_look_alike_of_them_is_taken() {
    let Some(target) = tokio::task::spawn_blocking(cim_backend_fixtures::postgres::postgres)
        .await
        .expect("the fixture task runs")
    else {
        return;
    };
    let url = target.address();
    let namespace = fresh_namespace();
    let mut admin = PgConnection::connect(&url).await.expect("connects");
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA \"{namespace}\""
        )))
        .await
        .expect("creates the schema");
    // The schema as a cim from before skeletons left it, with two pairs of look-alikes.
    let mut old = connect_in(&url, &namespace).await;
    sqlx::migrate!("./migrations")
        .run_to(BEFORE_SKELETONS, &mut old)
        .await
        .expect("migrates up to the one before skeletons");
    let paull = old_user(&mut old, "paull").await;
    old_user(&mut old, "paul1").await;
    old_group(&mut old, "hall1", paull).await;
    old_group(&mut old, "hal11", paull).await;

    let config = PostgresConfig {
        pool_size: 2,
        ..PostgresConfig::new(url.as_str())
    };
    let store = PostgresStore::connect(&config, &namespace)
        .await
        .expect("opens the old schema, migrating and backfilling it");

    assert_eq!(
        skeletons(&mut old, USER_SKELETONS).await,
        [Some(name_skeleton("paull")), None],
        "the first of two old look-alikes gets the skeleton, the later keeps none"
    );
    assert_eq!(
        skeletons(&mut old, GROUP_SKELETONS).await,
        [Some(name_skeleton("hall1")), None],
    );
    let rules = NameRules::default();
    let look_alike = NewUser::new("pau1l", "a good password", &rules)
        .await
        .expect("a valid name");
    let err = store
        .create_user(look_alike)
        .await
        .expect_err("pau1l looks like paull");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let look_alike = NewGroup::new(
        "ha1ll",
        UserId(u64::try_from(paull).expect("ids are positive")),
        &rules,
    )
    .expect("valid");
    let err = store
        .create_group(look_alike)
        .await
        .expect_err("ha1ll looks like hall1");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let kept = store.user_by_name("paul1").await.expect("user_by_name");
    assert!(kept.is_some(), "the later look-alike keeps its account");
    store.close().await;

    let again = PostgresStore::connect(&config, &namespace)
        .await
        .expect("a second start finds the look-alike again and only warns");
    assert_eq!(
        skeletons(&mut old, USER_SKELETONS).await,
        [Some(name_skeleton("paull")), None],
    );
    again.close().await;
    old.close().await.expect("closes");
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{namespace}\" CASCADE"
        )))
        .await
        .expect("drops the schema");
    admin.close().await.expect("closes");
    drop(target);
}
