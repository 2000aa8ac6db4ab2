//! Cases for [`cim_core::AccountStore`]: users and groups get ids that are unique also under
//! concurrency; names are unique by their canonical form (NFC, lower case), looked up by it and
//! kept as typed, and of concurrent creates of one name exactly one wins; the store keeps only the
//! password hash and rejects a wrong password and an unknown user alike; prefix search compares
//! canonical forms literally (no wildcard leaks) and pages completely in canonical-name order;
//! a group starts with its owner as member, membership changes report whether they changed
//! anything, and missing groups or users are `NotFound`. What the capabilities do not claim is
//! `Unsupported`.
//!
//! Creating a user hashes a password with argon2 (tens of milliseconds on purpose), so cases
//! create a handful of users each, except the one about concurrent creates.

use std::collections::HashSet;
use std::time::Duration;

use cim_core::{
    AccountCapabilities, AccountStore, ErrorKind, Group, GroupAccess, GroupHistory, GroupId,
    GroupSettings, Membership, NameRules, NewGroup, NewUser, Role, Seq, Timestamp, User, UserId,
};
use futures::StreamExt;

use crate::case::{Case, Harness, boxed};
use crate::support::{Must, all_pages, assert_kind, join_task};

/// The harness every case of this module gets.
type Accounts = Harness<dyn AccountStore>;

/// Every case of this trait, in order.
pub fn cases() -> Vec<Case<dyn AccountStore>> {
    vec![
        Case::always(
            "create_user_then_find_it_by_id_and_by_name_in_any_case",
            |h| boxed(create_user_then_find_it_by_id_and_by_name_in_any_case(h)),
        ),
        Case::always("unknown_user_id_or_name_is_none", |h| {
            boxed(unknown_user_id_or_name_is_none(h))
        }),
        Case::always(
            "a_taken_name_is_already_exists_whatever_the_case_or_normalisation",
            |h| boxed(a_taken_name_is_already_exists_whatever_the_case_or_normalisation(h)),
        ),
        Case::always("a_name_that_looks_like_a_taken_one_is_taken", |h| {
            boxed(a_name_that_looks_like_a_taken_one_is_taken(h))
        }),
        Case::always(
            "concurrent_creates_of_distinct_names_get_distinct_ids",
            |h| boxed(concurrent_creates_of_distinct_names_get_distinct_ids(h)),
        ),
        Case::always("concurrent_creates_of_one_name_let_exactly_one_win", |h| {
            boxed(concurrent_creates_of_one_name_let_exactly_one_win(h))
        }),
        Case::always(
            "verify_credentials_accepts_the_right_password_and_rejects_the_rest_alike",
            |h| boxed(verify_credentials_accepts_the_right_password_and_rejects_the_rest_alike(h)),
        ),
        Case::always("credentials_keep_the_hash_and_never_the_password", |h| {
            boxed(credentials_keep_the_hash_and_never_the_password(h))
        }),
        Case::always(
            "an_account_without_a_password_is_kept_and_never_verifies",
            |h| boxed(an_account_without_a_password_is_kept_and_never_verifies(h)),
        ),
        Case::always(
            "a_revoked_session_stays_revoked_until_its_time_and_others_are_not",
            |h| boxed(a_revoked_session_stays_revoked_until_its_time_and_others_are_not(h)),
        ),
        Case::always("session_ids_outside_their_length_are_invalid_input", |h| {
            boxed(session_ids_outside_their_length_are_invalid_input(h))
        }),
        Case::when(
            "search_users_pages_matches_completely_in_canonical_name_order",
            |caps: &AccountCapabilities| caps.prefix_search,
            |h| boxed(search_users_pages_matches_completely_in_canonical_name_order(h)),
        ),
        Case::when(
            "search_users_compares_unicode_prefixes_canonically",
            |caps: &AccountCapabilities| caps.prefix_search,
            |h| boxed(search_users_compares_unicode_prefixes_canonically(h)),
        ),
        Case::when(
            "search_users_takes_wildcard_characters_literally",
            |caps: &AccountCapabilities| caps.prefix_search,
            |h| boxed(search_users_takes_wildcard_characters_literally(h)),
        ),
        Case::when(
            "search_users_with_a_limit_of_zero_is_invalid_input",
            |caps: &AccountCapabilities| caps.prefix_search,
            |h| boxed(search_users_with_a_limit_of_zero_is_invalid_input(h)),
        ),
        Case::when(
            "search_users_is_unsupported_when_not_claimed",
            |caps: &AccountCapabilities| !caps.prefix_search,
            |h| boxed(search_users_is_unsupported_when_not_claimed(h)),
        ),
        Case::when(
            "create_group_makes_the_owner_its_first_member",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(create_group_makes_the_owner_its_first_member(h)),
        ),
        Case::when(
            "a_taken_group_name_is_already_exists_whatever_the_case_or_normalisation",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(a_taken_group_name_is_already_exists_whatever_the_case_or_normalisation(h)),
        ),
        Case::when(
            "create_group_with_a_missing_owner_is_not_found",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(create_group_with_a_missing_owner_is_not_found(h)),
        ),
        Case::when(
            "unknown_group_id_or_name_is_none",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(unknown_group_id_or_name_is_none(h)),
        ),
        Case::when(
            "add_and_remove_member_say_whether_they_changed_anything",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(add_and_remove_member_say_whether_they_changed_anything(h)),
        ),
        Case::when(
            "membership_operations_on_a_missing_group_or_user_are_not_found",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(membership_operations_on_a_missing_group_or_user_are_not_found(h)),
        ),
        Case::when(
            "members_are_paged_completely_by_user_id",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(members_are_paged_completely_by_user_id(h)),
        ),
        Case::when(
            "is_member_follows_joins_and_leaves",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(is_member_follows_joins_and_leaves(h)),
        ),
        Case::when(
            "is_member_is_false_for_a_missing_group_or_user_and_for_the_all_group",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(is_member_is_false_for_a_missing_group_or_user_and_for_the_all_group(h)),
        ),
        Case::when(
            "group_settings_are_kept_and_changed_by_update_group",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(group_settings_are_kept_and_changed_by_update_group(h)),
        ),
        Case::when(
            "membership_tells_each_members_role_and_since",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(membership_tells_each_members_role_and_since(h)),
        ),
        Case::when(
            "set_role_makes_admins_and_members_but_never_another_owner",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(set_role_makes_admins_and_members_but_never_another_owner(h)),
        ),
        Case::when(
            "the_owner_can_be_neither_removed_nor_banned",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(the_owner_can_be_neither_removed_nor_banned(h)),
        ),
        Case::when(
            "a_banned_user_is_removed_and_cannot_be_added_until_unbanned",
            |caps: &AccountCapabilities| caps.groups,
            |h| {
                boxed(a_banned_user_is_removed_and_cannot_be_added_until_unbanned(
                    h,
                ))
            },
        ),
        Case::when(
            "a_ban_racing_an_add_never_leaves_a_banned_member",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(a_ban_racing_an_add_never_leaves_a_banned_member(h)),
        ),
        Case::when(
            "user_groups_are_listed_by_group_id",
            |caps: &AccountCapabilities| caps.groups,
            |h| boxed(user_groups_are_listed_by_group_id(h)),
        ),
        Case::when(
            "group_operations_are_unsupported_when_not_claimed",
            |caps: &AccountCapabilities| !caps.groups,
            |h| boxed(group_operations_are_unsupported_when_not_claimed(h)),
        ),
    ]
}

