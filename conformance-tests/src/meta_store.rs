//! Cases for [`cim_core::MetaStore`]: a registered server is listed (ordered by id) until it
//! deregisters or its lease expires, and only one live registration may hold an id. The lease is
//! renewed for as long as the [`Registration`] value lives; dropping it is how a crashed owner
//! looks, so the server must vanish within the TTL plus at most one more, while a registration
//! that stays alive must survive any number of TTLs. A watch starts with a snapshot equal to
//! `list()`, then reports every change in order; when it may have missed some (a watcher that
//! fell behind) it resyncs with a fresh snapshot, so folding its events always converges to
//! `list()` and never shows a server that does not exist.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cim_core::{
    ErrorKind, MetaCapabilities, MetaEvent, MetaStore, MetaWatch, Registration, ServerId,
    ServerInfo,
};
use futures::StreamExt;

use crate::case::{Case, Harness, boxed};
use crate::support::*;

/// How long a change may take to reach a watcher: a guard against a hang, not a speed target.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// How long a watcher that fell far behind may take to catch up with `list()`.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(30);

/// Every case of this trait, in order.
pub fn cases() -> Vec<Case<dyn MetaStore>> {
    vec![
        Case::always("registered_servers_are_listed_ordered_by_id", |h| {
            boxed(registered_servers_are_listed_ordered_by_id(h))
        }),
        Case::always("registration_reports_its_server_id_and_ttl", |h| {
            boxed(registration_reports_its_server_id_and_ttl(h))
        }),
        Case::always("deregister_removes_the_server_at_once", |h| {
            boxed(deregister_removes_the_server_at_once(h))
        }),
        Case::always(
            "registering_a_live_id_again_fails_with_already_exists",
            |h| boxed(registering_a_live_id_again_fails_with_already_exists(h)),
        ),
        Case::always("update_is_seen_by_list", |h| {
            boxed(update_is_seen_by_list(h))
        }),
        Case::always("update_with_another_id_is_invalid_input", |h| {
            boxed(update_with_another_id_is_invalid_input(h))
        }),
        Case::always("dropped_registration_expires_from_list", |h| {
            boxed(dropped_registration_expires_from_list(h))
        }),
        Case::always("live_registration_stays_listed_across_several_ttls", |h| {
            boxed(live_registration_stays_listed_across_several_ttls(h))
        }),
        Case::when(
            "watch_starts_with_a_snapshot_equal_to_list",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(watch_starts_with_a_snapshot_equal_to_list(h)),
        ),
        Case::when(
            "watch_reports_changes_in_the_order_they_happened",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(watch_reports_changes_in_the_order_they_happened(h)),
        ),
        Case::when(
            "watchers_see_an_update_as_updated",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(watchers_see_an_update_as_updated(h)),
        ),
        Case::when(
            "watchers_see_a_dropped_registration_removed",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(watchers_see_a_dropped_registration_removed(h)),
        ),
        Case::when(
            "watchers_see_no_removal_of_a_live_registration",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(watchers_see_no_removal_of_a_live_registration(h)),
        ),
        Case::when(
            "watch_converges_to_list_after_a_burst_of_changes",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(watch_converges_to_list_after_a_burst_of_changes(h)),
        ),
        Case::when(
            "two_watchers_see_the_same_sequence",
            |caps: &MetaCapabilities| caps.watch,
            |h| boxed(two_watchers_see_the_same_sequence(h)),
        ),
        Case::when(
            "watch_is_unsupported_when_not_claimed",
            |caps: &MetaCapabilities| !caps.watch,
            |h| boxed(watch_is_unsupported_when_not_claimed(h)),
        ),
    ]
}

