//! W6, failover (cim only): three servers, 3,000 clients of the real SDK (`cim-client`),
//! 1,000 msg/s between users on different servers; one server is killed with SIGKILL.
//!
//! Measured: how long its users take to be connected again (from the kill to the SDK's
//! `Connected` event on another server; the SDK backs off, logs in at the route again, which
//! places it on a live server, and resends what was not acknowledged), and whether any message
//! the server acknowledged was lost or shown twice to the application. Sends that were never
//! acknowledged (the SDK gave up) are counted apart: the protocol promises nothing for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cim_client::{Client, ClientBuilder, ConnectionState, Event};
use futures::{StreamExt, TryStreamExt};

use super::{Ctx, percentile};
use crate::payload::{self, Header};
use crate::report::Measurement;
use crate::systems::{Accounts, Deployment, Plan};

/// Logins in flight while the clients connect (setup, not measured).
const SETUP_LOGINS: usize = 16;

/// The case name.
pub const CASE: &str = "failover, SIGKILL one of 3 servers";

/// `clients` users from the vault on `servers` servers; the SDK logs them in.
pub fn plan(servers: usize, clients: usize) -> Plan {
    let mut plan = Plan::users(clients);
    plan.servers = servers;
    plan.accounts = Accounts::VaultLoginLater;
    plan
}

/// What the bench knows about one client's connection.
#[derive(Debug, Default)]
struct Tracked {
    server: String,
    /// When it was connected again after the kill (affected users only).
    reconnected: Option<Instant>,
    gave_up: bool,
}

/// Shared bookkeeping of the run.
#[derive(Debug, Default)]
struct Book {
    users: Vec<Mutex<Tracked>>,
    /// Message number → times received by the application.
    received: Mutex<HashMap<u64, u32>>,
    /// Message numbers acknowledged by the server.
    acked: Mutex<Vec<u64>>,
    unacked: AtomicU64,
    last_send_error: Mutex<Option<String>>,
    /// Set at the kill: the killed server's id.
    killed: Mutex<Option<(String, Instant)>>,
    /// Per message number: who sent it to whom, on which servers, when (for the report on
    /// lost messages).
    sends: Mutex<HashMap<u64, SendInfo>>,
}

/// One send, as the bench saw it.
#[derive(Debug, Clone)]
struct SendInfo {
    from: usize,
    to: usize,
    from_server: String,
    to_server: String,
    at: Instant,
    acked_at: Option<Instant>,
}

