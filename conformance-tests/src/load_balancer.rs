//! Cases for [`cim_core::LoadBalancer`]: a pick returns one of the servers last set, exactly as
//! set, never one the caller excludes and never one of weight 0 (a drained server); with none
//! left, or none set, it fails with `Unavailable`. `set_servers` replaces the whole set, and
//! picking is safe from many threads at once, also while the set is being replaced. A sticky
//! strategy (`caps.sticky`, consistent hashing) also keeps each user on one server while the set
//! of server ids is unchanged, sends only about 1/(N+1) of the users to a server added to N, all
//! of them to the new one, and moves only a removed server's users.

use std::collections::BTreeMap;
use std::sync::Arc;

use cim_core::{BalancerCapabilities, ErrorKind, LoadBalancer, ServerId, ServerInfo, UserId};

use crate::case::{Case, Harness, boxed};
use crate::support::*;

/// How many users the distribution cases pick for.
const USERS: u64 = 10_000;

/// Every case of this trait, in order.
pub fn cases() -> Vec<Case<dyn LoadBalancer>> {
    vec![
        Case::always("pick_from_an_empty_set_is_unavailable", |h| {
            boxed(pick_from_an_empty_set_is_unavailable(h))
        }),
        Case::always("pick_returns_only_servers_that_were_set", |h| {
            boxed(pick_returns_only_servers_that_were_set(h))
        }),
        Case::always("pick_never_returns_an_excluded_server", |h| {
            boxed(pick_never_returns_an_excluded_server(h))
        }),
        Case::always("servers_of_weight_zero_are_never_picked", |h| {
            boxed(servers_of_weight_zero_are_never_picked(h))
        }),
        Case::always("set_servers_replaces_the_candidates", |h| {
            boxed(set_servers_replaces_the_candidates(h))
        }),
        Case::always("concurrent_picks_from_many_threads_are_valid", |h| {
            boxed(concurrent_picks_from_many_threads_are_valid(h))
        }),
        Case::always("picks_while_the_set_is_replaced_come_from_a_set", |h| {
            boxed(picks_while_the_set_is_replaced_come_from_a_set(h))
        }),
        Case::when(
            "sticky_picks_are_stable_while_the_set_is_unchanged",
            |caps: &BalancerCapabilities| caps.sticky,
            |h| boxed(sticky_picks_are_stable_while_the_set_is_unchanged(h)),
        ),
        Case::when(
            "adding_a_server_moves_about_one_in_n_plus_one_users_all_to_it",
            |caps: &BalancerCapabilities| caps.sticky,
            |h| boxed(adding_a_server_moves_about_one_in_n_plus_one_users_all_to_it(h)),
        ),
        Case::when(
            "removing_a_server_moves_only_its_users",
            |caps: &BalancerCapabilities| caps.sticky,
            |h| boxed(removing_a_server_moves_only_its_users(h)),
        ),
    ]
}

/// With no servers set, or an empty set, a pick fails with `Unavailable`.
pub async fn pick_from_an_empty_set_is_unavailable(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    assert_kind(
        balancer.pick(UserId(1), &[]),
        ErrorKind::Unavailable,
        "a pick before any set_servers",
    );

    balancer.set_servers(servers(3));
    balancer
        .pick(UserId(1), &[])
        .must("a pick among three servers");
    balancer.set_servers(Vec::new());
    assert_kind(
        balancer.pick(UserId(1), &[]),
        ErrorKind::Unavailable,
        "a pick after the set was emptied",
    );
}

/// Every pick returns one of the servers set, with exactly the information it was set with.
pub async fn pick_returns_only_servers_that_were_set(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    let set = servers(5);
    balancer.set_servers(set.clone());

    for user in 1..=1000 {
        let picked = balancer.pick(UserId(user), &[]).must("picking");
        assert!(
            set.contains(&picked),
            "user {user} got a server that was not set (or not as set): {picked:?}"
        );
    }
}

/// A pick never returns an excluded server (ids that are not in the set are harmless), and
/// excluding every server leaves nothing: `Unavailable`.
pub async fn pick_never_returns_an_excluded_server(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    let set = servers(4);
    balancer.set_servers(set.clone());
    let excluded = vec![
        set[0].id.clone(),
        set[2].id.clone(),
        server_id("not-a-member"),
    ];

    for user in 1..=1000 {
        let picked = balancer.pick(UserId(user), &excluded).must("picking");
        assert!(
            picked == set[1] || picked == set[3],
            "user {user} got {}, which is excluded or unknown",
            picked.id
        );
    }
    let everyone: Vec<ServerId> = set.iter().map(|s| s.id.clone()).collect();
    for user in 1..=10 {
        assert_kind(
            balancer.pick(UserId(user), &everyone),
            ErrorKind::Unavailable,
            "a pick that excludes every server",
        );
    }
}

