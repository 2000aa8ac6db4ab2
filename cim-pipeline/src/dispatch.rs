//! [`Dispatcher`]: the live fan-out of a stored message to its recipients' connections, off
//! the sender's task.
//!
//! Dispatch comes after the message is stored, so it is an optimisation of latency, not a part
//! of durability: a recipient it misses (offline, on a server that just died, on a connection
//! too slow to keep up) still has the message pending in the store and gets it at its next
//! sync. That is why dispatch tries every server even when one fails, and why its error only
//! reports what could not be reached live.
//!
//! A recipient who is online but could not be reached (their session could not be looked up,
//! the relay to their server failed) is tried again, with a backoff, for about half a minute
//! ([`RETRY_BACKOFF`]): a store that restarts or a link that breaks for a moment does not leave
//! a live connection without the message until it reconnects. A connection drops what it sent
//! already, so a retry never reaches the application twice.
//!
//! A fan-out can take a while (a large group's member pages, session look-ups, relays), so the
//! sender does not wait for it: [`Dispatcher::enqueue`] hands the message to one of a fixed set
//! of worker tasks and returns. The worker is chosen by conversation, so a conversation's
//! messages are fanned out one after another, in the order they were stored; each worker's
//! queue is bounded, so a store that cannot keep up slows the senders down instead of letting
//! queues grow without bound. Relays to other servers only queue on the peer's link (see
//! [`PeerPool`]): a slow or dead peer delays what goes to it, never a worker.
//!
//! A direct message's recipient is placed from the [`SessionView`] when this process relayed to
//! them recently, and looked up (with the rest of its batch) otherwise; a relay placed that way
//! asks the other server to report users it does not hold, and those are looked up again and
//! served where they are now (see [`crate::view`]).
//!
//! The same code serves a cim server (which also holds connections, `local`) and a route
//! (which holds none and relays everything over [`PeerPool`] links). Recipients are resolved
//! page by page, so a very large group is never held in memory at once, and the `Deliver` frame
//! is built once per message and shared by every local connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cim_core::{
    ConversationId, Error, ErrorKind, GroupId, Recipient, Result, ServerId, Session, StoredMessage,
    Stores, UserId,
};
use cim_proto::v1::{self, PeerDeliver};
use prost::Message;
use tokio::sync::mpsc;

use crate::delivery::{Delivery, deliver_frame};
use crate::local::LocalConnections;
use crate::peer::{Missed, PeerPool};
use crate::view::SessionView;

/// Group members read per page when resolving a group's recipients.
const MEMBERS_PAGE: u32 = 1000;
/// Fan-out workers: conversations are spread over them, each fanned out in order by one.
pub const DEFAULT_WORKERS: usize = 16;
/// Messages queued per worker before senders wait.
pub const DEFAULT_QUEUE: usize = 1024;
/// The waits before each new attempt at the recipients a fan-out could not reach.
pub const RETRY_BACKOFF: [Duration; 7] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
];
/// Fan-outs waiting for a retry at once, at most; beyond, a failed one is left to the
/// recipients' next sync.
const MAX_RETRIES: usize = 10_000;

/// Fans stored messages out to their recipients' connections, wherever they are.
///
/// Cheap to clone: clones share the workers, which stop once the last clone is dropped and
/// their queues are empty.
#[derive(Clone)]
pub struct Dispatcher {
    targets: Arc<Targets>,
    queues: Arc<Vec<mpsc::Sender<Job>>>,
}

/// What a fan-out reaches recipients through.
struct Targets {
    stores: Stores,
    pool: PeerPool,
    local: Option<Arc<LocalConnections>>,
    /// Fan-outs waiting to be tried again.
    retrying: AtomicUsize,
    /// Where direct recipients on other servers were last seen.
    view: SessionView,
}

/// Answers of other servers about users they did not hold, queued at most.
const MISSED_QUEUE: usize = 1024;

/// One message waiting for its fan-out.
struct Job {
    message: Arc<StoredMessage>,
    sender_name: Arc<str>,
}