/// The password of every user a case creates unless it says otherwise.
const PASSWORD: &str = "conformance password";

/// How many password hashes are computed at once when a case needs many users: argon2 takes
/// memory as well as time, and the machine running the suite may be small.
const HASHING_AT_ONCE: usize = 4;

/// A validated new user, panicking (failing the case) on an invalid literal.
async fn new_user(name: &str, password: &str) -> NewUser {
    NewUser::new(name, password, &NameRules::default())
        .await
        .must(&format!("NewUser::new({name:?})"))
}

/// New users for `names`, in order, all with [`PASSWORD`].
async fn new_users<S: AsRef<str>>(names: &[S]) -> Vec<NewUser> {
    // Owned names: futures borrowing from the closure's argument trip the compiler's `Send`
    // check of the case's future.
    let names: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
    futures::stream::iter(names)
        .map(|name| async move { new_user(&name, PASSWORD).await })
        .buffered(HASHING_AT_ONCE)
        .collect()
        .await
}

/// Creates the user `name` with [`PASSWORD`].
async fn create(store: &dyn AccountStore, name: &str) -> User {
    store
        .create_user(new_user(name, PASSWORD).await)
        .await
        .must(&format!("create_user({name:?})"))
}

/// Creates users named `names`, one after the other, in order.
async fn create_all<S: AsRef<str>>(store: &dyn AccountStore, names: &[S]) -> Vec<User> {
    let mut users = Vec::with_capacity(names.len());
    for new in new_users(names).await {
        let what = format!("create_user({:?})", new.name());
        users.push(store.create_user(new).await.must(&what));
    }
    users
}

/// A validated new group, panicking (failing the case) on an invalid literal.
fn new_group(name: &str, owner: UserId) -> NewGroup {
    NewGroup::new(name, owner, &NameRules::default()).must(&format!("NewGroup::new({name:?})"))
}

/// Creates the group `name` owned by `owner`.
async fn create_group(store: &dyn AccountStore, name: &str, owner: UserId) -> Group {
    store
        .create_group(new_group(name, owner))
        .await
        .must(&format!("create_group({name:?})"))
}

/// A user id that no user of `known` has, far above them all: ids are unique, so in the case's
/// fresh namespace nobody has it.
fn absent_user(known: &[&User]) -> UserId {
    let highest = known.iter().map(|u| u.id.0).max().unwrap_or(0);
    UserId(highest + 1_000_000)
}

/// A group id far above `known`'s, which no group of the case has.
fn absent_group(known: &[&Group]) -> GroupId {
    let highest = known.iter().map(|g| g.id.0).max().unwrap_or(0);
    GroupId(highest + 1_000_000)
}

/// Every user whose name starts with `prefix`, walked through pages of `limit`.
async fn search_all(store: &dyn AccountStore, prefix: &str, limit: u32) -> Vec<User> {
    let what = format!("search_users({prefix:?}, limit {limit})");
    all_pages(&what, limit, |cursor| async move {
        store.search_users(prefix, cursor.as_ref(), limit).await
    })
    .await
}

/// Every member of `group`, walked through pages of `limit`.
async fn memberships_all(store: &dyn AccountStore, group: GroupId, limit: u32) -> Vec<Membership> {
    let what = format!("members({group}, limit {limit})");
    all_pages(&what, limit, |cursor| async move {
        store.members(group, cursor.as_ref(), limit).await
    })
    .await
}

/// The user ids of every member of `group`, walked through pages of `limit`.
async fn members_all(store: &dyn AccountStore, group: GroupId, limit: u32) -> Vec<UserId> {
    memberships_all(store, group, limit)
        .await
        .into_iter()
        .map(|member| member.user)
        .collect()
}

/// Every user banned from `group`, walked through pages of `limit`.
async fn bans_all(store: &dyn AccountStore, group: GroupId, limit: u32) -> Vec<UserId> {
    let what = format!("bans({group}, limit {limit})");
    all_pages(&what, limit, |cursor| async move {
        store.bans(group, cursor.as_ref(), limit).await
    })
    .await
}

/// The names of `users`, in order.
fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.name.as_str()).collect()
}

/// A name whose skeleton (UTS #39) equals a taken one's is `AlreadyExists`: an all-Cyrillic
/// "аррӏе" beside "apple", "paul1" beside "paull"; for groups too. Names that only share a
/// prefix are different names.
pub async fn a_name_that_looks_like_a_taken_one_is_taken(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["apple", "paull"]).await;
    for look_alike in ["\u{430}\u{440}\u{440}\u{4cf}\u{435}", "paul1"] {
        assert_kind(
            store
                .create_user(new_user(look_alike, PASSWORD).await)
                .await,
            ErrorKind::AlreadyExists,
            &format!("create_user({look_alike:?}), which looks like a taken name"),
        );
    }
    create(&*store, "apples").await;
    let group = create_group(&*store, "team1", users[0].id).await;
    assert_kind(
        store.create_group(new_group("teaml", users[0].id)).await,
        ErrorKind::AlreadyExists,
        "create_group(\"teaml\") beside \"team1\"",
    );
    let found = store.group_by_name("team1").await.must("group_by_name");
    assert_eq!(found, Some(group));
}

/// A created user can be found by id, and by name in any letter case; the name is kept as
/// typed and the creation time is the time of creation.
pub async fn create_user_then_find_it_by_id_and_by_name_in_any_case(h: Accounts) {
    let store = h.store().await;
    let before = Timestamp::now();
    let alice = create(&*store, "Alice").await;
    let after = Timestamp::now();

    assert_eq!(alice.name, "Alice", "the name is kept as typed");
    // Generous bounds: a networked backend may stamp with its own, slightly different clock.
    let slack = Duration::from_secs(300);
    assert!(
        alice.created_at >= before.minus(slack) && alice.created_at <= after.plus(slack),
        "created_at {} is not the time of creation (between {before} and {after})",
        alice.created_at
    );
    let by_id = store.user(alice.id).await.must("user(id)");
    assert_eq!(
        by_id,
        Some(alice.clone()),
        "user(id) returns the created user"
    );
    for name in ["Alice", "alice", "ALICE", "aLiCE"] {
        let by_name = store.user_by_name(name).await.must("user_by_name");
        assert_eq!(
            by_name,
            Some(alice.clone()),
            "user_by_name({name:?}) finds \"Alice\" by the canonical form"
        );
    }
}

