//! Cases for [`cim_core::SessionStore`]: a user has at most one live session, and binding is
//! atomic per user: of racing `Reject` binds exactly one wins, of racing `Replace` binds the last
//! wins and every replaced session goes back to exactly one caller, and rebinding the very same
//! session is harmless. Unbinding is a compare-and-delete, so a stale server never removes a
//! newer session. Sessions live as long as their server keeps refreshing: once it stops (a
//! crash) they expire within the TTL plus at most one more, and the users can log in again
//! elsewhere instead of being locked out. Listing pages by user id and, even under concurrent
//! binds and unbinds, returns every session that was live for the whole walk exactly once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cim_core::{
    BindOutcome, BindPolicy, ConnectionId, ErrorKind, Session, SessionCapabilities, SessionRef,
    SessionStore, UserId,
};

use crate::case::{Case, Harness, boxed};
use crate::support::*;

/// Every case of this trait, in order.
pub fn cases() -> Vec<Case<dyn SessionStore>> {
    vec![
        Case::always("bind_then_get_returns_the_session", |h| {
            boxed(bind_then_get_returns_the_session(h))
        }),
        Case::always("bind_reject_keeps_the_first_session", |h| {
            boxed(bind_reject_keeps_the_first_session(h))
        }),
        Case::always("bind_replace_returns_the_replaced_session", |h| {
            boxed(bind_replace_returns_the_replaced_session(h))
        }),
        Case::always("binding_the_same_session_again_is_bound", |h| {
            boxed(binding_the_same_session_again_is_bound(h))
        }),
        Case::always("unbind_with_the_current_ref_removes_the_session", |h| {
            boxed(unbind_with_the_current_ref_removes_the_session(h))
        }),
        Case::always("unbind_with_a_stale_ref_keeps_the_session", |h| {
            boxed(unbind_with_a_stale_ref_keeps_the_session(h))
        }),
        Case::always("concurrent_reject_binds_admit_exactly_one", |h| {
            boxed(concurrent_reject_binds_admit_exactly_one(h))
        }),
        Case::always(
            "concurrent_replace_binds_hand_each_replaced_session_back_once",
            |h| boxed(concurrent_replace_binds_hand_each_replaced_session_back_once(h)),
        ),
        Case::always("get_many_returns_the_online_users_only", |h| {
            boxed(get_many_returns_the_online_users_only(h))
        }),
        Case::always("refresh_keeps_sessions_alive_across_ttls", |h| {
            boxed(refresh_keeps_sessions_alive_across_ttls(h))
        }),
        Case::always("sessions_expire_after_their_server_stops_refreshing", |h| {
            boxed(sessions_expire_after_their_server_stops_refreshing(h))
        }),
        Case::always("remove_server_removes_only_that_servers_sessions", |h| {
            boxed(remove_server_removes_only_that_servers_sessions(h))
        }),
        Case::when(
            "list_online_pages_through_every_user_once_in_order",
            |caps: &SessionCapabilities| caps.list_online,
            |h| boxed(list_online_pages_through_every_user_once_in_order(h)),
        ),
        Case::when(
            "list_online_walk_is_exact_under_concurrent_writes",
            |caps: &SessionCapabilities| caps.list_online,
            |h| boxed(list_online_walk_is_exact_under_concurrent_writes(h)),
        ),
        Case::when(
            "list_online_walk_is_exact_while_users_in_between_come_and_go",
            |caps: &SessionCapabilities| caps.list_online,
            |h| boxed(list_online_walk_is_exact_while_users_in_between_come_and_go(h)),
        ),
        Case::when(
            "list_online_rejects_a_limit_of_zero",
            |caps: &SessionCapabilities| caps.list_online,
            |h| boxed(list_online_rejects_a_limit_of_zero(h)),
        ),
        Case::when(
            "count_online_counts_live_sessions",
            |caps: &SessionCapabilities| caps.count_online,
            |h| boxed(count_online_counts_live_sessions(h)),
        ),
        Case::when(
            "list_online_is_unsupported_when_not_claimed",
            |caps: &SessionCapabilities| !caps.list_online,
            |h| boxed(list_online_is_unsupported_when_not_claimed(h)),
        ),
        Case::when(
            "count_online_is_unsupported_when_not_claimed",
            |caps: &SessionCapabilities| !caps.count_online,
            |h| boxed(count_online_is_unsupported_when_not_claimed(h)),
        ),
    ]
}