/// Runs W6 on a cluster `dep`.
pub async fn run(ctx: &Ctx<'_>, dep: &mut Deployment) -> Result<Measurement> {
    let sizes = ctx.sizes;
    let route = dep.route_url.clone().context("W6 needs cim's route")?;
    let n = dep.users.len();
    let book = Arc::new(Book {
        users: (0..n).map(|_| Mutex::new(Tracked::default())).collect(),
        ..Book::default()
    });
    let phase = ctx.env.progress.phase("connect SDK clients", n as u64);
    let clients: Vec<Client> = futures::stream::iter(0..n)
        .map(|i| {
            let (route, name, password) = (
                route.clone(),
                dep.users[i].name.clone(),
                dep.password.clone(),
            );
            let (book, phase) = (Arc::clone(&book), phase.clone());
            async move {
                let client = ClientBuilder::new(route)
                    .credentials(name, password)
                    .device("cim-bench")
                    .connect()
                    .await
                    .with_context(|| format!("SDK client {i} connects"))?;
                if let Ok(mut tracked) = book.users[i].lock() {
                    tracked.server = client.info().server_id;
                }
                let events = client.events().context("the event stream")?;
                tokio::spawn(follow(i, events, Arc::clone(&book)));
                phase.add(1);
                Ok::<_, anyhow::Error>(client)
            }
        })
        // Setup logins are few at a time: each costs the route an argon2 verification and
        // its memory (see W3); the failover's reconnections are not throttled.
        .buffered(SETUP_LOGINS)
        .try_collect()
        .await?;
    phase.finish();

    // Traffic until the end; the kill happens meanwhile.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn(traffic(
        clients.clone(),
        Arc::clone(&book),
        sizes.w6_rate,
        sizes.body,
        ctx.clock,
        Arc::clone(&stop),
        Arc::clone(&sent),
    ));
    let route_peak =
        super::RssPeak::start(dep.others.iter().map(crate::process::Proc::pid).collect());
    tokio::time::sleep(sizes.w6_before_kill).await;
    let victim_id = "node-1".to_string();
    let affected: Vec<usize> = (0..n)
        .filter(|i| {
            book.users[*i]
                .lock()
                .map(|t| t.server == victim_id)
                .unwrap_or(false)
        })
        .collect();
    let killed_at = Instant::now();
    if let Ok(mut killed) = book.killed.lock() {
        *killed = Some((victim_id.clone(), killed_at));
    }
    dep.servers[0].proc.kill();
    ctx.env.progress.note(&format!(
        "killed {victim_id} (SIGKILL) with {} of {n} users on it",
        affected.len()
    ));
    let phase = ctx
        .env
        .progress
        .phase("users reconnected", affected.len() as u64);
    let reconnected_count = |book: &Book| {
        affected
            .iter()
            .filter(|i| {
                book.users[**i]
                    .lock()
                    .map(|t| t.reconnected.is_some() || t.gave_up)
                    .unwrap_or(false)
            })
            .count()
    };
    let deadline = killed_at + sizes.w6_after_kill;
    loop {
        let done = reconnected_count(&book);
        let progressed = done as u64 - phase.done().min(done as u64);
        phase.add(progressed);
        if done == affected.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    phase.finish();
    // A little more traffic on the healed cluster, then stop and let every send resolve.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let pending = traffic.await?;
    let phase = ctx
        .env
        .progress
        .phase("sends resolved", pending.len() as u64);
    for task in pending {
        let _ = task.await;
        phase.add(1);
    }
    phase.finish();
    // Drain: every acknowledged message should arrive.
    let acked: Vec<u64> = book.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let drain_deadline = Instant::now() + sizes.w6_after_kill;
    let missing: Vec<u64> = loop {
        let missing: Vec<u64> = match book.received.lock() {
            Ok(received) => acked
                .iter()
                .filter(|k| !received.contains_key(k))
                .copied()
                .collect(),
            Err(_) => acked.clone(),
        };
        if missing.is_empty() || Instant::now() > drain_deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A message for a user still not connected again cannot have arrived: it waits in the
    // store. Only messages for connected users count as lost.
    let victim = victim_id.clone();
    let (missing, waiting): (Vec<u64>, Vec<u64>) = match book.sends.lock() {
        Ok(sends) => missing.into_iter().partition(|key| {
            sends.get(key).is_none_or(|info| {
                book.users[info.to]
                    .lock()
                    .map(|t| t.server != victim && !t.gave_up)
                    .unwrap_or(true)
            })
        }),
        Err(_) => (missing, Vec::new()),
    };
    let mut m = Measurement::new("W6", CASE, dep.kind.name(), ctx.round);
    let route_alive = dep.others.iter_mut().all(crate::process::Proc::is_running);
    if !route_alive {
        m.set("route_died", 1.0);
        m.notes.push(
            "the route died during the run (signal 9 without anyone killing it: the kernel's \
             out-of-memory killer, see dmesg)"
                .into(),
        );
    }
    m.set("undelivered_to_disconnected", waiting.len() as f64);
    m.set("route_rss_peak", route_peak.stop().await as f64);
    let mut times: Vec<u64> = affected
        .iter()
        .filter_map(|i| book.users[*i].lock().ok().and_then(|t| t.reconnected))
        .map(|at| at.duration_since(killed_at).as_millis() as u64)
        .collect();
    times.sort_unstable();
    m.set("affected_users", affected.len() as f64);
    m.set("reconnect_p50_ms", percentile(&times, 50.0) as f64);
    m.set("reconnect_p99_ms", percentile(&times, 99.0) as f64);
    m.set(
        "reconnect_max_ms",
        times.last().copied().unwrap_or_default() as f64,
    );
    m.set("not_reconnected", (affected.len() - times.len()) as f64);
    let (deliveries, duplicates) = match book.received.lock() {
        Ok(received) => (
            received.values().map(|c| u64::from(*c)).sum::<u64>(),
            received
                .values()
                .map(|c| u64::from(c.saturating_sub(1)))
                .sum::<u64>(),
        ),
        Err(_) => (0, 0),
    };
    m.set("sent", sent.load(Ordering::Relaxed) as f64);
    m.set("acked", acked.len() as f64);
    m.set("unacked", book.unacked.load(Ordering::Relaxed) as f64);
    m.set("lost_acked", missing.len() as f64);
    m.set("lost", missing.len() as f64);
    if let Ok(sends) = book.sends.lock() {
        let ms = |at: Instant| {
            if at >= killed_at {
                format!("+{} ms", at.duration_since(killed_at).as_millis())
            } else {
                format!("-{} ms", killed_at.duration_since(at).as_millis())
            }
        };
        for key in missing.iter().take(5) {
            if let Some(info) = sends.get(key) {
                let now_on = book.users[info.to]
                    .lock()
                    .map(|t| t.server.clone())
                    .unwrap_or_default();
                m.notes.push(format!(
                    "lost message {key}: user {} on {} → user {} on {} (now on {now_on}), sent \
                     {} from the kill, acknowledged {}",
                    info.from,
                    info.from_server,
                    info.to,
                    info.to_server,
                    ms(info.at),
                    info.acked_at.map(ms).unwrap_or_else(|| "?".into()),
                ));
            }
        }
    }
    m.set("duplicates", duplicates as f64);
    m.set("deliveries", deliveries as f64);
    if let Ok(Some(error)) = book.last_send_error.lock().map(|e| e.clone()) {
        m.notes.push(format!("last failed send: {error}"));
    }
    m.notes.extend(dep.notes.iter().cloned());
    m.notes.push(format!(
        "{n} SDK clients (default reconnect policy), {} msg/s between users on different \
         servers, kill after {:?}",
        sizes.w6_rate, sizes.w6_before_kill
    ));
    for client in clients {
        client.close().await;
    }
    Ok(m)
}

/// Follows one client's events.
async fn follow(index: usize, mut events: cim_client::Events, book: Arc<Book>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Message(message) => {
                if let Some(Header { seq, .. }) = payload::decode(message.body.as_bytes())
                    && let Ok(mut received) = book.received.lock()
                {
                    *received.entry(seq).or_default() += 1;
                }
            }
            Event::State(ConnectionState::Connected { server_id }) => {
                let killed = book.killed.lock().ok().and_then(|k| k.clone());
                if let Ok(mut tracked) = book.users[index].lock() {
                    if let Some((victim, _)) = killed
                        && tracked.server == victim
                        && server_id != victim
                        && tracked.reconnected.is_none()
                    {
                        tracked.reconnected = Some(Instant::now());
                    }
                    tracked.server = server_id;
                }
            }
            Event::State(ConnectionState::Disconnected { .. }) => {
                if let Ok(mut tracked) = book.users[index].lock() {
                    tracked.gave_up = true;
                }
            }
            _ => {}
        }
    }
}

