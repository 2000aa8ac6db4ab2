//! Groups written by the version before group access control (a `group:{id}` hash without
//! `access` or `history`, members without `member_info`) read as that version meant them: an
//! open group with its full history, its `owner` the owner and everyone else a member since 1,
//! and every operation of the new contract works on them.

use cim_adapter_redis::{RedisAccountStore, RedisConfig};
use cim_backend_fixtures::redis::redis;
use cim_core::{
    AccountStore, ErrorKind, GroupAccess, GroupHistory, GroupId, Membership, NameRules, NewUser,
    Role, Seq, User, UserId,
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

/// Writes group 1, `crew`, owned by `owner` with `members` too, the way the previous version's
/// create_group and add_member scripts did.
async fn write_legacy_group(url: &str, prefix: &str, owner: UserId, members: &[UserId]) {
    let client = redis::Client::open(url).expect("a redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
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