/// `list()` returns every registered server, exactly as registered, ordered by id whatever the
/// order of registration.
pub async fn registered_servers_are_listed_ordered_by_id(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    assert_eq!(
        store.list().await.must("listing an empty store"),
        Vec::new(),
        "a fresh store lists no server"
    );
    let mut charlie = server_info("charlie", 7004);
    charlie.metadata.insert("zone".into(), "eu-west-1a".into());
    charlie.http_port = Some(7080);
    let alpha = server_info("alpha", 7000);
    let bravo = server_info("bravo", 7002);

    let mut registrations = Vec::new();
    for info in [charlie.clone(), alpha.clone(), bravo.clone()] {
        registrations.push(store.register(info).await.must("registering"));
    }

    assert_eq!(
        store.list().await.must("listing"),
        vec![alpha, bravo, charlie],
        "list() must return the registered servers, unchanged, ordered by id"
    );
}

/// A registration knows its server's id and reports a usable TTL.
pub async fn registration_reports_its_server_id_and_ttl(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let registration = store
        .register(server_info("ttl-node", 7000))
        .await
        .must("registering");

    assert_eq!(registration.server_id(), &server_id("ttl-node"));
    let min_ttl = store.capabilities().min_ttl;
    assert!(
        registration.ttl() > Duration::ZERO && registration.ttl() >= min_ttl,
        "the TTL in force ({:?}) must be positive and at least the backend's minimum ({min_ttl:?})",
        registration.ttl()
    );
}

/// `deregister` removes the server at once, and frees its id for a new registration.
pub async fn deregister_removes_the_server_at_once(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let leaving = store
        .register(server_info("leaving", 7000))
        .await
        .must("registering the leaving server");
    let _staying = store
        .register(server_info("staying", 7002))
        .await
        .must("registering the staying server");

    leaving.deregister().await.must("deregistering");

    assert_eq!(
        store.list().await.must("listing"),
        vec![server_info("staying", 7002)],
        "a deregistered server must be gone from list() at once, and only that one"
    );
    let again = store
        .register(server_info("leaving", 7010))
        .await
        .must("registering a deregistered id again");
    assert_eq!(again.server_id(), &server_id("leaving"));
    assert_eq!(
        store.list().await.must("listing"),
        vec![server_info("leaving", 7010), server_info("staying", 7002)]
    );
}

/// A second registration of an id that is still live fails with a retryable `AlreadyExists`
/// and leaves the first registration in place.
pub async fn registering_a_live_id_again_fails_with_already_exists(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let first = server_info("contested", 7000);
    let _registration = store
        .register(first.clone())
        .await
        .must("registering the first time");

    match store.register(server_info("contested", 7100)).await {
        Ok(second) => panic!("a second live registration of the same id succeeded: {second:?}"),
        Err(e) => {
            assert_eq!(
                e.kind(),
                ErrorKind::AlreadyExists,
                "registering a live id again: expected AlreadyExists, got {e}"
            );
            assert!(
                e.is_retryable(),
                "AlreadyExists on register must be retryable (a restarted server waits for its \
                 predecessor's lease): {e}"
            );
        }
    }
    assert_eq!(
        store.list().await.must("listing"),
        vec![first],
        "the failed registration must not change the live one"
    );
}

/// `Registration::update` replaces the registered information, as `list()` shows.
pub async fn update_is_seen_by_list(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let registration = store
        .register(server_info("busy", 7000))
        .await
        .must("registering");
    let updated = busier(server_info("busy", 7000), 1234);

    registration.update(updated.clone()).await.must("updating");

    assert_eq!(
        store.list().await.must("listing"),
        vec![updated],
        "list() must show the updated registration"
    );
}

/// Updating a registration with information for another id is `InvalidInput` and changes
/// nothing.
pub async fn update_with_another_id_is_invalid_input(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let original = server_info("mine", 7000);
    let registration = store.register(original.clone()).await.must("registering");

    assert_kind(
        registration.update(server_info("someone-else", 7000)).await,
        ErrorKind::InvalidInput,
        "updating a registration with another server's id",
    );
    assert_eq!(
        store.list().await.must("listing"),
        vec![original],
        "a rejected update must change nothing"
    );
}