/// Looking up an id or a name nobody has answers `None`, not an error.
pub async fn unknown_user_id_or_name_is_none(h: Accounts) {
    let store = h.store().await;
    let bob = create(&*store, "bob").await;

    let nobody = absent_user(&[&bob]);
    assert_eq!(store.user(nobody).await.must("user(unknown id)"), None);
    for name in ["nobody", "bo", "bobby"] {
        let found = store.user_by_name(name).await.must("user_by_name(unknown)");
        assert_eq!(found, None, "user_by_name({name:?}) must not find \"bob\"");
    }
}

/// A name is taken whatever its letter case or Unicode normalisation: creating "Zoë" again as
/// "ZOE\u{308}" fails with `AlreadyExists` and changes nothing, while "zoe" is another name.
pub async fn a_taken_name_is_already_exists_whatever_the_case_or_normalisation(h: Accounts) {
    let store = h.store().await;
    // Typed decomposed (e + combining diaeresis); stored as typed, in NFC.
    let zoe = create(&*store, "Zoe\u{308}").await;
    assert_eq!(zoe.name, "Zo\u{eb}", "the name is stored as typed, in NFC");

    for taken in [
        "Zo\u{eb}",
        "ZOE\u{308}",
        "zo\u{eb}",
        "ZO\u{cb}",
        "Zoe\u{308}",
    ] {
        let again = store
            .create_user(new_user(taken, "another password").await)
            .await;
        assert_kind(
            again,
            ErrorKind::AlreadyExists,
            &format!("create_user({taken:?}) after \"Zoë\""),
        );
    }

    let found = store.user_by_name("ZO\u{cb}").await.must("user_by_name");
    assert_eq!(found, Some(zoe.clone()), "the first \"Zoë\" is unchanged");
    let verified = store
        .verify_credentials("zoe\u{308}", PASSWORD)
        .await
        .must("verify_credentials with the first password");
    assert_eq!(
        verified.id, zoe.id,
        "the refused creates did not replace the user"
    );
    assert_kind(
        store.verify_credentials("Zoë", "another password").await,
        ErrorKind::Unauthenticated,
        "verify_credentials with a refused create's password",
    );

    let plain = create(&*store, "zoe").await;
    assert_ne!(plain.id, zoe.id, "\"zoe\" is another name than \"Zoë\"");
}

/// 100 concurrent creates of distinct names all succeed with 100 distinct ids, and every user
/// is then found by id and by name.
pub async fn concurrent_creates_of_distinct_names_get_distinct_ids(h: Accounts) {
    let store = h.store().await;
    let names: Vec<String> = (0..100).map(|i| format!("crowd_{i:03}")).collect();
    // Hash first, so that the creates themselves race.
    let new_users = new_users(&names).await;

    let tasks: Vec<_> = new_users
        .into_iter()
        .map(|new| {
            let store = store.clone();
            tokio::spawn(async move { store.create_user(new).await })
        })
        .collect();
    let mut users = Vec::with_capacity(tasks.len());
    for (task, name) in tasks.into_iter().zip(&names) {
        let user = join_task(task)
            .await
            .must(&format!("create_user({name:?})"));
        assert_eq!(&user.name, name, "create_user returns the user it created");
        users.push(user);
    }

    let ids: HashSet<UserId> = users.iter().map(|u| u.id).collect();
    assert_eq!(ids.len(), 100, "100 creates must yield 100 distinct ids");
    for user in &users {
        let by_id = store.user(user.id).await.must("user(id)");
        assert_eq!(
            by_id.as_ref(),
            Some(user),
            "user({}) after the race",
            user.id
        );
        let by_name = store.user_by_name(&user.name).await.must("user_by_name");
        assert_eq!(
            by_name.as_ref(),
            Some(user),
            "user_by_name({:?})",
            user.name
        );
    }
}