/// Sends at `rate` from random users to random users on other servers until `stop`; returns
/// the tasks awaiting acknowledgements.
async fn traffic(
    clients: Vec<Client>,
    book: Arc<Book>,
    rate: f64,
    body_len: usize,
    clock: crate::payload::Clock,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = clients.len();
    let mut pending = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut seq = 0u64;
    let mut body = Vec::with_capacity(body_len);
    let server_of = |i: usize| {
        book.users[i]
            .lock()
            .map(|t| t.server.clone())
            .unwrap_or_default()
    };
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        while seq < due {
            let from = rand::random_range(0..n);
            let from_server = server_of(from);
            let to = (0..10)
                .map(|_| rand::random_range(0..n))
                .find(|to| *to != from && server_of(*to) != from_server);
            let Some(to) = to else {
                seq += 1;
                continue;
            };
            payload::encode(
                &mut body,
                Header {
                    sender: from as u32,
                    seq,
                    sent_ns: clock.now_ns(),
                },
                body_len,
            );
            let text = String::from_utf8_lossy(&body).into_owned();
            let client = clients[from].clone();
            let to_id = client_user_id(&clients[to]);
            let key = seq;
            if let Ok(mut sends) = book.sends.lock() {
                sends.insert(
                    key,
                    SendInfo {
                        from,
                        to,
                        from_server,
                        to_server: server_of(to),
                        at: Instant::now(),
                        acked_at: None,
                    },
                );
            }
            let book = Arc::clone(&book);
            sent.fetch_add(1, Ordering::Relaxed);
            pending.push(tokio::spawn(async move {
                match client.send_to_user(to_id, text).await {
                    Ok(_) => {
                        if let Ok(mut acked) = book.acked.lock() {
                            acked.push(key);
                        }
                        if let Ok(mut sends) = book.sends.lock()
                            && let Some(info) = sends.get_mut(&key)
                        {
                            info.acked_at = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        book.unacked.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut last) = book.last_send_error.lock() {
                            *last = Some(e.to_string());
                        }
                    }
                }
            }));
            seq += 1;
        }
        pending.retain(|task| !task.is_finished());
        tokio::time::sleep_until((start + interval.mul_f64(seq as f64)).into()).await;
    }
    pending
}

fn client_user_id(client: &Client) -> u64 {
    client.info().user_id
}