/// Dropping a registration without deregistering (a crashed owner) makes the server disappear
/// from `list()` within the TTL plus the backend's tolerance; other servers stay, and the id can
/// then be registered again.
pub async fn dropped_registration_expires_from_list(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let crashed = store
        .register(server_info("crashed", 7000))
        .await
        .must("registering the crashed server");
    let staying = store
        .register(server_info("staying", 7002))
        .await
        .must("registering the staying server");
    let ttl = lease_ttl(&h, &crashed).max(staying.ttl());

    drop(crashed);

    let within = expiry_deadline(ttl);
    let store_ref = &store;
    let expired = eventually(within, move || async move {
        let listed = store_ref.list().await.must("listing");
        !listed.iter().any(|s| s.id.as_str() == "crashed")
    })
    .await;
    assert!(
        expired,
        "a dropped registration must leave list() within {within:?} (TTL {ttl:?})"
    );
    assert_eq!(
        store.list().await.must("listing"),
        vec![server_info("staying", 7002)],
        "the expiry of one lease must not touch the live ones"
    );
    let successor = store
        .register(server_info("crashed", 7010))
        .await
        .must("registering the id of an expired registration");
    assert_eq!(successor.server_id(), &server_id("crashed"));
}

/// A registration that stays alive is renewed: it is listed at every look across three TTLs.
pub async fn live_registration_stays_listed_across_several_ttls(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let registration = store
        .register(server_info("long-lived", 7000))
        .await
        .must("registering");
    let ttl = lease_ttl(&h, &registration);

    let end = tokio::time::Instant::now() + ttl * 3;
    let mut looks = tokio::time::interval(ttl / 4);
    let started = tokio::time::Instant::now();
    while tokio::time::Instant::now() < end {
        looks.tick().await;
        let listed = store.list().await.must("listing");
        assert_eq!(
            listed,
            vec![server_info("long-lived", 7000)],
            "a live registration vanished from list() after {:?} (TTL {ttl:?}): its lease is \
             not renewed",
            started.elapsed()
        );
    }
    registration.deregister().await.must("deregistering");
}

/// A watch starts with a snapshot of the live servers, the same as `list()`.
pub async fn watch_starts_with_a_snapshot_equal_to_list(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let mut registrations = Vec::new();
    for (id, port) in [("node-b", 7002), ("node-a", 7000), ("node-c", 7004)] {
        registrations.push(
            store
                .register(server_info(id, port))
                .await
                .must("registering"),
        );
    }

    let mut watch = store.watch().await.must("opening a watch");
    let snapshot = first_snapshot(&mut watch).await;

    let listed = store.list().await.must("listing");
    assert_eq!(listed.len(), 3, "list() must show the three servers");
    assert_eq!(
        snapshot, listed,
        "the first snapshot (sorted by id) must equal list()"
    );
}

/// After the snapshot, a watch reports each change in the order it happened: register a,
/// register b, update a, deregister b.
pub async fn watch_reports_changes_in_the_order_they_happened(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let mut watch = store.watch().await.must("opening a watch");
    assert_eq!(
        first_snapshot(&mut watch).await,
        Vec::new(),
        "the snapshot of an empty store is empty"
    );

    let a = server_info("node-a", 7000);
    let b = server_info("node-b", 7002);
    let a_updated = busier(a.clone(), 42);
    let registration_a = store.register(a.clone()).await.must("registering a");
    let registration_b = store.register(b.clone()).await.must("registering b");
    registration_a
        .update(a_updated.clone())
        .await
        .must("updating a");
    registration_b.deregister().await.must("deregistering b");

    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_event(&mut watch, "waiting for the four changes").await);
    }
    assert_eq!(
        seen,
        vec![
            MetaEvent::Added(a),
            MetaEvent::Added(b.clone()),
            MetaEvent::Updated(a_updated),
            MetaEvent::Removed(b.id),
        ],
        "the watch must report the changes, and only them, in the order they happened"
    );
}

/// An update of a live registration reaches watchers as `Updated` with the new information.
pub async fn watchers_see_an_update_as_updated(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let original = server_info("updating", 7000);
    let registration = store.register(original.clone()).await.must("registering");
    let mut watch = store.watch().await.must("opening a watch");
    assert_eq!(first_snapshot(&mut watch).await, vec![original.clone()]);

    let updated = busier(original, 99);
    registration.update(updated.clone()).await.must("updating");

    assert_eq!(
        next_event(&mut watch, "waiting for the update").await,
        MetaEvent::Updated(updated),
        "an update must reach watchers as Updated with the new information"
    );
}