/// Of 20 concurrent creates of one name (in various letter cases) exactly one succeeds; the
/// others fail with `AlreadyExists`, and the name then belongs to the winner.
pub async fn concurrent_creates_of_one_name_let_exactly_one_win(h: Accounts) {
    let store = h.store().await;
    let spellings = ["Highlander", "highlander", "HIGHLANDER", "HighLander"];
    let names: Vec<&str> = (0..20).map(|i| spellings[i % spellings.len()]).collect();
    let new_users = new_users(&names).await;

    let tasks: Vec<_> = new_users
        .into_iter()
        .map(|new| {
            let store = store.clone();
            tokio::spawn(async move { store.create_user(new).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match join_task(task).await {
            Ok(user) => winners.push(user),
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::AlreadyExists,
                "a losing create must fail with AlreadyExists, got {e}"
            ),
        }
    }

    assert_eq!(
        winners.len(),
        1,
        "exactly one of 20 concurrent creates of one name succeeds, got {winners:?}"
    );
    let found = store.user_by_name("highlander").await.must("user_by_name");
    assert_eq!(
        found.as_ref(),
        winners.first(),
        "the name belongs to the winner"
    );
}

/// `verify_credentials` returns the user for the right password (the name in any case) and
/// `Unauthenticated` for a wrong password and for an unknown name alike.
pub async fn verify_credentials_accepts_the_right_password_and_rejects_the_rest_alike(h: Accounts) {
    let store = h.store().await;
    let password = "correct horse battery staple";
    let bob = store
        .create_user(new_user("Bob", password).await)
        .await
        .must("create_user(\"Bob\")");

    for name in ["Bob", "BOB"] {
        let verified = store
            .verify_credentials(name, password)
            .await
            .must("verify_credentials with the right password");
        assert_eq!(
            verified, bob,
            "verify_credentials({name:?}) returns the user"
        );
    }
    for wrong in [
        "Correct horse battery staple",
        "correct horse battery",
        PASSWORD,
    ] {
        assert_kind(
            store.verify_credentials("Bob", wrong).await,
            ErrorKind::Unauthenticated,
            &format!("verify_credentials(\"Bob\", {wrong:?})"),
        );
    }
    assert_kind(
        store.verify_credentials("nobody_here", password).await,
        ErrorKind::Unauthenticated,
        "verify_credentials of an unknown user",
    );
}

/// `credentials` returns the user with the very hash `NewUser` made, never the password: the
/// hash's `Debug` is redacted and its PHC string is not the password. An unknown name has none.
pub async fn credentials_keep_the_hash_and_never_the_password(h: Accounts) {
    let store = h.store().await;
    let password = "s3cret-Passw0rd";
    let new = new_user("Carol", password).await;
    let made_hash = new.password_hash().clone();
    let carol = store.create_user(new).await.must("create_user(\"Carol\")");

    let Some((user, hash)) = store.credentials("CAROL").await.must("credentials") else {
        panic!("credentials(\"CAROL\") found nobody, expected \"Carol\"");
    };
    assert_eq!(user, carol, "credentials return the user");
    assert_eq!(
        hash.as_phc(),
        made_hash.as_phc(),
        "the store keeps the PasswordHash of NewUser unchanged"
    );
    assert!(
        hash.as_phc() != password && !hash.as_phc().contains(password),
        "the stored hash must not be or contain the password"
    );
    let shown = format!("{:?}", (&user, &hash));
    assert!(
        !shown.contains(password) && !shown.contains(hash.as_phc()),
        "Debug of the credentials must redact the hash: {shown}"
    );
    assert!(
        hash.verify(password).await.must("verify the stored hash"),
        "the stored hash verifies the password"
    );

    let nobody = store
        .credentials("nobody")
        .await
        .must("credentials(unknown)");
    assert!(nobody.is_none(), "an unknown name has no credentials");
}

/// An account made without a password (from an application's token) is a user like any other,
/// its [`PasswordHash::none`](cim_core::PasswordHash::none) read back as none, and no password
/// logs it in.
pub async fn an_account_without_a_password_is_kept_and_never_verifies(h: Accounts) {
    let store = h.store().await;
    let new = NewUser::without_password("Dora", &NameRules::default()).must("a valid name");
    let dora = store.create_user(new).await.must("create_user(\"Dora\")");
    let Some((user, hash)) = store.credentials("dora").await.must("credentials") else {
        panic!("credentials(\"dora\") found nobody, expected \"Dora\"");
    };
    assert_eq!(user, dora, "credentials return the user");
    assert!(
        hash.is_none(),
        "the stored hash is still the hash of no password"
    );
    for password in ["x", PASSWORD, "$cim-no-password"] {
        assert_kind(
            store.verify_credentials("Dora", password).await,
            ErrorKind::Unauthenticated,
            &format!("verify_credentials(\"Dora\", {password:?}) of an account without a password"),
        );
    }
}

/// Prefix search returns exactly the users whose canonical name starts with the canonical
/// prefix, ordered by canonical name (not by id or by the name as typed), and a walk through
/// small pages holds every match once.
pub async fn search_users_pages_matches_completely_in_canonical_name_order(h: Accounts) {
    let store = h.store().await;
    // Alternating case makes the typed order ("Sea.." before "sea..") differ from the canonical
    // one; creating in a scrambled order makes the id order differ too.
    let matching: Vec<String> = (0..23)
        .map(|i| {
            let stem = if i % 2 == 0 { "Sea" } else { "sea" };
            format!("{stem}{i:02}")
        })
        .collect();
    let scrambled: Vec<&str> = (0..23).map(|i| matching[(i * 7) % 23].as_str()).collect();
    create_all(&*store, &scrambled).await;
    create_all(&*store, &["Se", "Seb01", "xsea01", "a.sea"]).await;

    for prefix in ["SEA", "sea", "Sea"] {
        let found = search_all(&*store, prefix, 5).await;
        assert_eq!(
            names(&found),
            matching.iter().map(String::as_str).collect::<Vec<_>>(),
            "search_users({prefix:?}) pages through the 23 matches once each, by canonical name"
        );
    }

    let tens = search_all(&*store, "sea1", 100).await;
    let expected: Vec<String> = (10..20)
        .map(|i| {
            let stem = if i % 2 == 0 { "Sea" } else { "sea" };
            format!("{stem}{i:02}")
        })
        .collect();
    assert_eq!(names(&tens), expected, "search_users(\"sea1\")");

    let page = store
        .search_users("seaz", None, 5)
        .await
        .must("search_users(\"seaz\")");
    assert!(
        page.items.is_empty() && page.next.is_none(),
        "a prefix nobody matches gives one empty, last page, got {page:?}"
    );
}

/// Prefix search compares canonical forms of any script: "李" finds the names starting with 李,
/// an upper-case Greek prefix finds a lower-case-starting match, and "ZOE\u{308}" finds "Zoë"
/// while "zoe" does not.
pub async fn search_users_compares_unicode_prefixes_canonically(h: Accounts) {
    let store = h.store().await;
    let users = create_all(
        &*store,
        &["李雷", "李华", "王芳", "Ωμέγα", "Zo\u{eb}", "zed"],
    )
    .await;
    let by_name = |name: &str| users.iter().find(|u| u.name == name).cloned();

    let li: HashSet<String> = search_all(&*store, "李", 10)
        .await
        .into_iter()
        .map(|u| u.name)
        .collect();
    let expected: HashSet<String> = ["李雷", "李华"].into_iter().map(String::from).collect();
    assert_eq!(li, expected, "search_users(\"李\")");

    let omega = search_all(&*store, "ΩΜ", 10).await;
    assert_eq!(
        omega,
        by_name("Ωμέγα").into_iter().collect::<Vec<_>>(),
        "search_users(\"ΩΜ\") compares lower case forms"
    );

    let zoe = search_all(&*store, "ZOE\u{308}", 10).await;
    assert_eq!(
        zoe,
        by_name("Zo\u{eb}").into_iter().collect::<Vec<_>>(),
        "search_users(\"ZOE\\u{{308}}\") compares NFC forms"
    );
    let plain = search_all(&*store, "zoe", 10).await;
    assert!(
        plain.is_empty(),
        "\"zoë\" does not start with \"zoe\", got {plain:?}"
    );
}

/// Characters that are wildcards to a database (`_`, `%`, `.`, `*`, `[`, `\`) are matched
/// literally: "a_" finds "a_b" but not "ab", and a prefix no name can start with finds nothing.
pub async fn search_users_takes_wildcard_characters_literally(h: Accounts) {
    let store = h.store().await;
    create_all(&*store, &["a_b", "ab", "axb", "abc", "a.b", "_x", "xx"]).await;

    let cases: [(&str, &[&str]); 10] = [
        ("a_", &["a_b"]),
        ("A_", &["a_b"]),
        ("_", &["_x"]),
        ("a.", &["a.b"]),
        ("a%", &[]),
        ("%", &[]),
        ("a*", &[]),
        ("a[", &[]),
        ("a\\", &[]),
        ("ab", &["ab", "abc"]),
    ];
    for (prefix, expected) in cases {
        let found = search_all(&*store, prefix, 10).await;
        assert_eq!(names(&found), expected, "search_users({prefix:?})");
    }
}

/// A page of zero users is `InvalidInput`.
pub async fn search_users_with_a_limit_of_zero_is_invalid_input(h: Accounts) {
    let store = h.store().await;
    create(&*store, "alpha").await;
    assert_kind(
        store.search_users("a", None, 0).await,
        ErrorKind::InvalidInput,
        "search_users with limit 0",
    );
}

/// A backend that does not claim prefix search says so with `Unsupported`.
pub async fn search_users_is_unsupported_when_not_claimed(h: Accounts) {
    let store = h.store().await;
    create(&*store, "alpha").await;
    assert_kind(
        store.search_users("a", None, 10).await,
        ErrorKind::Unsupported,
        "search_users without the prefix_search capability",
    );
}

/// A new group has its owner as first and only member, and is found by id, by name in any
/// case, and among the owner's groups.
pub async fn create_group_makes_the_owner_its_first_member(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "Olga").await;
    let group = create_group(&*store, "Team.Red", olga.id).await;

    assert_eq!(group.name, "Team.Red", "the group name is kept as typed");
    assert_eq!(group.owner, olga.id, "the creator owns the group");
    assert_eq!(
        store.group(group.id).await.must("group(id)"),
        Some(group.clone())
    );
    for name in ["Team.Red", "team.red", "TEAM.RED"] {
        let found = store.group_by_name(name).await.must("group_by_name");
        assert_eq!(found, Some(group.clone()), "group_by_name({name:?})");
    }
    assert_eq!(
        (group.access, group.history),
        (GroupAccess::Open, GroupHistory::Full),
        "a group is open with its full history unless created otherwise"
    );
    let members = store.members(group.id, None, 10).await.must("members");
    let founder = Membership {
        user: olga.id,
        role: Role::Owner,
        since: Seq(1),
    };
    assert_eq!(members.items, vec![founder], "the owner is the only member");
    assert_eq!(members.next, None, "one member fits one page");
    let groups = store.user_groups(olga.id).await.must("user_groups");
    assert_eq!(groups, vec![group], "the owner's groups hold the new group");
}

/// A group name is taken whatever its case or normalisation, whoever tries to create it again.
pub async fn a_taken_group_name_is_already_exists_whatever_the_case_or_normalisation(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "peter"]).await;
    let (olga, peter) = (&users[0], &users[1]);
    let crew = create_group(&*store, "Crew", olga.id).await;
    let cafe = create_group(&*store, "Caf\u{e9}", olga.id).await;

    for (taken, owner) in [
        ("Crew", olga.id),
        ("CREW", olga.id),
        ("crew", peter.id),
        ("CAFE\u{301}", peter.id),
        ("caf\u{e9}", olga.id),
    ] {
        assert_kind(
            store.create_group(new_group(taken, owner)).await,
            ErrorKind::AlreadyExists,
            &format!("create_group({taken:?}) after \"Crew\" and \"Café\""),
        );
    }
    let found = store.group_by_name("crew").await.must("group_by_name");
    assert_eq!(found, Some(crew), "the first \"Crew\" is unchanged");
    let found = store.group_by_name("CAF\u{c9}").await.must("group_by_name");
    assert_eq!(found, Some(cafe), "the first \"Café\" is unchanged");
    let groups = store.user_groups(peter.id).await.must("user_groups");
    assert!(
        groups.is_empty(),
        "refused creates made peter a member: {groups:?}"
    );
}

