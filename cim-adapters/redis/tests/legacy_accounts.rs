//! Data of earlier versions keeps working:
//!
//! - groups written by the version before group access control (a `group:{id}` hash without
//!   `access` or `history`, members without `member_info`) read as that version meant them: an
//!   open group with its full history, its `owner` the owner and everyone else a member since 1,
//!   and every operation of the new contract works on them;
//! - users and groups written by the version before name skeletons (no `user_skeletons` or
//!   `group_skeletons` entry) get their skeleton when a store is built, so a name that looks like
//!   one of theirs is taken; of two older look-alikes the earlier keeps it.

use cim_adapter_redis::{RedisAccountStore, RedisConfig};
use cim_backend_fixtures::redis::redis;
use cim_core::{
    AccountStore, ErrorKind, GroupAccess, GroupHistory, GroupId, Membership, NameRules, NewGroup,
    NewUser, Role, Seq, User, UserId, canonical_name, name_skeleton,
};

/// Zero-padded as the store keeps ids in sorted sets.
fn padded(id: u64) -> String {
    format!("{id:020}")
}

async fn create_user(store: &RedisAccountStore, name: &str) -> User {
    let new = NewUser::new(name, "correct horse battery", &NameRules::default())
        .await
        .expect("a valid user");
    store.create_user(new).await.expect("create_user")
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("a redis url");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

async fn connect_store(url: &str, namespace: &str) -> RedisAccountStore {
    RedisAccountStore::connect(&RedisConfig::new(url), namespace)
        .await
        .expect("connect")
}

/// Writes group 1, `Crew`, owned by `owner` with `members` too, the way the version before
/// roles wrote it with its create_group and add_member scripts.
async fn write_legacy_group(url: &str, prefix: &str, owner: UserId, members: &[UserId]) {
    let mut conn = connect(url).await;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg(format!("{prefix}next_group"))
        .arg(1)
        .cmd("HSET")
        .arg(format!("{prefix}group:1"))
        .arg(&[
            ("name", "Crew".to_string()),
            ("owner", owner.0.to_string()),
            ("created", "1700000000000".to_string()),
        ])
        .cmd("HSET")
        .arg(format!("{prefix}group_names"))
        .arg("crew")
        .arg(1);
    for user in std::iter::once(&owner).chain(members) {
        pipe.cmd("ZADD")
            .arg(format!("{prefix}members:1"))
            .arg(0)
            .arg(padded(user.0))
            .cmd("ZADD")
            .arg(format!("{prefix}groups_of:{}", user.0))
            .arg(0)
            .arg(padded(1));
    }
    pipe.query_async::<()>(&mut conn)
        .await
        .expect("write the legacy group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_written_before_roles_reads_open_with_its_owner_and_plain_members() {
    let Some(redis) = redis() else {
        return;
    };
    let namespace = format!("legacy_accounts_{}", std::process::id());
    let store = RedisAccountStore::connect(&RedisConfig::new(redis.address()), &namespace)
        .await
        .expect("connect");
    let olga = create_user(&store, "olga").await;
    let bob = create_user(&store, "bob").await;
    write_legacy_group(
        &redis.address(),
        &format!("{namespace}:acct:"),
        olga.id,
        &[bob.id],
    )
    .await;
    let crew = GroupId(1);

    let group = store.group(crew).await.expect("group").expect("stored");
    assert_eq!(
        (group.owner, group.access, group.history),
        (olga.id, GroupAccess::Open, GroupHistory::Full),
        "missing settings read as open with full history"
    );
    let by_name = store.group_by_name("CREW").await.expect("group_by_name");
    assert_eq!(by_name.as_ref(), Some(&group));
    let groups = store.user_groups(bob.id).await.expect("user_groups");
    assert_eq!(groups, vec![group]);

    let member = |user: &User, role| Membership {
        user: user.id,
        role,
        since: Seq(1),
    };
    let members = store.members(crew, None, 10).await.expect("members");
    assert_eq!(
        members.items,
        vec![member(&olga, Role::Owner), member(&bob, Role::Member)],
        "the owner field names the owner; everyone else is a member since 1"
    );
    let found = store.membership(crew, bob.id).await.expect("membership");
    assert_eq!(found, Some(member(&bob, Role::Member)));

    store
        .set_role(crew, bob.id, Role::Admin)
        .await
        .expect("set_role");
    let found = store.membership(crew, bob.id).await.expect("membership");
    assert_eq!(found, Some(member(&bob, Role::Admin)), "since stays 1");
    for (outcome, what) in [
        (store.remove_member(crew, olga.id).await, "remove the owner"),
        (store.ban(crew, olga.id).await, "ban the owner"),
    ] {
        let error = outcome.expect_err(what);
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{what}: {error}");
    }

    assert!(store.ban(crew, bob.id).await.expect("ban"));
    assert!(!store.is_member(crew, bob.id).await.expect("is_member"));
    let error = store
        .add_member(crew, bob.id, Seq(7))
        .await
        .expect_err("add a banned user");
    assert_eq!(error.kind(), ErrorKind::PermissionDenied, "{error}");
}

/// The old data of one namespace, written as the version before skeletons wrote it: no
/// `user_skeletons` or `group_skeletons` entries.
struct LegacyWriter {
    conn: redis::aio::MultiplexedConnection,
    prefix: String,
    /// One password hash for every user: hashing is slow on purpose.
    phc: String,
}

impl LegacyWriter {
    async fn new(url: &str, namespace: &str) -> LegacyWriter {
        let new = NewUser::new("anyone", "correct horse battery", &NameRules::default())
            .await
            .expect("a valid user");
        LegacyWriter {
            conn: connect(url).await,
            prefix: format!("{namespace}:acct:"),
            phc: new.password_hash().as_phc().to_string(),
        }
    }

    /// A user named `name`, as the old create_user script wrote it.
    async fn user(&mut self, name: &str) -> UserId {
        let prefix = &self.prefix;
        let id: u64 = redis::cmd("INCR")
            .arg(format!("{prefix}next_user"))
            .query_async(&mut self.conn)
            .await
            .expect("a user id");
        let canonical = canonical_name(name);
        redis::pipe()
            .atomic()
            .hset_multiple(
                format!("{prefix}user:{id}"),
                &[
                    ("name", name),
                    ("created", "1700000000000"),
                    ("phc", &self.phc),
                ],
            )
            .hset(format!("{prefix}user_names"), &canonical, id)
            .zadd(format!("{prefix}user_index"), &canonical, 0)
            .query_async::<()>(&mut self.conn)
            .await
            .expect("write the user");
        UserId(id)
    }

    /// A group named `name` with `owner` its only member, as the old create_group script wrote
    /// it.
    async fn group(&mut self, name: &str, owner: UserId) -> GroupId {
        let prefix = &self.prefix;
        let id: u64 = redis::cmd("INCR")
            .arg(format!("{prefix}next_group"))
            .query_async(&mut self.conn)
            .await
            .expect("a group id");
        redis::pipe()
            .atomic()
            .hset_multiple(
                format!("{prefix}group:{id}"),
                &[
                    ("name", name.to_string()),
                    ("owner", owner.0.to_string()),
                    ("created", "1700000000000".to_string()),
                    ("access", "open".to_string()),
                    ("history", "full".to_string()),
                ],
            )
            .hset(format!("{prefix}group_names"), canonical_name(name), id)
            .zadd(format!("{prefix}members:{id}"), padded(owner.0), 0)
            .hset(
                format!("{prefix}member_info:{id}"),
                padded(owner.0),
                "owner:1",
            )
            .zadd(format!("{prefix}groups_of:{}", owner.0), padded(id), 0)
            .query_async::<()>(&mut self.conn)
            .await
            .expect("write the group");
        GroupId(id)
    }

    /// Which id holds `name`'s skeleton in the `{kind}_skeletons` hash (`user` or `group`).
    async fn skeleton_holder(&mut self, kind: &str, name: &str) -> Option<u64> {
        redis::cmd("HGET")
            .arg(format!("{}{kind}_skeletons", self.prefix))
            .arg(name_skeleton(name))
            .query_async(&mut self.conn)
            .await
            .expect("read a skeleton")
    }
}

async fn assert_taken_user(store: &RedisAccountStore, name: &str) {
    let new = NewUser::new(name, "correct horse battery", &NameRules::default())
        .await
        .expect("a valid user");
    let error = store.create_user(new).await.expect_err(name);
    assert_eq!(error.kind(), ErrorKind::AlreadyExists, "{name}: {error}");
}

async fn assert_taken_group(store: &RedisAccountStore, name: &str, owner: UserId) {
    let new = NewGroup::new(name, owner, &NameRules::default()).expect("a valid group");
    let error = store.create_group(new).await.expect_err(name);
    assert_eq!(error.kind(), ErrorKind::AlreadyExists, "{name}: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_written_before_skeletons_get_theirs_when_the_store_is_built() {
    let Some(redis) = redis() else {
        return;
    };
    let (url, namespace) = (
        redis.address(),
        format!("legacy_skeletons_{}", std::process::id()),
    );
    let mut old = LegacyWriter::new(&url, &namespace).await;
    let apple = old.user("apple").await;
    let paull = old.user("paull").await;
    let paul1 = old.user("paul1").await;
    let team = old.group("team1", apple).await;

    let store = connect_store(&url, &namespace).await;

    assert_taken_user(&store, "\u{430}\u{440}\u{440}\u{4cf}\u{435}").await;
    assert_taken_user(&store, "pau1l").await;
    assert_taken_group(&store, "teaml", apple).await;
    assert_eq!(
        old.skeleton_holder("user", "paul1").await,
        Some(paull.0),
        "of two older look-alikes the earlier keeps the skeleton"
    );
    for (name, id) in [("paull", paull), ("paul1", paul1)] {
        let (user, _) = store
            .credentials(name)
            .await
            .expect("credentials")
            .expect("both older look-alikes keep their account");
        assert_eq!(user.id, id, "{name}");
    }
    let group = store.group_by_name("team1").await.expect("group_by_name");
    assert_eq!(group.map(|group| group.id), Some(team));
    create_user(&store, "banana").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_give_older_names_the_same_skeletons() {
    let Some(redis) = redis() else {
        return;
    };
    let (url, namespace) = (
        redis.address(),
        format!("legacy_together_{}", std::process::id()),
    );
    let mut old = LegacyWriter::new(&url, &namespace).await;
    // More than one backfill batch, so that the nodes' batches interleave.
    let mut users = Vec::new();
    for i in 0..1200 {
        let name = format!("user{i}");
        let id = old.user(&name).await;
        users.push((name, id));
    }
    let look_alike = old.user("userl").await;

    let stores = futures::future::join_all((0..4).map(|_| connect_store(&url, &namespace))).await;

    for (name, id) in &users {
        let holder = old.skeleton_holder("user", name).await;
        assert_eq!(holder, Some(id.0), "{name}, whichever node claimed it");
    }
    assert_ne!(
        old.skeleton_holder("user", "userl").await,
        Some(look_alike.0),
        "userl looks like the earlier user1"
    );
    for store in &stores {
        assert_taken_user(store, "user1l").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_an_older_node_writes_after_a_start_gets_its_skeleton_at_the_next_start() {
    let Some(redis) = redis() else {
        return;
    };
    let (url, namespace) = (
        redis.address(),
        format!("legacy_rolling_{}", std::process::id()),
    );
    let first = connect_store(&url, &namespace).await;
    let olga = create_user(&first, "olga").await;

    let mut old = LegacyWriter::new(&url, &namespace).await;
    old.user("paull").await;
    old.group("team1", olga.id).await;
    let second = connect_store(&url, &namespace).await;

    assert_taken_user(&second, "paul1").await;
    assert_taken_group(&second, "teaml", olga.id).await;
    assert_taken_user(&first, "pau1l").await;
}