/// Dropping a registration (a crashed owner) reaches watchers as the server's removal within
/// the TTL plus the backend's tolerance; `list()` agrees, and other servers are untouched.
pub async fn watchers_see_a_dropped_registration_removed(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let crashed = store
        .register(server_info("crashed", 7000))
        .await
        .must("registering the crashed server");
    let staying = store
        .register(server_info("staying", 7002))
        .await
        .must("registering the staying server");
    let ttl = lease_ttl(&h, &crashed).max(staying.ttl());
    let mut watch = store.watch().await.must("opening a watch");
    let mut known = Folded::default();
    known.apply(MetaEvent::Snapshot(first_snapshot(&mut watch).await));
    let crashed_id = server_id("crashed");
    assert!(
        known.servers.contains_key(&crashed_id),
        "the snapshot must hold the registered server"
    );

    drop(crashed);

    let within = expiry_deadline(ttl);
    let removal = tokio::time::timeout(within, async {
        // A resync snapshot without the server is as good as a Removed: both fold to "gone".
        while known.servers.contains_key(&crashed_id) {
            match watch.next().await {
                Some(Ok(event)) => known.apply(event),
                Some(Err(_)) => {} // transient; the next item may be a snapshot
                None => panic!("the watch ended while the store is alive"),
            }
        }
    })
    .await;
    assert!(
        removal.is_ok(),
        "watchers must see a dropped registration removed within {within:?} (TTL {ttl:?})"
    );
    assert!(
        known.servers.contains_key(&server_id("staying")),
        "the watcher must still know the live server"
    );
    assert_eq!(
        store.list().await.must("listing"),
        vec![server_info("staying", 7002)],
        "once watchers saw the removal, list() must not have the server either"
    );
}

/// A registration that stays alive is never reported removed: watching for three TTLs shows no
/// removal of it, and it is still listed afterwards.
pub async fn watchers_see_no_removal_of_a_live_registration(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    let info = server_info("long-lived", 7000);
    let registration = store.register(info.clone()).await.must("registering");
    let ttl = lease_ttl(&h, &registration);
    let mut watch = store.watch().await.must("opening a watch");
    assert_eq!(first_snapshot(&mut watch).await, vec![info.clone()]);

    // This timeout is expected to elapse: reaching its end with nothing to report is the pass.
    let watched = ttl * 3;
    let removal = tokio::time::timeout(watched, async {
        loop {
            match watch.next().await {
                Some(Ok(MetaEvent::Removed(id))) if id == info.id => {
                    return "a Removed event".to_string();
                }
                Some(Ok(MetaEvent::Snapshot(servers))) if !servers.contains(&info) => {
                    return format!("a snapshot without it: {servers:?}");
                }
                Some(_) => {}
                None => return "the end of the watch".to_string(),
            }
        }
    })
    .await;
    if let Ok(what) = removal {
        panic!("a live registration must never be removed, but watching it showed {what}");
    }
    assert_eq!(
        store.list().await.must("listing"),
        vec![info],
        "a live registration must still be listed after {watched:?} (TTL {ttl:?})"
    );
    registration.deregister().await.must("deregistering");
}