/// Creating a group for an owner who does not exist is `NotFound` and creates nothing.
pub async fn create_group_with_a_missing_owner_is_not_found(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "olga").await;
    assert_kind(
        store
            .create_group(new_group("Ghosts", absent_user(&[&olga])))
            .await,
        ErrorKind::NotFound,
        "create_group with a missing owner",
    );
    let found = store.group_by_name("ghosts").await.must("group_by_name");
    assert_eq!(found, None, "a refused create leaves no group behind");
    let group = create_group(&*store, "Ghosts", olga.id).await;
    assert_eq!(group.owner, olga.id, "the name is still free");
}

/// Looking up a group id or name nobody has answers `None`.
pub async fn unknown_group_id_or_name_is_none(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "olga").await;
    let group = create_group(&*store, "crew", olga.id).await;

    let missing = absent_group(&[&group]);
    assert_eq!(store.group(missing).await.must("group(unknown id)"), None);
    for name in ["nocrew", "cre", "crews", "olga"] {
        let found = store
            .group_by_name(name)
            .await
            .must("group_by_name(unknown)");
        assert_eq!(found, None, "group_by_name({name:?})");
    }
}

/// Adding a member answers true, adding them again false; removing answers true, removing
/// again false; members and the user's groups follow.
pub async fn add_and_remove_member_say_whether_they_changed_anything(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob"]).await;
    let (olga, bob) = (&users[0], &users[1]);
    let group = create_group(&*store, "crew", olga.id).await;
    let mut both = vec![olga.id, bob.id];
    both.sort();

    assert!(
        store
            .add_member(group.id, bob.id, Seq(1))
            .await
            .must("add_member")
    );
    assert!(
        !store
            .add_member(group.id, bob.id, Seq(1))
            .await
            .must("add_member again"),
        "adding a member twice changes nothing and answers false"
    );
    assert!(
        !store
            .add_member(group.id, olga.id, Seq(1))
            .await
            .must("add_member(owner)"),
        "the owner is a member already"
    );
    assert_eq!(members_all(&*store, group.id, 10).await, both);
    let groups = store.user_groups(bob.id).await.must("user_groups");
    assert_eq!(groups, vec![group.clone()], "bob's groups after joining");

    assert!(
        store
            .remove_member(group.id, bob.id)
            .await
            .must("remove_member")
    );
    assert!(
        !store
            .remove_member(group.id, bob.id)
            .await
            .must("remove_member again"),
        "removing a non-member changes nothing and answers false"
    );
    assert_eq!(members_all(&*store, group.id, 10).await, vec![olga.id]);
    let groups = store.user_groups(bob.id).await.must("user_groups");
    assert!(groups.is_empty(), "bob's groups after leaving: {groups:?}");

    assert!(
        store
            .add_member(group.id, bob.id, Seq(1))
            .await
            .must("add_member after leaving"),
        "a former member can join again"
    );
    assert_eq!(members_all(&*store, group.id, 10).await, both);
}