/// A bound session is what `get` returns for its user; other users have none.
pub async fn bind_then_get_returns_the_session(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let alice = session(1, "node-a", 10);

    assert_eq!(
        store
            .bind(alice.clone(), BindPolicy::Reject)
            .await
            .must("binding"),
        BindOutcome::Bound,
        "binding a user with no session must say Bound"
    );

    assert_eq!(store.get(UserId(1)).await.must("get"), Some(alice));
    assert_eq!(
        store.get(UserId(2)).await.must("get of another user"),
        None,
        "a user who never bound has no session"
    );
}

/// Under `Reject`, binding a user who has a live session fails with `AlreadyExists` and the
/// first session stays.
pub async fn bind_reject_keeps_the_first_session(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let first = session(1, "node-a", 10);
    store
        .bind(first.clone(), BindPolicy::Reject)
        .await
        .must("binding the first session");

    assert_kind(
        store
            .bind(session(1, "node-b", 20), BindPolicy::Reject)
            .await,
        ErrorKind::AlreadyExists,
        "a Reject bind of a user with a live session",
    );
    assert_eq!(
        store.get(UserId(1)).await.must("get"),
        Some(first),
        "the rejected bind must leave the first session in place"
    );
}

/// Under `Replace`, binding returns the replaced session and the new one takes its place; a
/// user with no session is simply bound.
pub async fn bind_replace_returns_the_replaced_session(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let old = session(1, "node-a", 10);
    assert_eq!(
        store
            .bind(old.clone(), BindPolicy::Replace)
            .await
            .must("binding the first session"),
        BindOutcome::Bound,
        "Replace with nothing to replace must say Bound"
    );

    let new = session(1, "node-b", 20);
    assert_eq!(
        store
            .bind(new.clone(), BindPolicy::Replace)
            .await
            .must("replacing"),
        BindOutcome::Replaced(old),
        "Replace must hand back the session it replaced, so its connection can be told"
    );
    assert_eq!(store.get(UserId(1)).await.must("get"), Some(new));
}

/// Binding the very session that is already bound (same user, server and connection) succeeds
/// with `Bound` under either policy, and the session stays.
pub async fn binding_the_same_session_again_is_bound(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let alice = session(1, "node-a", 10);
    store
        .bind(alice.clone(), BindPolicy::Reject)
        .await
        .must("binding");

    for policy in [BindPolicy::Reject, BindPolicy::Replace] {
        assert_eq!(
            store
                .bind(alice.clone(), policy)
                .await
                .must("binding the same session again"),
            BindOutcome::Bound,
            "rebinding the bound session under {policy:?} must say Bound"
        );
    }
    assert_eq!(store.get(UserId(1)).await.must("get"), Some(alice));
}

/// Unbinding with the current session's reference removes it and says so; a second unbind
/// finds nothing.
pub async fn unbind_with_the_current_ref_removes_the_session(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let alice = session(1, "node-a", 10);
    let bob = session(2, "node-a", 11);
    for s in [&alice, &bob] {
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding");
    }

    assert!(
        store.unbind(&alice.reference()).await.must("unbinding"),
        "unbind with the current reference must say it removed the session"
    );
    assert_eq!(store.get(UserId(1)).await.must("get"), None);
    assert_eq!(
        store.get(UserId(2)).await.must("get of another user"),
        Some(bob),
        "unbind must remove only the user's own session"
    );
    assert!(
        !store
            .unbind(&alice.reference())
            .await
            .must("unbinding again"),
        "a second unbind has nothing to remove"
    );
}

/// Unbinding with a stale reference (another connection, another server, or a session that was
/// since replaced) removes nothing and says so.
pub async fn unbind_with_a_stale_ref_keeps_the_session(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let old = session(1, "node-a", 10);
    store
        .bind(old.clone(), BindPolicy::Reject)
        .await
        .must("binding the old session");
    let current = session(1, "node-b", 20);
    store
        .bind(current.clone(), BindPolicy::Replace)
        .await
        .must("replacing it");

    let stale = [
        ("the replaced session", old.reference()),
        (
            "another connection on the same server",
            SessionRef {
                connection_id: ConnectionId(21),
                ..current.reference()
            },
        ),
        (
            "the same connection id on another server",
            SessionRef {
                server_id: server_id("node-c"),
                ..current.reference()
            },
        ),
    ];
    for (what, reference) in &stale {
        assert!(
            !store.unbind(reference).await.must("unbinding"),
            "unbind with {what} must not remove the current session"
        );
        assert_eq!(
            store.get(UserId(1)).await.must("get"),
            Some(current.clone()),
            "after an unbind with {what} the current session must stay"
        );
    }
    assert!(
        !store
            .unbind(&session(2, "node-b", 20).reference())
            .await
            .must("unbinding a user who is offline"),
        "unbinding a user with no session removes nothing"
    );
}