impl Dispatcher {
    /// A dispatcher that looks recipients up in `stores`, relays to other servers through
    /// `pool`, and, on a server, delivers to its own connections `local` directly, with
    /// [`DEFAULT_WORKERS`] workers. Spawns the workers: call within a Tokio runtime.
    pub fn new(stores: Stores, pool: PeerPool, local: Option<Arc<LocalConnections>>) -> Self {
        Self::with_workers(stores, pool, local, DEFAULT_WORKERS, DEFAULT_QUEUE)
    }

    /// As [`Dispatcher::new`], with `workers` workers of `queue` messages each (both at least 1).
    pub fn with_workers(
        stores: Stores,
        pool: PeerPool,
        local: Option<Arc<LocalConnections>>,
        workers: usize,
        queue: usize,
    ) -> Self {
        let (missed, missed_rx) = mpsc::channel(MISSED_QUEUE);
        pool.report_missed_to(missed);
        let targets = Arc::new(Targets {
            stores,
            pool,
            local,
            retrying: AtomicUsize::new(0),
            view: SessionView::default(),
        });
        tokio::spawn(redeliver(Arc::downgrade(&targets), missed_rx));
        let queues = (0..workers.max(1))
            .map(|_| {
                let (jobs, rx) = mpsc::channel(queue.max(1));
                tokio::spawn(work(Arc::clone(&targets), rx));
                jobs
            })
            .collect();
        Dispatcher {
            targets,
            queues: Arc::new(queues),
        }
    }

    /// Queues `message` (already stored) for its fan-out and returns: at once, or once its
    /// worker has room. Messages of one conversation are fanned out in the order queued.
    pub async fn enqueue(&self, message: Arc<StoredMessage>, sender_name: Arc<str>) {
        let queue = &self.queues[worker_of(message.conversation, self.queues.len())];
        // A worker only stops when every sender is gone, and this is one.
        let _ = queue
            .send(Job {
                message,
                sender_name,
            })
            .await;
    }

    /// Delivers `message` (already stored) to every online recipient now, on the caller's
    /// task: the other user of a direct message; the members of a group except the sender;
    /// for [`GroupId::ALL`], every online user except the sender. `sender_name` is shown to
    /// the recipients. This is what a worker does with a queued message.
    ///
    /// Recipients on servers that cannot be reached are skipped (they sync the message later);
    /// the error then names them, as `Unavailable`, after every other server was served. A
    /// failing store lookup fails the whole dispatch with the store's error.
    pub async fn dispatch(&self, message: &StoredMessage, sender_name: &str) -> Result<()> {
        self.targets
            .dispatch(message, sender_name, None)
            .await
            .map_err(|missed| missed.error)
    }
}

/// Which worker fans out `conversation`'s messages.
fn worker_of(conversation: ConversationId, workers: usize) -> usize {
    const MIX: u64 = 0x9E37_79B9_7F4A_7C15;
    let key = match conversation {
        ConversationId::Direct { low, high } => low.0.wrapping_mul(MIX) ^ high.0,
        ConversationId::Group(group) => group.0,
    };
    let spread = key.wrapping_mul(MIX) >> 32;
    usize::try_from(spread % workers as u64).unwrap_or(0)
}

/// A worker: fans out its queue's messages one after another until every sender is gone.
///
/// It takes what is queued at once (up to [`LOOKUP_BATCH`] messages) and looks the sessions of
/// all their direct recipients up in one [`SessionStore::get_many`](cim_core::SessionStore::get_many)
/// (one round trip to a shared store instead of one per message), then fans the messages out
/// in order as before. The look-up is as fresh as a per-message one would be: taken a moment
/// before the batch's first delivery, by the worker that delivers them.
async fn work(targets: Arc<Targets>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(LOOKUP_BATCH);
    while jobs.recv_many(&mut batch, LOOKUP_BATCH).await > 0 {
        let sessions = targets.direct_sessions(&batch).await;
        for job in batch.drain(..) {
            let result = match direct_recipient(&job.message) {
                Some(user) => {
                    targets
                        .dispatch_direct(&job.message, &job.sender_name, sessions.of(user))
                        .await
                }
                None => targets.dispatch(&job.message, &job.sender_name, None).await,
            };
            if let Err(missed) = result {
                retry_later(&targets, job, missed, 0);
            }
        }
    }
}

/// Messages a worker takes from its queue at once, their direct recipients looked up together.
const LOOKUP_BATCH: usize = 64;