/// Every membership operation on a group or a user that does not exist is `NotFound`, and
/// changes nothing.
pub async fn membership_operations_on_a_missing_group_or_user_are_not_found(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob"]).await;
    let (olga, bob) = (&users[0], &users[1]);
    let group = create_group(&*store, "crew", olga.id).await;
    let no_group = absent_group(&[&group]);
    let no_user = absent_user(&[olga, bob]);

    assert_kind(
        store.add_member(no_group, bob.id, Seq(1)).await,
        ErrorKind::NotFound,
        "add_member to a missing group",
    );
    assert_kind(
        store.add_member(group.id, no_user, Seq(1)).await,
        ErrorKind::NotFound,
        "add_member of a missing user",
    );
    assert_kind(
        store.remove_member(no_group, olga.id).await,
        ErrorKind::NotFound,
        "remove_member from a missing group",
    );
    assert_kind(
        store.remove_member(group.id, no_user).await,
        ErrorKind::NotFound,
        "remove_member of a missing user",
    );
    assert_kind(
        store.members(no_group, None, 10).await,
        ErrorKind::NotFound,
        "members of a missing group",
    );
    assert_kind(
        store.user_groups(no_user).await,
        ErrorKind::NotFound,
        "user_groups of a missing user",
    );
    assert_eq!(
        members_all(&*store, group.id, 10).await,
        vec![olga.id],
        "the failed operations changed nothing"
    );
    let groups = store.user_groups(bob.id).await.must("user_groups");
    assert!(groups.is_empty(), "bob joined nothing: {groups:?}");
}

/// Members are listed by user id, whatever the order they joined in; pages of 3 hold every
/// member once; a page of zero is `InvalidInput`.
pub async fn members_are_paged_completely_by_user_id(h: Accounts) {
    let store = h.store().await;
    let member_names: Vec<String> = (0..11).map(|i| format!("member{i:02}")).collect();
    let users = create_all(&*store, &member_names).await;
    let owner = &users[5];
    let group = create_group(&*store, "crew", owner.id).await;
    // Join in an order that is neither the creation order nor the id order.
    for i in [3, 9, 0, 10, 7, 1, 4, 8, 2, 6] {
        let added = store
            .add_member(group.id, users[i].id, Seq(1))
            .await
            .must("add_member");
        assert!(added, "{} was not a member yet", users[i].name);
    }

    let mut expected: Vec<UserId> = users.iter().map(|u| u.id).collect();
    expected.sort();
    assert_eq!(
        members_all(&*store, group.id, 3).await,
        expected,
        "members in pages of 3: each once, by user id"
    );

    store
        .remove_member(group.id, users[4].id)
        .await
        .must("remove_member");
    expected.retain(|id| *id != users[4].id);
    assert_eq!(members_all(&*store, group.id, 4).await, expected);

    assert_kind(
        store.members(group.id, None, 0).await,
        ErrorKind::InvalidInput,
        "members with limit 0",
    );
}

/// A user's groups (owned or joined) are listed by group id, and only those.
pub async fn user_groups_are_listed_by_group_id(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["uma", "vic", "walt"]).await;
    let (uma, vic, walt) = (&users[0], &users[1], &users[2]);
    let mut groups = Vec::new();
    for name in ["g1", "g2", "g3", "g4"] {
        groups.push(create_group(&*store, name, vic.id).await);
    }
    let own = create_group(&*store, "g5", uma.id).await;
    // Join the later group first.
    store
        .add_member(groups[2].id, uma.id, Seq(1))
        .await
        .must("add_member");
    store
        .add_member(groups[0].id, uma.id, Seq(1))
        .await
        .must("add_member");

    let mut expected = vec![groups[0].clone(), groups[2].clone(), own];
    expected.sort_by_key(|g| g.id);
    assert_eq!(
        store.user_groups(uma.id).await.must("user_groups(uma)"),
        expected,
        "uma's groups, by group id"
    );
    let mut vics = groups.clone();
    vics.sort_by_key(|g| g.id);
    assert_eq!(
        store.user_groups(vic.id).await.must("user_groups(vic)"),
        vics,
        "vic's groups, by group id"
    );
    let none = store.user_groups(walt.id).await.must("user_groups(walt)");
    assert!(none.is_empty(), "walt is in no group: {none:?}");
}

/// A revoked login session answers revoked until its time, for every reader; revoking again
/// with an earlier time keeps the later one; a session whose time has passed, and one never
/// revoked, answer not revoked.
pub async fn a_revoked_session_stays_revoked_until_its_time_and_others_are_not(h: Accounts) {
    let store = h.store().await;
    let later = Timestamp::now().plus(Duration::from_secs(3600));
    let id = "0123456789abcdef0123456789abcdef";
    assert!(
        !store
            .is_session_revoked(id)
            .await
            .must("is_session_revoked"),
        "nothing is revoked at first"
    );
    store.revoke_session(id, later).await.must("revoke_session");
    assert!(
        store
            .is_session_revoked(id)
            .await
            .must("is_session_revoked")
    );
    let sooner = Timestamp::now().plus(Duration::from_millis(1));
    store
        .revoke_session(id, sooner)
        .await
        .must("revoke_session again, with an earlier time");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store
            .is_session_revoked(id)
            .await
            .must("is_session_revoked"),
        "the later time is kept"
    );
    let other = "fedcba9876543210fedcba9876543210";
    assert!(
        !store
            .is_session_revoked(other)
            .await
            .must("another session")
    );
    let past = Timestamp::now().minus(Duration::from_secs(1));
    store
        .revoke_session(other, past)
        .await
        .must("revoke_session until a past time");
    assert!(
        !store
            .is_session_revoked(other)
            .await
            .must("is_session_revoked"),
        "a revocation whose time has passed revokes nothing"
    );
}

/// Session ids are 1 to `MAX_SESSION_ID_LEN` bytes.
pub async fn session_ids_outside_their_length_are_invalid_input(h: Accounts) {
    let store = h.store().await;
    let later = Timestamp::now().plus(Duration::from_secs(60));
    let too_long = "x".repeat(cim_core::account_store::MAX_SESSION_ID_LEN + 1);
    for bad in ["", too_long.as_str()] {
        assert_kind(
            store.revoke_session(bad, later).await,
            ErrorKind::InvalidInput,
            &format!("revoke_session of a {}-byte id", bad.len()),
        );
        assert_kind(
            store.is_session_revoked(bad).await,
            ErrorKind::InvalidInput,
            &format!("is_session_revoked of a {}-byte id", bad.len()),
        );
    }
    let longest = "y".repeat(cim_core::account_store::MAX_SESSION_ID_LEN);
    store
        .revoke_session(&longest, later)
        .await
        .must("revoke_session of the longest id");
    assert!(store.is_session_revoked(&longest).await.must("longest"));
}