/// A server of weight 0 (drained) is never picked; when only drained servers are left, a pick
/// fails with `Unavailable`.
pub async fn servers_of_weight_zero_are_never_picked(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    let mut set = servers(3);
    set[1].weight = 0;
    balancer.set_servers(set.clone());

    for user in 1..=1000 {
        let picked = balancer.pick(UserId(user), &[]).must("picking");
        assert_ne!(
            picked.id, set[1].id,
            "user {user} got the drained server (weight 0)"
        );
    }
    assert_kind(
        balancer.pick(UserId(1), &[set[0].id.clone(), set[2].id.clone()]),
        ErrorKind::Unavailable,
        "a pick whose only non-excluded server is drained",
    );

    let all_drained: Vec<ServerInfo> = set
        .into_iter()
        .map(|mut s| {
            s.weight = 0;
            s
        })
        .collect();
    balancer.set_servers(all_drained);
    assert_kind(
        balancer.pick(UserId(1), &[]),
        ErrorKind::Unavailable,
        "a pick when every server is drained",
    );
}

/// `set_servers` replaces the whole set: a server that was removed is never picked again, and a
/// server that stayed is returned with its new information.
pub async fn set_servers_replaces_the_candidates(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    let old = servers(3);
    balancer.set_servers(old.clone());
    for user in 1..=100 {
        balancer
            .pick(UserId(user), &[])
            .must("picking from the old set");
    }

    let mut stayed = old[2].clone();
    stayed.load = 17;
    let new = vec![stayed, server_info("newcomer", 9500)];
    balancer.set_servers(new.clone());

    for user in 1..=1000 {
        let picked = balancer
            .pick(UserId(user), &[])
            .must("picking from the new set");
        assert!(
            new.contains(&picked),
            "after set_servers, user {user} got {picked:?}, which is not in the new set as set"
        );
    }
}