/// A watcher that is not read while 3000 changes happen (more than any buffer holds) still
/// converges to `list()` once read, through a resync snapshot if it fell behind, and never shows
/// a server or a version of one that was never registered.
pub async fn watch_converges_to_list_after_a_burst_of_changes(h: Harness<dyn MetaStore>) {
    const SERVERS: u16 = 1000;
    let store = h.store().await;
    // Opened before the burst and not read until it is over.
    let mut watch = store.watch().await.must("opening a watch");

    let mut written: HashMap<ServerId, Vec<ServerInfo>> = HashMap::new();
    let mut record = |info: &ServerInfo| {
        written
            .entry(info.id.clone())
            .or_default()
            .push(info.clone());
    };
    let mut changes = 0;
    let mut live = Vec::new();
    for i in 0..SERVERS {
        let info = server_info(&format!("burst-{i:04}"), 10_000 + 2 * i);
        record(&info);
        live.push((store.register(info.clone()).await.must("registering"), info));
        changes += 1;
    }
    for (registration, info) in &mut live {
        *info = busier(info.clone(), 1);
        record(info);
        registration.update(info.clone()).await.must("updating");
        changes += 1;
    }
    let mut kept = Vec::new();
    for (i, (registration, info)) in live.into_iter().enumerate() {
        if i % 2 == 1 {
            registration.deregister().await.must("deregistering");
            changes += 1;
        } else {
            kept.push((registration, info));
        }
    }
    for (registration, info) in &mut kept {
        *info = busier(info.clone(), 2);
        record(info);
        registration
            .update(info.clone())
            .await
            .must("updating again");
        changes += 1;
    }
    assert_eq!(changes, 3000);

    let expected = store.list().await.must("listing after the burst");
    let kept_infos: Vec<ServerInfo> = kept.iter().map(|(_, info)| info.clone()).collect();
    assert_eq!(
        expected, kept_infos,
        "after the burst list() must show exactly the servers still registered, updated"
    );

    let deadline = tokio::time::Instant::now() + CONVERGENCE_DEADLINE;
    let mut known = Folded::default();
    let mut events = 0usize;
    while events == 0 || !known.servers.values().eq(expected.iter()) {
        let item = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => panic!("the watch ended while the store is alive"),
            Err(_) => panic!(
                "the watcher did not converge to list() within {CONVERGENCE_DEADLINE:?}: after \
                 {events} events it knows {} servers, list() has {}",
                known.servers.len(),
                expected.len()
            ),
        };
        let Ok(event) = item else {
            continue; // transient; the next item may be a snapshot
        };
        if events == 0 {
            assert!(
                matches!(event, MetaEvent::Snapshot(_)),
                "a watch must start with a Snapshot, got {event:?}"
            );
        }
        assert_written(&event, &written);
        known.apply(event);
        events += 1;
    }
    assert_eq!(
        store.list().await.must("listing at the end"),
        expected,
        "nothing changed after the burst, so list() must not have either"
    );
}

/// Two watchers of the same store see the same snapshot and the same changes in the same order,
/// even when the changes come from concurrent tasks.
pub async fn two_watchers_see_the_same_sequence(h: Harness<dyn MetaStore>) {
    const WRITERS: u16 = 4;
    let store = h.store().await;
    let _bystander = store
        .register(server_info("bystander", 7000))
        .await
        .must("registering the bystander");
    let mut first = store.watch().await.must("opening the first watch");
    let mut second = store.watch().await.must("opening the second watch");
    let first_snap = first_snapshot(&mut first).await;
    let second_snap = first_snapshot(&mut second).await;
    assert_eq!(first_snap, vec![server_info("bystander", 7000)]);
    assert_eq!(first_snap, second_snap, "both watchers must start alike");

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let info = server_info(&format!("writer-{w}"), 8000 + 2 * w);
                let registration = store.register(info.clone()).await.must("registering");
                for load in 1..=2 {
                    registration
                        .update(busier(info.clone(), load))
                        .await
                        .must("updating");
                }
                registration.deregister().await.must("deregistering");
            })
        })
        .collect();
    for writer in writers {
        join_task(writer).await;
    }

    let changes = usize::from(WRITERS) * 4;
    let mut first_seen = Vec::new();
    let mut second_seen = Vec::new();
    for _ in 0..changes {
        first_seen.push(next_event(&mut first, "reading the first watcher").await);
        second_seen.push(next_event(&mut second, "reading the second watcher").await);
    }
    assert_eq!(
        first_seen, second_seen,
        "two watchers must see the same changes in the same order"
    );
    for w in 0..WRITERS {
        let info = server_info(&format!("writer-{w}"), 8000 + 2 * w);
        let of_this_writer: Vec<&MetaEvent> = first_seen
            .iter()
            .filter(|event| event_id(event) == Some(&info.id))
            .collect();
        assert_eq!(
            of_this_writer,
            vec![
                &MetaEvent::Added(info.clone()),
                &MetaEvent::Updated(busier(info.clone(), 1)),
                &MetaEvent::Updated(busier(info.clone(), 2)),
                &MetaEvent::Removed(info.id.clone()),
            ],
            "each server's own changes must arrive in the order they happened"
        );
    }
}