/// `is_member` is true for the owner from the start, true for a member once added, false again
/// once removed, and never true for a user of another group.
pub async fn is_member_follows_joins_and_leaves(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob", "carol"]).await;
    let (olga, bob, carol) = (&users[0], &users[1], &users[2]);
    let crew = create_group(&*store, "crew", olga.id).await;
    let other = create_group(&*store, "other", carol.id).await;

    let member = async |group: &Group, user: &User| {
        store
            .is_member(group.id, user.id)
            .await
            .must(&format!("is_member({}, {})", group.name, user.name))
    };
    assert!(member(&crew, olga).await, "the owner is a member");
    assert!(!member(&crew, bob).await, "bob has not joined");
    assert!(!member(&crew, carol).await, "carol owns another group only");
    store
        .add_member(crew.id, bob.id, Seq(1))
        .await
        .must("add_member");
    assert!(member(&crew, bob).await, "bob after joining");
    assert!(
        !member(&other, bob).await,
        "joining crew is not joining other"
    );
    store
        .remove_member(crew.id, bob.id)
        .await
        .must("remove_member");
    assert!(!member(&crew, bob).await, "bob after leaving");
    assert!(member(&crew, olga).await, "olga stays");
}

/// `is_member` answers false, not an error, for a group or a user that does not exist, and for
/// the built-in "all" group, which no store keeps.
pub async fn is_member_is_false_for_a_missing_group_or_user_and_for_the_all_group(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "olga").await;
    let group = create_group(&*store, "crew", olga.id).await;
    let no_group = absent_group(&[&group]);
    let no_user = absent_user(&[&olga]);
    for (group, user, what) in [
        (no_group, olga.id, "a missing group"),
        (group.id, no_user, "a missing user"),
        (GroupId::ALL, olga.id, "the all group"),
    ] {
        let answer = store
            .is_member(group, user)
            .await
            .must(&format!("is_member for {what}"));
        assert!(!answer, "is_member for {what} must be false");
    }
}

/// A group keeps the settings it was created with; `update_group` changes them for good, and
/// on a missing group is `NotFound`.
pub async fn group_settings_are_kept_and_changed_by_update_group(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "olga").await;
    let settings = GroupSettings {
        access: GroupAccess::Closed,
        history: GroupHistory::SinceJoin,
    };
    let group = store
        .create_group(new_group("vault", olga.id).settings(settings))
        .await
        .must("create_group(closed, since_join)");
    assert_eq!(
        (group.access, group.history),
        (settings.access, settings.history)
    );
    let stored = store.group(group.id).await.must("group").expect("stored");
    assert_eq!(stored, group, "the settings are stored");

    let open = GroupSettings {
        access: GroupAccess::InviteOnly,
        history: GroupHistory::Full,
    };
    let updated = store
        .update_group(group.id, open)
        .await
        .must("update_group");
    assert_eq!(
        (updated.access, updated.history),
        (open.access, open.history)
    );
    assert_eq!(updated.name, group.name, "nothing else changes");
    let by_name = store.group_by_name("vault").await.must("group_by_name");
    assert_eq!(by_name, Some(updated), "the change is what every read sees");
    assert_kind(
        store.update_group(absent_group(&[&group]), open).await,
        ErrorKind::NotFound,
        "update_group of a missing group",
    );
}

/// `membership` names the role and the `since` of each member: the owner from the start, a
/// member with the `since` they were added with; `None` for others and for missing ones.
pub async fn membership_tells_each_members_role_and_since(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob", "carol"]).await;
    let (olga, bob, carol) = (&users[0], &users[1], &users[2]);
    let group = create_group(&*store, "crew", olga.id).await;
    store
        .add_member(group.id, bob.id, Seq(42))
        .await
        .must("add_member");
    let expect = |user: &User, role: Role, since: u64| {
        Some(Membership {
            user: user.id,
            role,
            since: Seq(since),
        })
    };
    assert_eq!(
        store
            .membership(group.id, olga.id)
            .await
            .must("membership(owner)"),
        expect(olga, Role::Owner, 1)
    );
    assert_eq!(
        store
            .membership(group.id, bob.id)
            .await
            .must("membership(bob)"),
        expect(bob, Role::Member, 42)
    );
    assert!(
        !store
            .add_member(group.id, bob.id, Seq(99))
            .await
            .must("add_member again"),
        "adding a member again changes nothing"
    );
    assert_eq!(
        store
            .membership(group.id, bob.id)
            .await
            .must("membership(bob)"),
        expect(bob, Role::Member, 42),
        "a repeated add keeps the first since"
    );
    for (group, user, what) in [
        (group.id, carol.id, "a non-member"),
        (absent_group(&[&group]), olga.id, "a missing group"),
        (group.id, absent_user(&[olga, bob, carol]), "a missing user"),
    ] {
        let found = store.membership(group, user).await.must("membership");
        assert_eq!(found, None, "membership of {what}");
    }
    let listed = memberships_all(&*store, group.id, 10).await;
    let mut expected = vec![
        expect(olga, Role::Owner, 1).expect("some"),
        expect(bob, Role::Member, 42).expect("some"),
    ];
    expected.sort_by_key(|member| member.user);
    assert_eq!(listed, expected, "members lists roles and since");
}

/// `set_role` makes a member an admin and back; it never makes an owner, never changes the
/// owner's role, and a non-member is `NotFound`.
pub async fn set_role_makes_admins_and_members_but_never_another_owner(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob", "carol"]).await;
    let (olga, bob, carol) = (&users[0], &users[1], &users[2]);
    let group = create_group(&*store, "crew", olga.id).await;
    store
        .add_member(group.id, bob.id, Seq(1))
        .await
        .must("add_member");
    let role_of = async |user: &User| {
        store
            .membership(group.id, user.id)
            .await
            .must("membership")
            .map(|member| member.role)
    };
    store
        .set_role(group.id, bob.id, Role::Admin)
        .await
        .must("set_role(admin)");
    assert_eq!(role_of(bob).await, Some(Role::Admin));
    store
        .set_role(group.id, bob.id, Role::Member)
        .await
        .must("set_role(member)");
    assert_eq!(role_of(bob).await, Some(Role::Member));
    assert_kind(
        store.set_role(group.id, bob.id, Role::Owner).await,
        ErrorKind::InvalidInput,
        "set_role(owner)",
    );
    assert_kind(
        store.set_role(group.id, olga.id, Role::Member).await,
        ErrorKind::InvalidInput,
        "set_role of the owner",
    );
    assert_kind(
        store.set_role(group.id, carol.id, Role::Admin).await,
        ErrorKind::NotFound,
        "set_role of a non-member",
    );
    assert_eq!(role_of(olga).await, Some(Role::Owner), "the owner stays");
    assert_eq!(
        role_of(bob).await,
        Some(Role::Member),
        "refusals change nothing"
    );
}