/// The other user of a direct message (none for a note to oneself or a group message).
fn direct_recipient(message: &StoredMessage) -> Option<UserId> {
    match message.to {
        Recipient::User(user) if user != message.sender => Some(user),
        _ => None,
    }
}

/// Where a batch's direct recipients are, or why their sessions could not be read.
enum BatchSessions {
    Found {
        /// Looked up now (no entry: offline).
        sessions: HashMap<UserId, Vec<Session>>,
        /// Placed from the view: the other servers they were seen on.
        viewed: HashMap<UserId, Vec<ServerId>>,
    },
    Failed {
        kind: ErrorKind,
        message: String,
    },
}

/// Where one direct recipient is.
#[derive(Debug, PartialEq)]
enum Place {
    /// Their sessions, as the store has them now (none: offline).
    Sessions(Vec<Session>),
    /// The other servers the view has them on.
    Viewed(Vec<ServerId>),
}

impl BatchSessions {
    /// Where `user` is, or the look-up's error. A user may receive several messages of the
    /// batch, so each gets a copy.
    fn of(&self, user: UserId) -> Result<Place> {
        match self {
            BatchSessions::Found { sessions, viewed } => Ok(match viewed.get(&user) {
                Some(servers) => Place::Viewed(servers.clone()),
                None => Place::Sessions(sessions.get(&user).cloned().unwrap_or_default()),
            }),
            BatchSessions::Failed { kind, message } => Err(Error::new(*kind, message.clone())),
        }
    }
}

/// Serves the users other servers said they do not hold, where the store has them now, until
/// the dispatcher is gone.
async fn redeliver(targets: std::sync::Weak<Targets>, mut missed: mpsc::Receiver<Missed>) {
    while let Some(Missed { server, frame }) = missed.recv().await {
        let Some(targets) = targets.upgrade() else {
            return;
        };
        let Some(message) = frame.message else {
            continue;
        };
        let users: Vec<UserId> = frame.user_ids.into_iter().map(UserId).collect();
        for user in &users {
            targets.view.forget(*user, &server);
        }
        let fanout = Fanout {
            targets: &targets,
            sender: UserId(message.sender_id),
            message,
            local_delivery: OnceLock::new(),
            report_missed: false,
        };
        if let Err(missed) = fanout.to_users(&users).await {
            tracing::debug!(error = %missed.error, "a moved recipient could not be reached live; they sync");
        }
    }
}

/// Tries the recipients `missed` names again after the backoff of `attempt`, on a task of its
/// own, until they are reached or the attempts run out.
fn retry_later(targets: &Arc<Targets>, job: Job, missed: Unreached, attempt: usize) {
    if matches!(missed.users.as_deref(), Some([])) {
        // Nobody to try again: a frame no client could read, or a message to "all".
        tracing::debug!(message = %job.message.id, error = %missed.error, "live delivery incomplete");
        return;
    }
    let Some(wait) = RETRY_BACKOFF.get(attempt).copied() else {
        tracing::debug!(message = %job.message.id, error = %missed.error, "live delivery incomplete after every retry; the recipients get the message at their next sync");
        return;
    };
    if targets.retrying.fetch_add(1, Ordering::Relaxed) >= MAX_RETRIES {
        targets.retrying.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(message = %job.message.id, error = %missed.error, "too many fan-outs waiting for a retry; the recipients get this message at their next sync");
        return;
    }
    tracing::debug!(message = %job.message.id, error = %missed.error, ?wait, "live delivery incomplete; trying again");
    let targets = Arc::clone(targets);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let result = targets
            .dispatch(&job.message, &job.sender_name, missed.users.as_deref())
            .await;
        targets.retrying.fetch_sub(1, Ordering::Relaxed);
        if let Err(missed) = result {
            retry_later(&targets, job, missed, attempt + 1);
        }
    });
}

