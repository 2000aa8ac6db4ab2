//! The soak's users: real SDK clients that log in through the route, send at a modest rate to
//! other users and to groups, and record everything into the [`History`].
//!
//! Each user is a small set of tasks: a sender that sleeps a random (seeded) interval and fires
//! a send, with a few sends in flight at most (a send stuck on a dead server must not stop the
//! user from sending the next); and an event reader per client instance that records every
//! message and state change in the order the application sees them. The reader is also where a
//! client that stopped for good (a kick, or a refused login) is replaced by a new one, so a
//! user is never silently lost for the rest of the run; the new instance gets a new number in
//! the history, since its duplicate filter starts empty.
//!
//! Groups are made at setup through the route's HTTP API, with some users deliberately left
//! out of each, and a small share of sends goes to a group by a user who is not a member: the
//! route must refuse those, and no outsider may ever receive a group's message.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_client::{
    Client, ClientBuilder, ClientError, ConnectionState, Event, Events, Outgoing, ReconnectPolicy,
    SendReceipt,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::{Result, SoakError};
use crate::history::{Entry, History, Target, now_ms};

/// Every soak user's password.
const PASSWORD: &str = "soak password, long enough";

/// Sends one user may have waiting for their acknowledgement at once.
const IN_FLIGHT_PER_USER: usize = 8;

/// How long a send may wait for its acknowledgement (the SDK then fails it).
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

/// A soak user.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// The account name (`user01`...).
    pub name: String,
    /// The account id.
    pub id: u64,
}

/// A group made at setup.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// The group id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its members' user ids (the owner included), as the route lists them.
    pub members: BTreeSet<u64>,
}

/// Who exists: what the checker needs to know whom a message was for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    /// The users.
    pub users: Vec<User>,
    /// The groups.
    pub groups: Vec<Group>,
}

impl Setup {
    /// A user's name by id (`?id` when unknown).
    pub fn name(&self, id: u64) -> String {
        self.users
            .iter()
            .find(|user| user.id == id)
            .map_or_else(|| format!("?{id}"), |user| user.name.clone())
    }