/// A group always has its owner: removing or banning them is `InvalidInput`, and changes
/// nothing.
pub async fn the_owner_can_be_neither_removed_nor_banned(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "olga").await;
    let group = create_group(&*store, "crew", olga.id).await;
    assert_kind(
        store.remove_member(group.id, olga.id).await,
        ErrorKind::InvalidInput,
        "remove_member(owner)",
    );
    assert_kind(
        store.ban(group.id, olga.id).await,
        ErrorKind::InvalidInput,
        "ban(owner)",
    );
    assert!(store.is_member(group.id, olga.id).await.must("is_member"));
    assert!(bans_all(&*store, group.id, 10).await.is_empty());
}

/// A ban removes a member and keeps them out: adding them again is `PermissionDenied` until
/// the ban is lifted, and lifting it does not add them back. Each call answers whether it
/// changed anything; bans are listed by user id, in pages.
pub async fn a_banned_user_is_removed_and_cannot_be_added_until_unbanned(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob", "carol", "dave"]).await;
    let (olga, bob, carol, dave) = (&users[0], &users[1], &users[2], &users[3]);
    let group = create_group(&*store, "crew", olga.id).await;
    store
        .add_member(group.id, bob.id, Seq(1))
        .await
        .must("add_member");

    assert!(
        store.ban(group.id, bob.id).await.must("ban(bob)"),
        "a new ban"
    );
    assert!(
        !store.is_member(group.id, bob.id).await.must("is_member"),
        "banned means removed"
    );
    assert!(
        !store.ban(group.id, bob.id).await.must("ban(bob) again"),
        "banning again changes nothing"
    );
    assert_kind(
        store.add_member(group.id, bob.id, Seq(1)).await,
        ErrorKind::PermissionDenied,
        "add_member of a banned user",
    );
    assert!(
        store.ban(group.id, carol.id).await.must("ban(carol)"),
        "a non-member can be banned too"
    );
    assert!(store.ban(group.id, dave.id).await.must("ban(dave)"));
    let mut banned = vec![bob.id, carol.id, dave.id];
    banned.sort();
    assert_eq!(
        bans_all(&*store, group.id, 2).await,
        banned,
        "bans in pages of 2"
    );
    let groups = store.user_groups(bob.id).await.must("user_groups(bob)");
    assert!(groups.is_empty(), "the ban removed bob: {groups:?}");

    assert!(store.unban(group.id, bob.id).await.must("unban(bob)"));
    assert!(!store.unban(group.id, bob.id).await.must("unban(bob) again"));
    assert!(
        !store.is_member(group.id, bob.id).await.must("is_member"),
        "an unban does not add back"
    );
    assert!(
        store
            .add_member(group.id, bob.id, Seq(1))
            .await
            .must("add_member after unban"),
        "once unbanned, bob can be added"
    );
    banned.retain(|user| *user != bob.id);
    assert_eq!(bans_all(&*store, group.id, 10).await, banned);
    let no_group = absent_group(&[&group]);
    assert_kind(
        store.ban(no_group, bob.id).await,
        ErrorKind::NotFound,
        "ban in a missing group",
    );
    assert_kind(
        store.bans(no_group, None, 10).await,
        ErrorKind::NotFound,
        "bans of a missing group",
    );
    assert_kind(
        store.bans(group.id, None, 0).await,
        ErrorKind::InvalidInput,
        "bans with limit 0",
    );
}

/// A ban and an add of the same user, racing: whichever wins, a banned user is never left a
/// member.
pub async fn a_ban_racing_an_add_never_leaves_a_banned_member(h: Accounts) {
    let store = h.store().await;
    let users = create_all(&*store, &["olga", "bob"]).await;
    let (olga, bob) = (&users[0], &users[1]);
    let group = create_group(&*store, "crew", olga.id).await;
    for round in 0..20 {
        let adding = {
            let store = store.clone();
            let (group, bob) = (group.id, bob.id);
            tokio::spawn(async move { store.add_member(group, bob, Seq(1)).await })
        };
        let banning = {
            let store = store.clone();
            let (group, bob) = (group.id, bob.id);
            tokio::spawn(async move { store.ban(group, bob).await })
        };
        let added = join_task(adding).await;
        join_task(banning).await.must("ban");
        if let Err(e) = added {
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "round {round}: {e}");
        }
        assert!(
            !store.is_member(group.id, bob.id).await.must("is_member"),
            "round {round}: bob is banned and must not be a member"
        );
        store.unban(group.id, bob.id).await.must("unban");
    }
}

/// A backend that does not claim groups answers `Unsupported` to every group operation.
pub async fn group_operations_are_unsupported_when_not_claimed(h: Accounts) {
    let store = h.store().await;
    let olga = create(&*store, "olga").await;
    let group = GroupId(1);
    assert_kind(
        store.create_group(new_group("crew", olga.id)).await,
        ErrorKind::Unsupported,
        "create_group",
    );
    assert_kind(store.group(group).await, ErrorKind::Unsupported, "group");
    assert_kind(
        store.group_by_name("crew").await,
        ErrorKind::Unsupported,
        "group_by_name",
    );
    assert_kind(
        store.add_member(group, olga.id, Seq(1)).await,
        ErrorKind::Unsupported,
        "add_member",
    );
    assert_kind(
        store.remove_member(group, olga.id).await,
        ErrorKind::Unsupported,
        "remove_member",
    );
    assert_kind(
        store.members(group, None, 10).await,
        ErrorKind::Unsupported,
        "members",
    );
    assert_kind(
        store.user_groups(olga.id).await,
        ErrorKind::Unsupported,
        "user_groups",
    );
    assert_kind(
        store.is_member(group, olga.id).await,
        ErrorKind::Unsupported,
        "is_member",
    );
    assert_kind(
        store.membership(group, olga.id).await,
        ErrorKind::Unsupported,
        "membership",
    );
    assert_kind(
        store.update_group(group, GroupSettings::default()).await,
        ErrorKind::Unsupported,
        "update_group",
    );
    assert_kind(
        store.set_role(group, olga.id, Role::Admin).await,
        ErrorKind::Unsupported,
        "set_role",
    );
    assert_kind(
        store.ban(group, olga.id).await,
        ErrorKind::Unsupported,
        "ban",
    );
    assert_kind(
        store.unban(group, olga.id).await,
        ErrorKind::Unsupported,
        "unban",
    );
    assert_kind(
        store.bans(group, None, 10).await,
        ErrorKind::Unsupported,
        "bans",
    );
}