impl Targets {
    /// The sessions of the direct recipients of `jobs`, in one look-up.
    async fn direct_sessions(&self, jobs: &[Job]) -> BatchSessions {
        let mut users: Vec<UserId> = jobs
            .iter()
            .filter_map(|job| direct_recipient(&job.message))
            .collect();
        users.sort_unstable();
        users.dedup();
        let now = tokio::time::Instant::now();
        let mut viewed = HashMap::new();
        users.retain(|user| match self.view.get(*user, now) {
            Some(servers) => {
                viewed.insert(*user, servers);
                false
            }
            None => true,
        });
        if users.is_empty() {
            return BatchSessions::Found {
                sessions: HashMap::new(),
                viewed,
            };
        }
        match self.stores.sessions.get_many(&users).await {
            Ok(found) => {
                let mut sessions: HashMap<UserId, Vec<Session>> = HashMap::new();
                for session in found {
                    sessions.entry(session.user_id).or_default().push(session);
                }
                let local = self.local.as_ref().map(|local| local.server_id());
                for (user, found) in &sessions {
                    if found.iter().all(|s| Some(&s.server_id) != local) {
                        let servers = found.iter().map(|s| s.server_id.clone()).collect();
                        self.view.record(*user, servers, now);
                    }
                }
                BatchSessions::Found { sessions, viewed }
            }
            Err(error) => BatchSessions::Failed {
                kind: error.kind(),
                message: error.message().to_string(),
            },
        }
    }

    /// Fans the direct `message` out to its recipient `user`, whose sessions were looked up
    /// already (with the rest of its batch).
    async fn dispatch_direct(
        &self,
        message: &StoredMessage,
        sender_name: &str,
        place: Result<Place>,
    ) -> std::result::Result<(), Unreached> {
        let fanout = Fanout {
            targets: self,
            message: deliver_frame(message, sender_name),
            sender: message.sender,
            local_delivery: OnceLock::new(),
            // Wherever the place came from, a server not holding the user says so.
            report_missed: true,
        };
        match place.map_err(|error| Unreached { users: None, error })? {
            Place::Sessions(sessions) => fanout.to_sessions(sessions).await,
            Place::Viewed(servers) => {
                let Some(user) = direct_recipient(message) else {
                    return Ok(());
                };
                let result = fanout.to_servers(servers.clone(), &[user.0]).await;
                if result.is_err() {
                    // A server that cannot be reached is no place to remember: the retry, and
                    // the next message, look the user up.
                    for server in &servers {
                        self.view.forget(user, server);
                    }
                }
                result
            }
        }
    }

    /// Fans `message` out to its recipients, or only to `only` of them (a retry).
    async fn dispatch(
        &self,
        message: &StoredMessage,
        sender_name: &str,
        only: Option<&[UserId]>,
    ) -> std::result::Result<(), Unreached> {
        let fanout = Fanout {
            targets: self,
            message: deliver_frame(message, sender_name),
            sender: message.sender,
            local_delivery: OnceLock::new(),
            report_missed: false,
        };
        let mut failures = Failures::default();
        match (message.to, only) {
            (Recipient::User(user), _) if user == message.sender => {}
            (Recipient::Group(GroupId::ALL), _) => {
                // Reaches who is online now, never stored per user: not tried again.
                if let Err(error) = fanout.to_everyone().await {
                    return Err(Unreached {
                        users: Some(Vec::new()),
                        error,
                    });
                }
            }
            (_, Some(users)) => failures.record(users, fanout.to_users(users).await),
            (Recipient::User(user), None) => {
                failures.record(&[user], fanout.to_users(&[user]).await)
            }
            (Recipient::Group(group), None) => {
                let mut cursor = None;
                loop {
                    let page = match self
                        .stores
                        .accounts
                        .members(group, cursor.as_ref(), MEMBERS_PAGE)
                        .await
                    {
                        Ok(page) => page,
                        Err(error) if failures.count == 0 => {
                            return Err(Unreached { users: None, error });
                        }
                        // Some pages were served: the rest is left to the next sync rather
                        // than delivered twice to those served.
                        Err(error) => {
                            let unreached = Unreached {
                                users: Some(Vec::new()),
                                error,
                            };
                            failures.record(&[], Err(unreached));
                            break;
                        }
                    };
                    let users: Vec<UserId> = page
                        .items
                        .into_iter()
                        .map(|member| member.user)
                        .filter(|user| *user != message.sender)
                        .collect();
                    failures.record(&users, fanout.to_users(&users).await);
                    match page.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
            }
        }
        failures.into_result()
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("pool", &self.targets.pool)
            .field("local", &self.targets.local.as_ref().map(|l| l.server_id()))
            .field("workers", &self.queues.len())
            .finish_non_exhaustive()
    }
}

/// One message's fan-out.
struct Fanout<'a> {
    targets: &'a Targets,
    message: v1::Deliver,
    sender: UserId,
    /// The encoded frame for local connections, built on first use.
    local_delivery: OnceLock<Arc<Delivery>>,
    /// Whether relays ask the other server to report the users it does not hold.
    report_missed: bool,
}