/// Of 50 concurrent `Reject` binds of one user (50 connections on several servers) exactly one
/// succeeds, the other 49 fail with `AlreadyExists`, and `get` returns the winner.
pub async fn concurrent_reject_binds_admit_exactly_one(h: Harness<dyn SessionStore>) {
    const CONTENDERS: u64 = 50;
    let store = h.store().await;
    let outcomes = bind_concurrently(&store, contenders(7, CONTENDERS), BindPolicy::Reject).await;

    let mut winners = Vec::new();
    let mut rejected = 0;
    for (contender, outcome) in outcomes {
        match outcome {
            Ok(BindOutcome::Bound) => winners.push(contender),
            Ok(other) => panic!("a Reject bind must never replace, got {other:?}"),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => rejected += 1,
            Err(e) => panic!("a losing Reject bind must fail with AlreadyExists, got {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one of {CONTENDERS} racing Reject binds must succeed: {winners:?}"
    );
    assert_eq!(rejected, CONTENDERS - 1);
    assert_eq!(
        store.get(UserId(7)).await.must("get"),
        winners.pop(),
        "get must return the session of the bind that succeeded"
    );
}

/// Of 50 concurrent `Replace` binds of one user, the last writer's session is the one bound,
/// exactly one bind found no session, and every other session was handed back as replaced to
/// exactly one caller.
pub async fn concurrent_replace_binds_hand_each_replaced_session_back_once(
    h: Harness<dyn SessionStore>,
) {
    const CONTENDERS: u64 = 50;
    let store = h.store().await;
    let sessions = contenders(7, CONTENDERS);
    let outcomes = bind_concurrently(&store, sessions.clone(), BindPolicy::Replace).await;

    let mut bound = 0;
    let mut replaced = Vec::new();
    for (_, outcome) in outcomes {
        match outcome.must("a Replace bind") {
            BindOutcome::Bound => bound += 1,
            BindOutcome::Replaced(old) => replaced.push(old),
        }
    }
    let winner = store
        .get(UserId(7))
        .await
        .must("get")
        .unwrap_or_else(|| panic!("after {CONTENDERS} Replace binds the user has no session"));
    assert!(
        sessions.contains(&winner),
        "get must return one of the bound sessions, got {winner:?}"
    );
    assert_eq!(
        bound, 1,
        "exactly one racing Replace bind finds no session to replace"
    );

    let mut handed_back = HashSet::new();
    for old in &replaced {
        assert!(
            sessions.contains(old),
            "a bind handed back a session nobody bound: {old:?}"
        );
        assert!(
            handed_back.insert(old.connection_id),
            "the replaced session {old:?} was handed back to more than one caller"
        );
    }
    assert!(
        !handed_back.contains(&winner.connection_id),
        "the session still bound cannot also have been replaced: {winner:?}"
    );
    assert_eq!(
        handed_back.len() as u64,
        CONTENDERS - 1,
        "every session but the last one was replaced, so each must be handed back once"
    );
}

/// `get_many` returns the sessions of those users that are online, and nothing for the others.
pub async fn get_many_returns_the_online_users_only(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let online: Vec<Session> = (1..=3).map(|u| session(u, "node-a", 10 + u)).collect();
    for s in &online {
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding");
    }

    let mut found = store
        .get_many(&[UserId(3), UserId(9), UserId(1)])
        .await
        .must("get_many");
    found.sort_by_key(|s| s.user_id);
    assert_eq!(
        found,
        vec![online[0].clone(), online[2].clone()],
        "get_many must return exactly the online users' sessions"
    );
    assert_eq!(
        store.get_many(&[]).await.must("get_many of nobody"),
        Vec::new()
    );
}

/// A server that keeps refreshing keeps its sessions: they are there at every look across
/// three TTLs.
pub async fn refresh_keeps_sessions_alive_across_ttls(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let ttl = h.ctx().ttl;
    let alice = session(1, "refreshing-node", 10);
    store
        .bind(alice.clone(), BindPolicy::Reject)
        .await
        .must("binding");
    let heartbeat = Heartbeat::start(&store, "refreshing-node", ttl);

    let started = tokio::time::Instant::now();
    let mut looks = tokio::time::interval(ttl / 4);
    while started.elapsed() < ttl * 3 {
        looks.tick().await;
        assert_eq!(
            store.get(UserId(1)).await.must("get"),
            Some(alice.clone()),
            "the session of a refreshing server vanished after {:?} (TTL {ttl:?})",
            started.elapsed()
        );
    }
    heartbeat.stop().await;
}

/// When a server stops refreshing (a crash), its sessions expire within the TTL plus the
/// backend's tolerance: `get` no longer returns them, they are neither counted nor listed, and
/// the users can bind again elsewhere under `Reject`. Sessions of a live server stay.
pub async fn sessions_expire_after_their_server_stops_refreshing(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let ttl = h.ctx().ttl;
    let caps = store.capabilities();
    let on_crashed = session(1, "crashed-node", 10);
    let on_living = session(2, "living-node", 20);
    for s in [&on_crashed, &on_living] {
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding");
    }
    let heartbeat = Heartbeat::start(&store, "living-node", ttl);
    // From here on "crashed-node" never refreshes again.

    let within = expiry_deadline(ttl);
    let store_ref = &store;
    let expired = eventually(within, move || async move {
        store_ref.get(UserId(1)).await.must("get").is_none()
    })
    .await;
    assert!(
        expired,
        "the session of a server that stopped refreshing must expire within {within:?} (TTL \
         {ttl:?})"
    );
    assert_eq!(
        store
            .get(UserId(2))
            .await
            .must("get of the living server's user"),
        Some(on_living.clone()),
        "a refreshing server's session must not expire with another server's"
    );
    if caps.count_online {
        assert_eq!(
            store.count_online().await.must("count_online"),
            1,
            "an expired session must not be counted"
        );
    }
    if caps.list_online {
        let listed = all_pages("listing after the expiry", 10, |cursor| {
            let store = Arc::clone(&store);
            async move { store.list_online(cursor.as_ref(), 10).await }
        })
        .await;
        assert_eq!(
            listed,
            vec![on_living],
            "an expired session must not be listed"
        );
    }

    let elsewhere = session(1, "living-node", 30);
    assert_eq!(
        store
            .bind(elsewhere.clone(), BindPolicy::Reject)
            .await
            .must("a Reject bind after the old server died"),
        BindOutcome::Bound,
        "a user whose server died must be able to log in again, not be locked out"
    );
    assert_eq!(store.get(UserId(1)).await.must("get"), Some(elsewhere));
    heartbeat.stop().await;
}

/// `remove_server` removes every session of that server, and only those, and returns how many.
pub async fn remove_server_removes_only_that_servers_sessions(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let dead: Vec<Session> = (1..=3).map(|u| session(u, "dead-node", u)).collect();
    let alive: Vec<Session> = (4..=5).map(|u| session(u, "alive-node", u)).collect();
    for s in dead.iter().chain(&alive) {
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding");
    }

    assert_eq!(
        store
            .remove_server(&server_id("dead-node"))
            .await
            .must("remove_server"),
        3,
        "remove_server must return how many sessions it removed"
    );
    for s in &dead {
        assert_eq!(
            store.get(s.user_id).await.must("get"),
            None,
            "user {} of the removed server must be offline",
            s.user_id
        );
    }
    for s in &alive {
        assert_eq!(
            store.get(s.user_id).await.must("get"),
            Some(s.clone()),
            "user {} of another server must stay online",
            s.user_id
        );
    }
    assert_eq!(
        store
            .remove_server(&server_id("dead-node"))
            .await
            .must("remove_server again"),
        0,
        "a second remove_server has nothing left to remove"
    );
}

/// Walking `list_online` 10 at a time through 95 sessions returns each exactly once, ordered by
/// user id, each page within the limit.
pub async fn list_online_pages_through_every_user_once_in_order(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    let heartbeat = Heartbeat::start(&store, "paging-node", h.ctx().ttl);
    // Bound in a scrambled order, so that insertion order cannot pass for user-id order.
    let mut bound = BTreeMap::new();
    for i in 0..95u64 {
        let user = 1 + (i * 37) % 95;
        let s = session(user, "paging-node", 100 + user);
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding");
        bound.insert(s.user_id, s);
    }

    let listed = all_pages("listing online sessions", 10, |cursor| {
        let store = Arc::clone(&store);
        async move { store.list_online(cursor.as_ref(), 10).await }
    })
    .await;

    let expected: Vec<Session> = bound.into_values().collect();
    assert_eq!(
        listed.iter().map(|s| s.user_id.0).collect::<Vec<_>>(),
        (1..=95).collect::<Vec<_>>(),
        "the walk must return every online user exactly once, ordered by user id"
    );
    assert_eq!(
        listed, expected,
        "the walk must return the sessions as bound"
    );
    heartbeat.stop().await;
}

/// While others bind and unbind users 1000 and up, a walk through `list_online` returns each of
/// the users 1..=60 (live for the whole walk) exactly once, no user twice, all ordered by id.
pub async fn list_online_walk_is_exact_under_concurrent_writes(h: Harness<dyn SessionStore>) {
    assert_exact_walk_during_churn(h, (1..=60).collect(), (1000..1100).collect()).await;
}

/// While users whose ids lie between theirs come and go, a walk through `list_online` still
/// returns each of 60 users live for the whole walk exactly once: the cursor is a position in
/// the user-id order, not an offset that binds and unbinds before it would shift.
pub async fn list_online_walk_is_exact_while_users_in_between_come_and_go(
    h: Harness<dyn SessionStore>,
) {
    let stable = (1..=60).map(|n| 2 * n).collect();
    let churn = (0..60).map(|n| 2 * n + 1).collect();
    assert_exact_walk_during_churn(h, stable, churn).await;
}

/// Binds the `stable` users, then walks `list_online` while a task keeps binding and unbinding
/// `churn` users (about ten online at a time, in a scattered order), with churn between every
/// two pages. Asserts the walk returns every stable user exactly once as bound, no user twice,
/// nobody else, all ordered by user id.
async fn assert_exact_walk_during_churn(
    h: Harness<dyn SessionStore>,
    stable: Vec<u64>,
    churn: Vec<u64>,
) {
    const LIMIT: u32 = 7;
    const ONLINE: u64 = 10;
    let store = h.store().await;
    let heartbeat = Heartbeat::start(&store, "stable-node", h.ctx().ttl);
    let mut bound = BTreeMap::new();
    for &user in &stable {
        let s = session(user, "stable-node", user);
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding a stable user");
        bound.insert(s.user_id, s);
    }

    // Step n binds churn user (7n mod len) and unbinds the one bound ONLINE steps before; 7 is
    // coprime with the lengths used, so a user comes back only after len steps. The task reports
    // its step count, so the walk can make sure writes happen between its pages without sleeping.
    let len = churn.len() as u64;
    assert!(
        len > ONLINE && !len.is_multiple_of(7),
        "the churn needs more ids"
    );
    let churn_user = {
        let churn = churn.clone();
        move |step: u64| churn[((step * 7) % len) as usize]
    };
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        let churn_user = churn_user.clone();
        tokio::spawn(async move {
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let arriving = session(churn_user(step), "churn-node", step);
                store
                    .bind(arriving, BindPolicy::Reject)
                    .await
                    .must("a churn bind");
                if step >= ONLINE {
                    let gone = step - ONLINE;
                    let leaving = session(churn_user(gone), "churn-node", gone);
                    assert!(
                        store
                            .unbind(&leaving.reference())
                            .await
                            .must("a churn unbind"),
                        "unbinding the session bound {ONLINE} steps ago must remove it"
                    );
                }
                step += 1;
                progress_tx.send_replace(step);
                // An in-memory store never suspends; without this the walk, woken by the send
                // above, would wait in this worker's queue behind a task that never yields.
                tokio::task::yield_now().await;
            }
        })
    };

    let mut listed = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        // At least two churn steps between consecutive pages.
        let seen = *progress.borrow_and_update();
        if progress.wait_for(|step| *step >= seen + 2).await.is_err() {
            join_task(churner).await;
            panic!("the churn task stopped early");
        }
        let page = store
            .list_online(cursor.as_ref(), LIMIT)
            .await
            .must("listing a page during the churn");
        assert!(
            page.items.len() <= LIMIT as usize,
            "a page held {} items, more than the limit of {LIMIT}",
            page.items.len()
        );
        listed.extend(page.items);
        pages += 1;
        assert!(
            pages <= MAX_PAGES,
            "the listing still had a next page after {MAX_PAGES} pages"
        );
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    join_task(churner).await;

    let ids: Vec<u64> = listed.iter().map(|s| s.user_id.0).collect();
    let mut distinct = HashSet::new();
    let twice: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| !distinct.insert(*id))
        .collect();
    assert!(
        twice.is_empty(),
        "a walk must never return a user twice, but returned {twice:?} again"
    );
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "the walk must be ordered by user id: {ids:?}"
    );
    assert!(
        ids.iter()
            .all(|id| stable.contains(id) || churn.contains(id)),
        "the walk returned a user nobody bound: {ids:?}"
    );
    let stable_listed: Vec<Session> = listed
        .into_iter()
        .filter(|s| stable.contains(&s.user_id.0))
        .collect();
    let expected: Vec<Session> = bound.into_values().collect();
    assert_eq!(
        stable_listed, expected,
        "every session live for the whole walk must appear exactly once, as bound"
    );
    heartbeat.stop().await;
}

