//! [`Dispatcher`]: the live fan-out of a stored message to its recipients' connections.
//!
//! Dispatch comes after the message is stored, so it is an optimisation of latency, not a part
//! of durability: a recipient it misses (offline, on a server that just died, on a connection
//! too slow to keep up) still has the message pending in the store and gets it at its next
//! sync. That is why dispatch tries every server even when one fails, and why its error only
//! reports what could not be reached live.
//!
//! The same code serves a cim server (which also holds connections, `local`) and a route
//! (which holds none and relays everything over [`PeerPool`] links). Recipients are resolved
//! page by page, so a very large group is never held in memory at once, and the `Deliver` frame
//! is built once per message and shared by every local connection.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cim_core::{Error, GroupId, Recipient, Result, ServerId, StoredMessage, Stores, UserId};
use cim_proto::v1::{self, PeerDeliver};
use prost::Message;

use crate::delivery::{Delivery, deliver_frame};
use crate::local::LocalConnections;
use crate::peer::PeerPool;

/// Group members read per page when resolving a group's recipients.
const MEMBERS_PAGE: u32 = 1000;

/// Fans a stored message out to its recipients' connections, wherever they are.
#[derive(Clone)]
pub struct Dispatcher {
    stores: Stores,
    pool: PeerPool,
    local: Option<Arc<LocalConnections>>,
}

impl Dispatcher {
    /// A dispatcher that looks recipients up in `stores`, relays to other servers through
    /// `pool`, and, on a server, delivers to its own connections `local` directly.
    pub fn new(stores: Stores, pool: PeerPool, local: Option<Arc<LocalConnections>>) -> Self {
        Dispatcher {
            stores,
            pool,
            local,
        }
    }

    /// Delivers `message` (already stored) to every online recipient: the other user of a
    /// direct message; the members of a group except the sender; for [`GroupId::ALL`], every
    /// online user except the sender. `sender_name` is shown to the recipients.
    ///
    /// Recipients on servers that cannot be reached are skipped (they sync the message later);
    /// the error then names them, as `Unavailable`, after every other server was served. A
    /// failing store lookup fails the whole dispatch with the store's error.
    pub async fn dispatch(&self, message: &StoredMessage, sender_name: &str) -> Result<()> {
        let fanout = Fanout {
            dispatcher: self,
            message: deliver_frame(message, sender_name),
            sender: message.sender,
            local_delivery: OnceLock::new(),
        };
        match message.to {
            Recipient::User(user) if user == message.sender => Ok(()),
            Recipient::User(user) => fanout.to_users(&[user]).await,
            Recipient::Group(GroupId::ALL) => fanout.to_everyone().await,
            Recipient::Group(group) => {
                let mut failures = Failures::default();
                let mut cursor = None;
                loop {
                    let page = self
                        .stores
                        .accounts
                        .members(group, cursor.as_ref(), MEMBERS_PAGE)
                        .await?;
                    let users: Vec<UserId> = page
                        .items
                        .into_iter()
                        .filter(|user| *user != message.sender)
                        .collect();
                    failures.record(fanout.to_users(&users).await);
                    match page.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                failures.into_result()
            }
        }
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("pool", &self.pool)
            .field("local", &self.local.as_ref().map(|l| l.server_id()))
            .finish_non_exhaustive()
    }
}

/// One message's fan-out.
struct Fanout<'a> {
    dispatcher: &'a Dispatcher,
    message: v1::Deliver,
    sender: UserId,
    /// The encoded frame for local connections, built on first use.
    local_delivery: OnceLock<Arc<Delivery>>,
}

impl Fanout<'_> {
    fn local_delivery(&self) -> Result<&Arc<Delivery>> {
        if let Some(delivery) = self.local_delivery.get() {
            return Ok(delivery);
        }
        let delivery = Delivery::encode(&self.message, self.dispatcher.pool.max_frame_len())?;
        Ok(self.local_delivery.get_or_init(|| delivery))
    }

    /// Delivers to those of `users` that are online.
    async fn to_users(&self, users: &[UserId]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let sessions = self.dispatcher.stores.sessions.get_many(users).await?;
        let mut remote: HashMap<ServerId, Vec<u64>> = HashMap::new();
        for session in sessions {
            match &self.dispatcher.local {
                Some(local) if session.server_id == *local.server_id() => {
                    // A session of this server whose connection is gone is stale: the user
                    // reconnects and syncs.
                    local.deliver_to(
                        session.user_id,
                        session.connection_id,
                        self.local_delivery()?,
                    );
                }
                _ => remote
                    .entry(session.server_id)
                    .or_default()
                    .push(session.user_id.0),
            }
        }
        let relays = remote
            .into_iter()
            .map(|(server, users)| self.relay(server, users, false));
        let mut failures = Failures::default();
        for result in futures::future::join_all(relays).await {
            failures.record(result);
        }
        failures.into_result()
    }

    /// Delivers to every online user but the sender: this server's connections, and every
    /// other server's through an `all_local` relay.
    async fn to_everyone(&self) -> Result<()> {
        let local_id = self
            .dispatcher
            .local
            .as_ref()
            .map(|local| local.server_id());
        if let Some(local) = &self.dispatcher.local {
            local.deliver_to_all_except(self.sender, self.local_delivery()?);
        }
        let relays = self
            .dispatcher
            .pool
            .servers()
            .into_iter()
            .filter(|server| Some(server) != local_id)
            .map(|server| self.relay(server, Vec::new(), true));
        let mut failures = Failures::default();
        for result in futures::future::join_all(relays).await {
            failures.record(result);
        }
        failures.into_result()
    }

    /// Sends the message to `server` for `users` (or all its users), in as many frames as the
    /// frame limit requires.
    async fn relay(&self, server: ServerId, users: Vec<u64>, all_local: bool) -> Result<()> {
        let pool = &self.dispatcher.pool;
        let base = PeerDeliver {
            message: Some(self.message.clone()),
            user_ids: Vec::new(),
            all_local,
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

/// The relays that failed, summarised into one error.
#[derive(Default)]
struct Failures {
    first: Option<Error>,
    count: usize,
}

impl Failures {
    fn record(&mut self, result: Result<()>) {
        if let Err(e) = result {
            self.count += 1;
            self.first.get_or_insert(e);
        }
    }

    fn into_result(self) -> Result<()> {
        match self.first {
            None => Ok(()),
            Some(first) if self.count == 1 => Err(first),
            Some(first) => Err(Error::new(
                first.kind(),
                format!(
                    "{} relays failed; the recipients get the message at their next sync. \
                     First: {}",
                    self.count,
                    first.message()
                ),
            )
            .with_source(first)),
        }
    }
}