impl Fanout<'_> {
    fn local_delivery(&self) -> Result<&Arc<Delivery>> {
        if let Some(delivery) = self.local_delivery.get() {
            return Ok(delivery);
        }
        let delivery = Delivery::encode(&self.message, self.targets.pool.max_frame_len())?;
        Ok(self.local_delivery.get_or_init(|| delivery))
    }

    /// Delivers to those of `users` that are online; on failure, those it could not reach
    /// (all of them when their sessions could not be looked up).
    async fn to_users(&self, users: &[UserId]) -> std::result::Result<(), Unreached> {
        if users.is_empty() {
            return Ok(());
        }
        let sessions = self
            .targets
            .stores
            .sessions
            .get_many(users)
            .await
            .map_err(|error| Unreached { users: None, error })?;
        self.to_sessions(sessions).await
    }

    /// Delivers to the connections `sessions` name: this server's directly, the others'
    /// through a relay per server; on failure, the users it could not reach.
    async fn to_sessions(&self, sessions: Vec<Session>) -> std::result::Result<(), Unreached> {
        let mut remote: HashMap<ServerId, Vec<u64>> = HashMap::new();
        for session in sessions {
            match &self.targets.local {
                Some(local) if session.server_id == *local.server_id() => {
                    // A session of this server whose connection is gone is stale: the user
                    // reconnects and syncs.
                    let delivery = self.local_delivery().map_err(|error| Unreached {
                        users: Some(Vec::new()),
                        error,
                    })?;
                    local.deliver_to(session.user_id, session.connection_id, delivery);
                }
                _ => remote
                    .entry(session.server_id)
                    .or_default()
                    .push(session.user_id.0),
            }
        }
        self.relay_each(remote).await
    }

    /// Relays to `users` on each of `servers` (placed from the view).
    async fn to_servers(
        &self,
        servers: Vec<ServerId>,
        users: &[u64],
    ) -> std::result::Result<(), Unreached> {
        let remote = servers
            .into_iter()
            .map(|server| (server, users.to_vec()))
            .collect();
        self.relay_each(remote).await
    }

    /// Relays to each server its users, concurrently; on failure, the users not reached.
    async fn relay_each(
        &self,
        remote: HashMap<ServerId, Vec<u64>>,
    ) -> std::result::Result<(), Unreached> {
        let relays = remote.into_iter().map(|(server, users)| async move {
            self.relay(server, &users, false)
                .await
                .map_err(|error| (users, error))
        });
        let mut unreached: Option<Unreached> = None;
        for result in futures::future::join_all(relays).await {
            if let Err((users, error)) = result {
                let unreached = unreached.get_or_insert_with(|| Unreached {
                    users: Some(Vec::new()),
                    error,
                });
                if let Some(list) = unreached.users.as_mut() {
                    list.extend(users.into_iter().map(UserId));
                }
            }
        }
        unreached.map_or(Ok(()), Err)
    }

    /// Delivers to every online user but the sender: this server's connections, and every
    /// other server's through an `all_local` relay.
    async fn to_everyone(&self) -> Result<()> {
        let local_id = self.targets.local.as_ref().map(|local| local.server_id());
        if let Some(local) = &self.targets.local {
            local.deliver_to_all_except(self.sender, self.local_delivery()?);
        }
        let relays = self
            .targets
            .pool
            .servers()
            .into_iter()
            .filter(|server| Some(server) != local_id)
            .map(|server| self.relay(server, &[], true));
        let mut first = None;
        let mut failed = 0;
        for result in futures::future::join_all(relays).await {
            if let Err(e) = result {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(first) => Err(summarise(first, failed)),
        }
    }

    /// Sends the message to `server` for `users` (or all its users), in as many frames as the
    /// frame limit requires.
    async fn relay(&self, server: ServerId, users: &[u64], all_local: bool) -> Result<()> {
        let pool = &self.targets.pool;
        let base = PeerDeliver {
            message: Some(self.message.clone()),
            user_ids: Vec::new(),
            all_local,
            report_missed: self.report_missed && !all_local,
        };
        // A packed varint is at most 10 bytes per id; keep room for the field's own prefix.
        let room = pool.max_frame_len().saturating_sub(base.encoded_len() + 32);
        let per_frame = (room / 10).max(1);
        if users.is_empty() {
            return pool.deliver(&server, base).await;
        }
        for chunk in users.chunks(per_frame) {
            let frame = PeerDeliver {
                user_ids: chunk.to_vec(),
                ..base.clone()
            };
            pool.deliver(&server, frame).await?;
        }
        Ok(())
    }
}