/// A page limit of 0 is `InvalidInput`.
pub async fn list_online_rejects_a_limit_of_zero(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    store
        .bind(session(1, "node-a", 10), BindPolicy::Reject)
        .await
        .must("binding");
    assert_kind(
        store.list_online(None, 0).await,
        ErrorKind::InvalidInput,
        "list_online with a limit of 0",
    );
}

/// `count_online` counts the users with a live session: binds add, unbinds subtract, a replace
/// or a rebind of the same session changes nothing.
pub async fn count_online_counts_live_sessions(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    assert_eq!(store.count_online().await.must("count_online"), 0);
    let sessions: Vec<Session> = (1..=5)
        .map(|u| session(u, if u % 2 == 0 { "node-a" } else { "node-b" }, u))
        .collect();
    for s in &sessions {
        store
            .bind(s.clone(), BindPolicy::Reject)
            .await
            .must("binding");
    }
    assert_eq!(store.count_online().await.must("count_online"), 5);

    store
        .unbind(&sessions[0].reference())
        .await
        .must("unbinding");
    assert_eq!(
        store.count_online().await.must("count_online"),
        4,
        "an unbound user must no longer be counted"
    );

    store
        .bind(session(2, "node-b", 99), BindPolicy::Replace)
        .await
        .must("replacing");
    store
        .bind(sessions[2].clone(), BindPolicy::Reject)
        .await
        .must("rebinding the same session");
    assert_eq!(
        store.count_online().await.must("count_online"),
        4,
        "a user counts once, whatever replaced or rebound their session"
    );
}