    /// Who should receive a message from `sender` to `to`: the other user, or every member of
    /// the group but the sender.
    pub fn recipients(&self, sender: u64, to: Target) -> BTreeSet<u64> {
        match to {
            Target::User(user) if user != sender => BTreeSet::from([user]),
            Target::User(_) => BTreeSet::new(),
            Target::Group(group) => self
                .groups
                .iter()
                .find(|g| g.id == group)
                .map(|g| g.members.iter().copied().filter(|m| *m != sender).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether `user` may read `conversation` (`d:A:B` or `g:G`): one of the pair, or a member.
    pub fn may_read(&self, user: u64, conversation: &str) -> bool {
        let mut parts = conversation.split(':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("d"), Some(a), Some(b)) => a.parse() == Ok(user) || b.parse() == Ok(user),
            (Some("g"), Some(group), None) => self
                .groups
                .iter()
                .any(|g| group.parse() == Ok(g.id) && g.members.contains(&user)),
            _ => false,
        }
    }
}

/// How many times the presence listing is tried before its failure counts, and the wait
/// between two tries.
const PRESENCE_ATTEMPTS: u32 = 10;
const PRESENCE_RETRY: Duration = Duration::from_secs(1);

/// Where a user is, by its client and by the session store.
#[derive(Debug, Clone, Serialize)]
pub struct Presence {
    /// The user.
    pub user: String,
    /// Its client's state (`connected to node-2`).
    pub client: String,
    /// What the route's online list says (`online on node-2`, `offline`).
    pub session_store: String,
}

impl Presence {
    /// Whether the two views disagree (connected, but not online on that server).
    pub fn disagrees(&self) -> bool {
        match self.client.strip_prefix("connected to ") {
            Some(server) => self.session_store != format!("online on {server}"),
            None => false,
        }
    }
}

/// How the users behave.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Messages per second, all users together.
    pub rate: f64,
    /// The seed of every user's choices.
    pub seed: u64,
}

/// What one user's tasks share.
#[derive(Debug)]
struct Seat {
    user: User,
    client: Mutex<Option<Client>>,
    instance: AtomicU32,
    in_flight: Arc<Semaphore>,
    sent: AtomicU32,
}

impl Seat {
    fn client(&self) -> Option<Client> {
        match self.client.lock() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_client(&self, client: Option<Client>) {
        match self.client.lock() {
            Ok(mut slot) => *slot = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
    }

    fn next_body(&self) -> String {
        let n = self.sent.fetch_add(1, Ordering::SeqCst);
        format!("soak-{}-{n}", self.user.name)
    }
}

/// The running users.
#[derive(Debug)]
pub struct Clients {
    route_url: String,
    history: Arc<History>,
    setup: Setup,
    seats: Vec<Arc<Seat>>,
    sending: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl Clients {
    /// Creates `count` users (registering them through the route), the groups, and starts their
    /// event readers; nobody sends until [`Clients::start_sending`].
    pub async fn setup(
        route_url: &str,
        count: usize,
        seed: u64,
        history: Arc<History>,
    ) -> Result<Clients> {
        if count < 3 {
            return Err(SoakError::Clients("at least 3 clients are needed".into()));
        }
        let mut clients = Clients {
            route_url: route_url.to_string(),
            history,
            setup: Setup::default(),
            seats: Vec::new(),
            sending: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
            tasks: JoinSet::new(),
        };
        let mut connected = Vec::new();
        for n in 1..=count {
            let name = format!("user{n:02}");
            let client = connect(route_url, &name, true)
                .await
                .map_err(|e| SoakError::Clients(format!("{name} could not sign up: {e}")))?;
            let info = client.info();
            let user = User {
                name,
                id: info.user_id,
            };
            clients.history.record(Entry::State {
                t_ms: now_ms(),
                user: user.id,
                instance: 0,
                state: "connected".into(),
                detail: info.server_id.clone(),
            });
            clients.setup.users.push(user.clone());
            connected.push((user, client));
        }
        clients.setup.groups = make_groups(&connected, seed).await?;
        for (user, client) in connected {
            let events = client
                .events()
                .ok_or_else(|| SoakError::Clients("the event stream was taken".into()))?;
            let seat = Arc::new(Seat {
                user,
                client: Mutex::new(Some(client.clone())),
                instance: AtomicU32::new(0),
                in_flight: Arc::new(Semaphore::new(IN_FLIGHT_PER_USER)),
                sent: AtomicU32::new(0),
            });
            clients.spawn_reader(&seat, events, client.info().server_id);
            clients.seats.push(seat);
        }
        Ok(clients)
    }

    /// Who exists.
    pub fn setup_info(&self) -> &Setup {
        &self.setup
    }

    /// Starts every user's sender.
    pub fn start_sending(&mut self, workload: &Workload) {
        self.sending.store(true, Ordering::SeqCst);
        let users = self.seats.len();
        // Each user's mean interval, so that all together send `rate` a second.
        let mean = Duration::from_secs_f64(users as f64 / workload.rate.max(0.01));
        for (index, seat) in self.seats.iter().enumerate() {
            let seat = Arc::clone(seat);
            let setup = self.setup.clone();
            let history = Arc::clone(&self.history);
            let sending = Arc::clone(&self.sending);
            let seed = workload.seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(index as u64 + 1));
            self.tasks.spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                while sending.load(Ordering::SeqCst) {
                    // Exponential inter-send times (a Poisson process), capped at five means.
                    let u: f64 = rng.random_range(0.0001..1.0);
                    let pause = mean.mul_f64((-u.ln()).min(5.0));
                    tokio::time::sleep(pause).await;
                    if !sending.load(Ordering::SeqCst) {
                        break;
                    }
                    let to = choose_target(&mut rng, &setup, seat.user.id);
                    let Ok(permit) = Arc::clone(&seat.in_flight).acquire_owned().await else {
                        break;
                    };
                    let (seat, history) = (Arc::clone(&seat), Arc::clone(&history));
                    tokio::spawn(async move {
                        // The outcome is in the history; the checker judges it.
                        let _ = send_one(&seat, &history, to).await;
                        drop(permit);
                    });
                }
            });
        }
    }

    /// Stops the senders; the future resolves (at the latest after `limit`) once every send in
    /// flight has its answer.
    pub fn stop_sending(&self, limit: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.sending.store(false, Ordering::SeqCst);
        let all = u32::try_from(IN_FLIGHT_PER_USER).unwrap_or(u32::MAX);
        let semaphores: Vec<Arc<Semaphore>> = self
            .seats
            .iter()
            .map(|seat| Arc::clone(&seat.in_flight))
            .collect();
        async move {
            let drained = async {
                for semaphore in semaphores {
                    // Taking every permit means no send holds one; give them back at once.
                    if let Ok(permits) = semaphore.acquire_many(all).await {
                        drop(permits);
                    }
                }
            };
            let _ = tokio::time::timeout(limit, drained).await;
        }
    }

    /// Each user sends one message to the next user and waits for its acknowledgement: fresh
    /// traffic after the heal. The future resolves to the users whose probe was not
    /// acknowledged, with why.
    pub fn probe_round(&self) -> impl Future<Output = Vec<(String, String)>> + Send + 'static {
        let mut probes = JoinSet::new();
        for (index, seat) in self.seats.iter().enumerate() {
            let next = &self.seats[(index + 1) % self.seats.len()];
            let to = Target::User(next.user.id);
            let (seat, history) = (Arc::clone(seat), Arc::clone(&self.history));
            probes.spawn(async move {
                let outcome = send_one(&seat, &history, to).await;
                (seat.user.name.clone(), outcome)
            });
        }
        async move {
            let mut failed = Vec::new();
            while let Some(result) = probes.join_next().await {
                match result {
                    Ok((_, Ok(()))) => {}
                    Ok((name, Err(error))) => failed.push((name, error)),
                    Err(error) => failed.push(("?".into(), format!("probe task failed: {error}"))),
                }
            }
            failed
        }
    }

    /// Where every user is at this moment, by its client and by the session store (the route's
    /// list of online users): a user connected to a server the cluster thinks it is not on
    /// cannot get live messages.
    pub fn presence(&self) -> impl Future<Output = Vec<Presence>> + Send + 'static {
        let seats: Vec<(String, Option<Client>)> = self
            .seats
            .iter()
            .map(|seat| (seat.user.name.clone(), seat.client()))
            .collect();
        async move {
            let mut online: BTreeMap<String, String> = BTreeMap::new();
            let mut listing_error = None;
            if let Some(client) = seats.iter().find_map(|(_, client)| client.clone()) {
                // The route's own backend connections may still be coming back from the last
                // fault: a failed listing is tried again, for a while, before it counts.
                for attempt in 1..=PRESENCE_ATTEMPTS {
                    online.clear();
                    listing_error = None;
                    let mut cursor: Option<String> = None;
                    loop {
                        match client.online_users(cursor.as_deref(), Some(100)).await {
                            Ok(page) => {
                                for user in page.items {
                                    online.insert(user.name, user.server_id);
                                }
                                cursor = page.next_cursor;
                                if cursor.is_none() {
                                    break;
                                }
                            }
                            Err(error) => {
                                listing_error = Some(format!(
                                    "{error} (attempt {attempt} of {PRESENCE_ATTEMPTS})"
                                ));
                                break;
                            }
                        }
                    }
                    if listing_error.is_none() {
                        break;
                    }
                    tokio::time::sleep(PRESENCE_RETRY).await;
                }
            }
            seats
                .into_iter()
                .map(|(user, client)| {
                    let client_view = match client.map(|c| (c.state(), c.info().server_id)) {
                        Some((ConnectionState::Connected { server_id }, _)) => {
                            format!("connected to {server_id}")
                        }
                        Some((state, server)) => format!("{state:?} (last server {server})"),
                        None => "no client".into(),
                    };
                    let session_store = match (&listing_error, online.get(&user)) {
                        (Some(error), _) => format!("unknown: {error}"),
                        (None, Some(server)) => format!("online on {server}"),
                        (None, None) => "offline".into(),
                    };
                    Presence {
                        user,
                        client: client_view,
                        session_store,
                    }
                })
                .collect()
        }
    }