/// A backend that does not claim `watch` says so with `Unsupported`.
pub async fn watch_is_unsupported_when_not_claimed(h: Harness<dyn MetaStore>) {
    let store = h.store().await;
    assert_kind(
        store.watch().await.map(|_| "a watch stream"),
        ErrorKind::Unsupported,
        "watch on a backend that does not claim it",
    );
}

/// The TTL to time expiry by: the configured one, or the one the lease reports if longer (a
/// backend may raise a TTL below its minimum).
fn lease_ttl(h: &Harness<dyn MetaStore>, registration: &Registration) -> Duration {
    h.ctx().ttl.max(registration.ttl())
}

/// `info` reporting a new `load`, as a server does when clients come and go.
fn busier(mut info: ServerInfo, load: u64) -> ServerInfo {
    info.load = load;
    info.metadata.insert("load-report".into(), load.to_string());
    info
}

/// The next event of `watch`, failing the case on an error, the end of the stream or a hang.
async fn next_event(watch: &mut MetaWatch, what: &str) -> MetaEvent {
    match tokio::time::timeout(EVENT_DEADLINE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("{what}: the watch yielded an error: {e}"),
        Ok(None) => panic!("{what}: the watch ended while the store is alive"),
        Err(_) => panic!("{what}: no event within {EVENT_DEADLINE:?}"),
    }
}

/// The first event of a watch, which must be a snapshot; its servers sorted by id.
async fn first_snapshot(watch: &mut MetaWatch) -> Vec<ServerInfo> {
    match next_event(watch, "waiting for the first watch event").await {
        MetaEvent::Snapshot(mut servers) => {
            servers.sort_by(|a, b| a.id.cmp(&b.id));
            servers
        }
        other => panic!("a watch must start with a Snapshot, got {other:?}"),
    }
}

/// The server an event is about (none for a snapshot).
fn event_id(event: &MetaEvent) -> Option<&ServerId> {
    match event {
        MetaEvent::Snapshot(_) => None,
        MetaEvent::Added(info) | MetaEvent::Updated(info) => Some(&info.id),
        MetaEvent::Removed(id) => Some(id),
    }
}

/// Fails the case if `event` shows a server, or a version of one, that was never written.
fn assert_written(event: &MetaEvent, written: &HashMap<ServerId, Vec<ServerInfo>>) {
    let was_written = |info: &ServerInfo| {
        written
            .get(&info.id)
            .is_some_and(|versions| versions.contains(info))
    };
    match event {
        MetaEvent::Snapshot(servers) => {
            if let Some(ghost) = servers.iter().find(|info| !was_written(info)) {
                panic!("a snapshot showed a server that was never registered so: {ghost:?}");
            }
        }
        MetaEvent::Added(info) | MetaEvent::Updated(info) => assert!(
            was_written(info),
            "the watch showed a server that was never registered so: {event:?}"
        ),
        MetaEvent::Removed(id) => assert!(
            written.contains_key(id),
            "the watch removed a server that was never registered: {id}"
        ),
    }
}

/// What a watcher knows after folding the events it read: a snapshot replaces everything.
#[derive(Debug, Default)]
struct Folded {
    servers: BTreeMap<ServerId, ServerInfo>,
}

impl Folded {
    fn apply(&mut self, event: MetaEvent) {
        match event {
            MetaEvent::Snapshot(servers) => {
                self.servers = servers
                    .into_iter()
                    .map(|info| (info.id.clone(), info))
                    .collect();
            }
            MetaEvent::Added(info) | MetaEvent::Updated(info) => {
                self.servers.insert(info.id.clone(), info);
            }
            MetaEvent::Removed(id) => {
                self.servers.remove(&id);
            }
        }
    }
}