/// A backend that does not claim `list_online` says so with `Unsupported`.
pub async fn list_online_is_unsupported_when_not_claimed(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    assert_kind(
        store.list_online(None, 10).await,
        ErrorKind::Unsupported,
        "list_online on a backend that does not claim it",
    );
}

/// A backend that does not claim `count_online` says so with `Unsupported`.
pub async fn count_online_is_unsupported_when_not_claimed(h: Harness<dyn SessionStore>) {
    let store = h.store().await;
    assert_kind(
        store.count_online().await,
        ErrorKind::Unsupported,
        "count_online on a backend that does not claim it",
    );
}

/// `count` sessions of `user`, each on its own connection, spread over five servers.
fn contenders(user: u64, count: u64) -> Vec<Session> {
    (0..count)
        .map(|i| session(user, &format!("node-{}", i % 5), 1000 + i))
        .collect()
}

/// Binds every session from its own task, all released at once; returns each with its outcome.
async fn bind_concurrently(
    store: &Arc<dyn SessionStore>,
    sessions: Vec<Session>,
    policy: BindPolicy,
) -> Vec<(Session, cim_core::Result<BindOutcome>)> {
    let start = Arc::new(tokio::sync::Barrier::new(sessions.len()));
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let store = Arc::clone(store);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let outcome = store.bind(s.clone(), policy).await;
                (s, outcome)
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(join_task(task).await);
    }
    outcomes
}

/// A live cim node: refreshes its server every third of the TTL until stopped or dropped.
struct Heartbeat {
    task: Option<tokio::task::JoinHandle<cim_core::Result<()>>>,
}

impl Heartbeat {
    fn start(store: &Arc<dyn SessionStore>, server: &str, ttl: Duration) -> Self {
        let store = Arc::clone(store);
        let server = server_id(server);
        let task = tokio::spawn(async move {
            let mut beats = tokio::time::interval(ttl / 3);
            beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beats.tick().await;
                store.refresh_server(&server).await?;
            }
        });
        Heartbeat { task: Some(task) }
    }

    /// Stops refreshing; fails the case if a refresh had failed.
    async fn stop(mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        if task.is_finished() {
            join_task(task).await.must("refreshing the server");
        } else {
            task.abort();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