    /// Closes every client and stops every task.
    pub async fn close(mut self) {
        self.sending.store(false, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
        for seat in &self.seats {
            if let Some(client) = seat.client() {
                let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
            }
            seat.set_client(None);
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    fn spawn_reader(&mut self, seat: &Arc<Seat>, events: Events, server: String) {
        let seat = Arc::clone(seat);
        let history = Arc::clone(&self.history);
        let stopping = Arc::clone(&self.stopping);
        let route_url = self.route_url.clone();
        self.tasks.spawn(async move {
            let mut events = events;
            let mut server = server;
            loop {
                let instance = seat.instance.load(Ordering::SeqCst);
                let ended =
                    read_events(&seat.user, instance, &mut events, &mut server, &history).await;
                if !ended || stopping.load(Ordering::SeqCst) {
                    return;
                }
                // The client stopped for good: a new one takes its place.
                seat.set_client(None);
                let Some((client, fresh)) = reconnect(&route_url, &seat, &stopping).await else {
                    return;
                };
                let instance = seat.instance.fetch_add(1, Ordering::SeqCst) + 1;
                server = client.info().server_id;
                history.record(Entry::State {
                    t_ms: now_ms(),
                    user: seat.user.id,
                    instance,
                    state: "connected".into(),
                    detail: format!("{server} (new client instance)"),
                });
                seat.set_client(Some(client));
                events = fresh;
            }
        });
    }
}

/// A client for `name`, reconnecting on its own with short backoffs (a soak wants to see
/// recovery within seconds, not after a 30 s ceiling).
async fn connect(route_url: &str, name: &str, register: bool) -> cim_client::Result<Client> {
    ClientBuilder::new(route_url)
        .credentials(name, PASSWORD)
        .register(register)
        .device("cim-soak")
        .send_timeout(SEND_TIMEOUT)
        .reconnect(
            ReconnectPolicy::default()
                .initial_backoff(Duration::from_millis(250))
                .max_backoff(Duration::from_secs(4)),
        )
        .connect()
        .await
}

/// Connects a replacement client for `seat`, trying every second until it works or the soak
/// stops.
async fn reconnect(
    route_url: &str,
    seat: &Seat,
    stopping: &AtomicBool,
) -> Option<(Client, Events)> {
    while !stopping.load(Ordering::SeqCst) {
        match connect(route_url, &seat.user.name, false).await {
            Ok(client) => {
                let events = client.events()?;
                return Some((client, events));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    None
}

/// Records `events` until the client stops for good (`true`) or the stream ends otherwise.
async fn read_events(
    user: &User,
    instance: u32,
    events: &mut Events,
    server: &mut String,
    history: &History,
) -> bool {
    while let Some(event) = events.recv().await {
        let t_ms = now_ms();
        match event {
            Event::Message(message) => history.record(Entry::Received {
                t_ms,
                user: user.id,
                instance,
                message_id: message.message_id,
                conversation: message.conversation.to_string(),
                seq: message.seq,
                sender_id: message.sender_id,
                body: message.body,
                offline: message.offline,
                server: server.clone(),
            }),
            Event::State(state) => {
                let (name, detail, ended) = match state {
                    ConnectionState::Connecting => ("connecting", String::new(), false),
                    ConnectionState::Connected { server_id } => {
                        server.clone_from(&server_id);
                        ("connected", server_id, false)
                    }
                    ConnectionState::Reconnecting { attempt, after } => (
                        "reconnecting",
                        format!("attempt {attempt} after {}ms", after.as_millis()),
                        false,
                    ),
                    ConnectionState::Disconnected { reason } => {
                        ("disconnected", format!("{reason:?}"), true)
                    }
                    other => ("other", format!("{other:?}"), false),
                };
                history.record(Entry::State {
                    t_ms,
                    user: user.id,
                    instance,
                    state: name.into(),
                    detail,
                });
                if ended {
                    return true;
                }
            }
            Event::Kicked { reason, text } => history.record(Entry::State {
                t_ms,
                user: user.id,
                instance,
                state: "kicked".into(),
                detail: format!("{} {text}", reason.as_str_name()),
            }),
            Event::Undeliverable {
                message_id,
                conversation,
                seq,
                text,
            } => history.record(Entry::Undeliverable {
                t_ms,
                user: user.id,
                instance,
                message_id,
                conversation: conversation.to_string(),
                seq,
                text,
            }),
            other => history.record(Entry::State {
                t_ms,
                user: user.id,
                instance,
                state: "event".into(),
                detail: format!("{other:?}"),
            }),
        }
    }
    false
}

/// Sends one message from `seat` to `to`, recording the attempt and its outcome.
async fn send_one(seat: &Seat, history: &History, to: Target) -> std::result::Result<(), String> {
    let body = seat.next_body();
    history.record(Entry::Attempt {
        t_ms: now_ms(),
        sender: seat.user.id,
        to,
        body: body.clone(),
    });
    let Some(client) = seat.client() else {
        let error = "no client (being replaced)".to_string();
        history.record(Entry::Failed {
            t_ms: now_ms(),
            body,
            error: error.clone(),
        });
        return Err(error);
    };
    let outgoing = match to {
        Target::User(user) => Outgoing::to_user(user, body.clone()),
        Target::Group(group) => Outgoing::to_group(group, body.clone()),
    };
    match client.send(outgoing.client_msg_id(body.clone())).await {
        Ok(SendReceipt::Stored {
            message_id,
            conversation,
            seq,
            ..
        }) => {
            history.record(Entry::Acked {
                t_ms: now_ms(),
                body,
                message_id,
                conversation: conversation.to_string(),
                seq,
                server: client.info().server_id,
            });
            Ok(())
        }
        Ok(other) => {
            let error = format!("unexpected receipt {other:?}");
            history.record(Entry::Failed {
                t_ms: now_ms(),
                body,
                error: error.clone(),
            });
            Err(error)
        }
        Err(error) => {
            let error = describe(&error);
            history.record(Entry::Failed {
                t_ms: now_ms(),
                body,
                error: error.clone(),
            });
            Err(error)
        }
    }
}

/// An SDK error as a short line, with its kind first.
fn describe(error: &ClientError) -> String {
    let kind = match error {
        ClientError::Forbidden(_) => "forbidden",
        ClientError::Timeout(_) => "timeout",
        ClientError::Unavailable { .. } => "unavailable",
        ClientError::RateLimited(_) => "rate_limited",
        ClientError::NotFound(_) => "not_found",
        ClientError::Closed => "closed",
        _ => "other",
    };
    format!("{kind}: {error}")
}

/// A recipient for `sender`: mostly another user, often one of their groups, and now and then
/// a group they are not in (which must be refused).
fn choose_target(rng: &mut StdRng, setup: &Setup, sender: u64) -> Target {
    let (mine, others): (Vec<&Group>, Vec<&Group>) = setup
        .groups
        .iter()
        .partition(|group| group.members.contains(&sender));
    let roll: f64 = rng.random();
    if roll < 0.03 && !others.is_empty() {
        return Target::Group(others[rng.random_range(0..others.len())].id);
    }
    if roll < 0.35 && !mine.is_empty() {
        return Target::Group(mine[rng.random_range(0..mine.len())].id);
    }
    let peers: Vec<u64> = setup
        .users
        .iter()
        .map(|user| user.id)
        .filter(|id| *id != sender)
        .collect();
    Target::User(peers[rng.random_range(0..peers.len())])
}

/// Three groups of about two thirds, a half and a third of the users, members chosen at random
/// (seeded), each created by its first member, who adds the others through the route.
async fn make_groups(users: &[(User, Client)], seed: u64) -> Result<Vec<Group>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0f60_0095);
    let n = users.len();
    let sizes = [(n * 2 / 3).max(2), (n / 2).max(2), (n / 3).max(2)];
    let mut groups = Vec::new();
    for (g, size) in sizes.into_iter().enumerate() {
        let mut order: Vec<usize> = (0..n).collect();
        // A seeded shuffle (Fisher-Yates) without pulling in rand's slice extension.
        for i in (1..n).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let chosen = &order[..size.min(n - 1)];
        let (_, owner) = &users[chosen[0]];
        let name = format!("soak-group-{}", g + 1);
        let view = owner
            .create_group(&name)
            .await
            .map_err(|e| SoakError::Clients(format!("creating {name}: {e}")))?;
        for &member in &chosen[1..] {
            let (user, _) = &users[member];
            owner
                .add_member(view.group_id, user.id)
                .await
                .map_err(|e| SoakError::Clients(format!("adding {} to {name}: {e}", user.name)))?;
        }
        let listed = owner
            .members(view.group_id, None, Some(100))
            .await
            .map_err(|e| SoakError::Clients(format!("listing {name}: {e}")))?;
        let members: BTreeSet<u64> = listed.items.iter().map(|m| m.user_id).collect();
        let expected: BTreeSet<u64> = chosen.iter().map(|&i| users[i].0.id).collect();
        if members != expected {
            return Err(SoakError::Clients(format!(
                "{name} lists members {members:?}, expected {expected:?}"
            )));
        }
        groups.push(Group {
            id: view.group_id,
            name,
            members,
        });
    }
    Ok(groups)
}

/// Counts of what the clients did so far, for progress lines.
pub fn counts(entries: &[Entry]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for entry in entries {
        let key = match entry {
            Entry::Attempt { .. } => "sent",
            Entry::Acked { .. } => "acked",
            Entry::Failed { .. } => "failed",
            Entry::Received { .. } => "received",
            Entry::State { state, .. } if state == "reconnecting" => "reconnects",
            _ => continue,
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            users: (1..=4)
                .map(|id| User {
                    name: format!("user{id:02}"),
                    id,
                })
                .collect(),
            groups: vec![Group {
                id: 9,
                name: "g".into(),
                members: BTreeSet::from([1, 2, 3]),
            }],
        }
    }

    #[test]
    fn a_group_message_is_for_every_member_but_its_sender() {
        let setup = setup();
        assert_eq!(
            setup.recipients(1, Target::Group(9)),
            BTreeSet::from([2, 3])
        );
        assert_eq!(setup.recipients(1, Target::User(4)), BTreeSet::from([4]));
    }

    #[test]
    fn only_the_pair_and_the_members_may_read_a_conversation() {
        let setup = setup();
        assert!(setup.may_read(1, "d:1:4"));
        assert!(!setup.may_read(2, "d:1:4"));
        assert!(setup.may_read(3, "g:9"));
        assert!(!setup.may_read(4, "g:9"));
        assert!(!setup.may_read(1, "nonsense"));
    }

    #[test]
    fn targets_are_never_the_sender_and_outsiders_rarely_try_a_group() {
        let setup = setup();
        let mut rng = StdRng::seed_from_u64(1);
        let mut outsider_tries = 0;
        for _ in 0..10_000 {
            match choose_target(&mut rng, &setup, 4) {
                Target::User(user) => assert_ne!(user, 4),
                Target::Group(_) => outsider_tries += 1,
            }
        }
        // user 4 is in no group: only the 3 % of refused attempts go to one.
        assert!((150..=450).contains(&outsider_tries), "{outsider_tries}");
    }
}