/// Eight threads picking at once all get servers of the set.
pub async fn concurrent_picks_from_many_threads_are_valid(h: Harness<dyn LoadBalancer>) {
    const THREADS: u64 = 8;
    const PICKS: u64 = 5_000;
    let balancer = h.store().await;
    let set = Arc::new(servers(6));
    balancer.set_servers(set.to_vec());
    let start = Arc::new(std::sync::Barrier::new(THREADS as usize));

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let balancer = Arc::clone(&balancer);
            let set = Arc::clone(&set);
            let start = Arc::clone(&start);
            tokio::task::spawn_blocking(move || {
                start.wait();
                for i in 0..PICKS {
                    let user = UserId(t * PICKS + i);
                    let picked = balancer.pick(user, &[]).must("picking from a thread");
                    assert!(
                        set.contains(&picked),
                        "a concurrent pick returned a server that was not set: {picked:?}"
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        join_task(thread).await;
    }
}

/// While one thread keeps replacing the set (two overlapping sets in turn), picks from other
/// threads always succeed and return a server of one of the sets.
pub async fn picks_while_the_set_is_replaced_come_from_a_set(h: Harness<dyn LoadBalancer>) {
    const PICKERS: u64 = 4;
    const PICKS: u64 = 5_000;
    const SWAPS: usize = 500;
    let balancer = h.store().await;
    let all = servers(4);
    let first = all[..3].to_vec();
    let second = all[1..].to_vec();
    balancer.set_servers(first.clone());
    let start = Arc::new(std::sync::Barrier::new(PICKERS as usize + 1));

    let swapper = {
        let balancer = Arc::clone(&balancer);
        let start = Arc::clone(&start);
        tokio::task::spawn_blocking(move || {
            start.wait();
            for swap in 0..SWAPS {
                let set = if swap % 2 == 0 { &second } else { &first };
                balancer.set_servers(set.clone());
            }
        })
    };
    let all = Arc::new(all);
    let pickers: Vec<_> = (0..PICKERS)
        .map(|t| {
            let balancer = Arc::clone(&balancer);
            let all = Arc::clone(&all);
            let start = Arc::clone(&start);
            tokio::task::spawn_blocking(move || {
                start.wait();
                for i in 0..PICKS {
                    let picked = balancer
                        .pick(UserId(t * PICKS + i), &[])
                        .must("picking while the set is replaced (never empty)");
                    assert!(
                        all.contains(&picked),
                        "a pick during set_servers returned a server of neither set: {picked:?}"
                    );
                }
            })
        })
        .collect();
    join_task(swapper).await;
    for picker in pickers {
        join_task(picker).await;
    }
}

/// A sticky strategy gives a user the same server at every pick while the set of server ids is
/// unchanged, also across a `set_servers` with the same ids in another order and new loads.
pub async fn sticky_picks_are_stable_while_the_set_is_unchanged(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    let set = servers(10);
    balancer.set_servers(set.clone());
    let first = assignment(balancer.as_ref());
    assert_eq!(
        assignment(balancer.as_ref()),
        first,
        "a sticky strategy must give each user the same server at every pick"
    );

    let reloaded: Vec<ServerInfo> = set
        .into_iter()
        .rev()
        .enumerate()
        .map(|(i, mut s)| {
            s.load = 1000 * (i as u64 + 1);
            s
        })
        .collect();
    balancer.set_servers(reloaded);
    let after_reload = assignment(balancer.as_ref());
    let moved = first
        .iter()
        .filter(|(user, server)| after_reload.get(user) != Some(server))
        .count();
    assert_eq!(
        moved, 0,
        "new loads (same server ids, another order) must not move anyone, but {moved} users moved"
    );
}

/// Adding an 11th server to 10 moves only about 1/11 of the users (between 5 % and 14 % of
/// 10,000), and every user who moved went to the new server.
pub async fn adding_a_server_moves_about_one_in_n_plus_one_users_all_to_it(
    h: Harness<dyn LoadBalancer>,
) {
    let balancer = h.store().await;
    let mut set = servers(10);
    let newcomer = servers(11)[10].clone();
    balancer.set_servers(set.clone());
    let before = assignment(balancer.as_ref());

    set.push(newcomer.clone());
    balancer.set_servers(set);
    let after = assignment(balancer.as_ref());

    let mut moved = 0u64;
    for (user, was) in &before {
        let is = &after[user];
        if is != was {
            assert_eq!(
                is, &newcomer.id,
                "user {user} moved from {was} to {is}: users may only move to the new server"
            );
            moved += 1;
        }
    }
    let fraction = moved as f64 / USERS as f64;
    assert!(
        (0.05..=0.14).contains(&fraction),
        "adding one server to 10 moved {moved} of {USERS} users ({:.1} %), expected about 1/11 \
         (5 % to 14 %)",
        fraction * 100.0
    );
}

/// Removing one of 10 servers moves only the users it had; everyone else stays put.
pub async fn removing_a_server_moves_only_its_users(h: Harness<dyn LoadBalancer>) {
    let balancer = h.store().await;
    let mut set = servers(10);
    balancer.set_servers(set.clone());
    let before = assignment(balancer.as_ref());

    let removed = set.remove(3);
    balancer.set_servers(set);
    let after = assignment(balancer.as_ref());

    let mut had = 0;
    for (user, was) in &before {
        let is = &after[user];
        if *was == removed.id {
            had += 1;
            assert_ne!(is, &removed.id, "user {user} still got the removed server");
        } else {
            assert_eq!(
                is, was,
                "user {user} moved from {was} to {is} although only {} was removed",
                removed.id
            );
        }
    }
    assert!(
        had > 0,
        "the removed server had no users among {USERS}, so the case proved nothing"
    );
}

/// `count` servers `lb-00`, `lb-01`... with distinct ports, loads and a zone label, so that a
/// pick returning a mangled copy is noticed.
fn servers(count: u16) -> Vec<ServerInfo> {
    (0..count)
        .map(|i| {
            let mut info = server_info(&format!("lb-{i:02}"), 9000 + 2 * i);
            info.load = u64::from(i) * 10;
            info.metadata
                .insert("zone".into(), format!("zone-{}", i % 3));
            info
        })
        .collect()
}

/// The server each of users 1..=[`USERS`] gets.
fn assignment(balancer: &dyn LoadBalancer) -> BTreeMap<UserId, ServerId> {
    (1..=USERS)
        .map(|user| {
            let picked = balancer.pick(UserId(user), &[]).must("picking");
            (UserId(user), picked.id)
        })
        .collect()
}