/// Recipients a delivery could not reach, and why.
struct Unreached {
    /// These users; `None` for all it was given (their list or sessions could not be read).
    users: Option<Vec<UserId>>,
    /// The first failure.
    error: Error,
}

/// The recipients a fan-out could not reach, gathered into one [`Unreached`] for the whole fan-out.
#[derive(Default)]
struct Failures {
    users: Vec<UserId>,
    first: Option<Error>,
    count: usize,
}

impl Failures {
    /// Records the outcome of delivering to `users`.
    fn record(&mut self, users: &[UserId], result: std::result::Result<(), Unreached>) {
        if let Err(unreached) = result {
            self.count += 1;
            match unreached.users {
                Some(some) => self.users.extend(some),
                None => self.users.extend_from_slice(users),
            }
            self.first.get_or_insert(unreached.error);
        }
    }

    fn into_result(self) -> std::result::Result<(), Unreached> {
        match self.first {
            None => Ok(()),
            Some(first) => Err(Unreached {
                users: Some(self.users),
                error: summarise(first, self.count),
            }),
        }
    }
}

/// One error for `count` failures, the first of which is `first`.
fn summarise(first: Error, count: usize) -> Error {
    if count <= 1 {
        return first;
    }
    Error::new(
        first.kind(),
        format!(
            "{count} deliveries failed; the recipients get the message at their next sync. \
             First: {}",
            first.message()
        ),
    )
    .with_source(first)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use cim_core::balancer::RoundRobin;
    use cim_core::embedded::memory::{
        MemoryAccountStore, MemoryMessageStore, MemoryMetaStore, MemorySessionStore,
    };
    use cim_core::token::TokenKey;
    use cim_core::{
        BindOutcome, BindPolicy, ConnectionId, Cursor, MessageId, Page, Seq, SessionCapabilities,
        SessionRef, SessionStore, Timestamp,
    };

    use super::*;

    /// The memory session store, recording every `get_many` it answers (or failing them).
    struct Recorded {
        inner: MemorySessionStore,
        asked: Mutex<Vec<Vec<UserId>>>,
        fail: bool,
    }

    #[async_trait]
    impl SessionStore for Recorded {
        fn capabilities(&self) -> SessionCapabilities {
            self.inner.capabilities()
        }
        async fn bind(&self, session: Session, policy: BindPolicy) -> Result<BindOutcome> {
            self.inner.bind(session, policy).await
        }
        async fn get(&self, user: UserId) -> Result<Option<Session>> {
            self.inner.get(user).await
        }
        async fn get_many(&self, users: &[UserId]) -> Result<Vec<Session>> {
            self.asked.lock().expect("lock").push(users.to_vec());
            if self.fail {
                return Err(Error::unavailable("the session store is down"));
            }
            self.inner.get_many(users).await
        }
        async fn unbind(&self, session: &SessionRef) -> Result<bool> {
            self.inner.unbind(session).await
        }
        async fn refresh_server(&self, server: &ServerId) -> Result<()> {
            self.inner.refresh_server(server).await
        }
        async fn remove_server(&self, server: &ServerId) -> Result<u64> {
            self.inner.remove_server(server).await
        }
        async fn list_online(&self, cursor: Option<&Cursor>, limit: u32) -> Result<Page<Session>> {
            self.inner.list_online(cursor, limit).await
        }
        async fn count_online(&self) -> Result<u64> {
            self.inner.count_online().await
        }
    }

    fn targets(sessions: Arc<Recorded>) -> Targets {
        Targets {
            stores: Stores {
                meta: Arc::new(MemoryMetaStore::new(Duration::from_secs(30))),
                sessions,
                accounts: Arc::new(MemoryAccountStore::new()),
                messages: Arc::new(MemoryMessageStore::new()),
                balancer: Arc::new(RoundRobin::new()),
            },
            pool: PeerPool::new(
                "test".into(),
                TokenKey::new(&[1; 32]).expect("key"),
                64 * 1024,
            ),
            local: None,
            retrying: AtomicUsize::new(0),
            view: SessionView::default(),
        }
    }

    fn job(sender: u64, to: Recipient, seq: u64) -> Job {
        let conversation = match to {
            Recipient::User(user) => ConversationId::direct(UserId(sender), user),
            Recipient::Group(group) => ConversationId::Group(group),
        };
        Job {
            message: Arc::new(StoredMessage {
                id: MessageId(seq),
                conversation,
                seq: Seq(seq),
                sender: UserId(sender),
                to,
                client_msg_id: format!("m{seq}"),
                body: "hi".into(),
                sent_at: Timestamp::now(),
            }),
            sender_name: "sender".into(),
        }
    }

    fn recorded(fail: bool) -> Arc<Recorded> {
        Arc::new(Recorded {
            inner: MemorySessionStore::new(Duration::from_secs(30)),
            asked: Mutex::new(Vec::new()),
            fail,
        })
    }

    #[tokio::test]
    async fn a_batch_looks_up_its_direct_recipients_once() {
        let sessions = recorded(false);
        let bob = Session {
            user_id: UserId(2),
            server_id: ServerId::new("s2").expect("id"),
            connection_id: ConnectionId(7),
            device: "d".into(),
            login_at: Timestamp::now(),
        };
        sessions
            .bind(bob.clone(), BindPolicy::Replace)
            .await
            .expect("bind");
        let targets = targets(Arc::clone(&sessions));
        let batch = [
            job(1, Recipient::User(UserId(2)), 1),
            job(1, Recipient::User(UserId(3)), 1),
            job(1, Recipient::Group(GroupId(9)), 1),
            job(3, Recipient::User(UserId(2)), 2),
            job(4, Recipient::User(UserId(4)), 1),
        ];
        let found = targets.direct_sessions(&batch).await;
        assert_eq!(
            *sessions.asked.lock().expect("lock"),
            vec![vec![UserId(2), UserId(3)]],
            "one look-up, each recipient once, no group and no note to oneself"
        );
        assert_eq!(
            found.of(UserId(2)).expect("found"),
            Place::Sessions(vec![bob.clone()])
        );
        assert_eq!(
            found.of(UserId(3)).expect("found"),
            Place::Sessions(Vec::new()),
            "offline"
        );

        // The next batch places bob, on another server, from the view; the offline user is
        // looked up again (offline is never remembered).
        let again = targets.direct_sessions(&batch).await;
        assert_eq!(
            sessions.asked.lock().expect("lock").last(),
            Some(&vec![UserId(3)]),
            "only the user not in the view is looked up"
        );
        assert_eq!(
            again.of(UserId(2)).expect("found"),
            Place::Viewed(vec![bob.server_id.clone()])
        );

        // Once bob's server says he is not there, he is looked up again.
        targets.view.forget(UserId(2), &bob.server_id);
        targets.direct_sessions(&batch).await;
        assert_eq!(
            sessions.asked.lock().expect("lock").last(),
            Some(&vec![UserId(2), UserId(3)])
        );
    }

    #[tokio::test]
    async fn a_failed_look_up_is_every_direct_message_s_error() {
        let targets = targets(recorded(true));
        let batch = [job(1, Recipient::User(UserId(2)), 1)];
        let found = targets.direct_sessions(&batch).await;
        let error = found.of(UserId(2)).expect_err("the store is down");
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert_eq!(
            found.of(UserId(2)).expect_err("again").kind(),
            ErrorKind::Unavailable,
            "every message of the batch gets it"
        );
    }
}
