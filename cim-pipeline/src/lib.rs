//! # cim-pipeline
//!
//! The one path a message takes, whatever brought it: a client connection (`cim-server`), the
//! route's HTTP send API (`cim-route`) or the scheduler. Every entry point calls
//! [`Pipeline::send`] (the scheduler, [`Pipeline::release`]), so every message meets the same
//! limits, the same permission checks and the same store-before-acknowledge rule. The stages, a
//! file each:
//!
//! | stage | module | what happens |
//! |---|---|---|
//! | 1. validate | [`validate`] | the body, the idempotency key and `deliver_at` within [`LimitsConfig`] |
//! | 2. rate limit | [`rate_limit`] | one token bucket per user, shared by every entry point of the process |
//! | 3. authorise | [`authorize`] | the recipient exists and the sender may write to it |
//! | 4. store or schedule | [`store`] | appended (or kept until due) before anything else |
//! | 5. acknowledge | the caller | the entry point answers with [`Accepted`] (a `SendAck`, an HTTP 200) |
//! | 6. dispatch | [`dispatch`] | fanned out to online recipients off the sender's task, in order per conversation |
//!
//! Below dispatch sit the pieces deliveries travel through: [`Delivery`] (a `Deliver` frame
//! encoded once for every connection), [`LocalConnections`] (a server's own connections, each
//! reached through its [`Mailbox`]) and [`PeerPool`] (links to the other servers). Before any
//! of it, [`admission`] bounds how many connections each listener holds, so one flooded
//! listener cannot starve the others.
//!
//! ```no_run
//! # async fn demo(stores: cim_core::Stores, key: cim_core::token::TokenKey) -> cim_core::Result<()> {
//! use cim_core::{Recipient, UserId};
//! use cim_pipeline::{LimitsConfig, PeerPool, Pipeline, SendRequest, Sender};
//!
//! let peers = PeerPool::new("route".into(), key, cim_proto::DEFAULT_MAX_FRAME_LEN);
//! let names = cim_core::NameRules::default();
//! let pipeline = Pipeline::new(stores, LimitsConfig::default(), &names, peers, None)?;
//! let accepted = pipeline
//!     .send(
//!         &Sender::new(UserId(1), "alice"),
//!         SendRequest {
//!             to: Recipient::User(UserId(2)),
//!             client_msg_id: "m-1".into(),
//!             body: "hi bob".into(),
//!             deliver_at: None,
//!         },
//!     )
//!     .await?;
//! # let _ = accepted; Ok(()) }
//! ```

pub mod admission;
pub mod authorize;
pub mod batch;
pub mod config;
pub mod delivery;
pub mod dispatch;
pub mod local;
pub mod mailbox;
mod message;
pub mod peer;
pub mod rate_limit;
pub mod store;
pub mod validate;
pub mod view;

use std::sync::Arc;

use cim_core::{
    ErrorKind, GroupId, NameRules, Recipient, Result, ScheduledMessage, Stores, Timestamp,
};
use tokio::time::Instant;

pub use batch::Gather;
pub use config::{BroadcastAllow, BroadcastConfig, LimitsConfig};
pub use delivery::Delivery;
pub use dispatch::Dispatcher;
pub use local::LocalConnections;
pub use mailbox::Mailbox;
pub use message::{Accepted, SendRequest, Sender};
pub use peer::PeerPool;
pub use rate_limit::{Allowance, Keyed, PerUser, RateLimit, TokenBucket};

/// The message pipeline of one process: cheap to clone, clones share everything (the rate
/// limits included, so a user's connections and HTTP calls draw from one bucket).
#[derive(Clone, Debug)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    stores: Stores,
    limits: LimitsConfig,
    messages: PerUser,
    known_users: authorize::KnownUsers,
    broadcasts: PerUser,
    peers: PeerPool,
    dispatcher: Dispatcher,
}

impl Pipeline {
    /// A pipeline over `stores` with `limits`, dispatching through `peers` and, on a server,
    /// to its own connections `local`. `Config` if the limits are invalid, or if the frame
    /// limit of `peers` cannot carry the largest message they allow with a sender name of the
    /// longest length `names` allows. Starts the dispatch workers: call within a Tokio runtime.
    pub fn new(
        stores: Stores,
        limits: LimitsConfig,
        names: &NameRules,
        peers: PeerPool,
        local: Option<Arc<LocalConnections>>,
    ) -> Result<Pipeline> {
        limits.validate()?;
        limits.check_frame_room(peers.max_frame_len(), names, "max_frame_len")?;
        let dispatcher = Dispatcher::new(stores.clone(), peers.clone(), local);
        Ok(Pipeline {
            inner: Arc::new(Inner {
                messages: PerUser::new(limits.messages),
                broadcasts: PerUser::new(limits.broadcast.rate),
                known_users: authorize::KnownUsers::default(),
                stores,
                limits,
                peers,
                dispatcher,
            }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &LimitsConfig {
        &self.inner.limits
    }

    /// The stores the pipeline writes to.
    pub fn stores(&self) -> &Stores {
        &self.inner.stores
    }

    /// The dispatcher, for a message stored outside the pipeline that should be delivered.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.inner.dispatcher
    }

    /// The links to the cluster's servers the pipeline relays through (also for kicks).
    pub fn peers(&self) -> &PeerPool {
        &self.inner.peers
    }

    /// Takes `sender`'s message through every stage: validate, rate-limit, authorise, store
    /// or schedule, queue for dispatch. Returns once the message is safe (stored or
    /// scheduled), which is when the entry point acknowledges it; the fan-out goes on without
    /// the caller.
    ///
    /// Errors, by kind: `InvalidInput` (a limit or field, the message says which),
    /// `RateLimited` (with [`retry_after`](cim_core::Error::retry_after)), `NotFound` (no such
    /// user, or no group the sender is a member of), `PermissionDenied` (not allowed to
    /// broadcast), or the store's own (`Unavailable`, ...). Nothing is stored on an error.
    pub async fn send(&self, sender: &Sender, request: SendRequest) -> Result<Accepted> {
        let mut results = self.send_all(sender, vec![request]).await;
        results.pop().unwrap_or_else(|| {
            Err(cim_core::Error::internal(
                "the pipeline answered no result for one send",
            ))
        })
    }

    /// [`send`](Self::send) for the messages an entry point received together (a
    /// connection's batch of frames): each goes through validation, rate limit and
    /// authorisation in order, then those admitted are stored together (one commit on
    /// backends that can) and queued for dispatch in order. Each request gets its own result,
    /// in order; one refused does not stop the others.
    pub async fn send_all(
        &self,
        sender: &Sender,
        requests: Vec<SendRequest>,
    ) -> Vec<Result<Accepted>> {
        let inner = &self.inner;
        let mut results = Gather::with_capacity(requests.len());
        let mut admitted = Vec::new();
        for request in requests {
            match self.admit(sender, request).await {
                Ok(valid) => {
                    results.deferred();
                    admitted.push(valid);
                }
                Err(e) => results.decided(Err(e)),
            }
        }
        let accepted = store::accept_all(inner.stores.messages.as_ref(), admitted).await;
        for accepted in &accepted {
            if let Ok(Accepted::Stored { message, .. }) = accepted {
                inner
                    .dispatcher
                    .enqueue(Arc::clone(message), Arc::clone(&sender.name))
                    .await;
            }
        }
        results.finish(accepted)
    }

    /// The stages before the store: validate, rate-limit, authorise.
    async fn admit(&self, sender: &Sender, request: SendRequest) -> Result<validate::Valid> {
        let inner = &self.inner;
        let valid = validate::request(&inner.limits, sender, request, Timestamp::now())?;
        let now = Instant::now();
        inner.messages.take(&sender.id, now).map_err(|wait| {
            cim_core::Error::rate_limited(
                format!(
                    "more than {} messages per second; slow down",
                    inner.limits.messages.per_second
                ),
                wait,
            )
        })?;
        let to = valid.message.to;
        authorize::send(
            inner.stores.accounts.as_ref(),
            &inner.known_users,
            &inner.limits.broadcast,
            sender,
            to,
        )
        .await?;
        if to == Recipient::Group(GroupId::ALL) {
            inner.broadcasts.take(&sender.id, now).map_err(|wait| {
                cim_core::Error::rate_limited(
                    format!(
                        "more than {} messages per second to \"all\"; slow down",
                        inner.limits.broadcast.rate.per_second
                    ),
                    wait,
                )
            })?;
        }
        Ok(valid)
    }

    /// Releases a scheduled message that is due (the scheduler's entry point): checks again
    /// that its sender may still write to its recipient (they may have left the group since),
    /// appends it (idempotent, so a claimer that died half-way is replaced without a
    /// duplicate), queues it for dispatch and finishes the entry. A message that can never be
    /// sent is dropped with a warning rather than retried forever.
    pub async fn release(&self, entry: ScheduledMessage) -> Result<()> {
        let inner = &self.inner;
        let messages = &inner.stores.messages;
        let sender_id = entry.message.sender;
        let name = match inner.stores.accounts.user(sender_id).await? {
            Some(user) => user.name,
            None => String::new(),
        };
        let sender = Sender::new(sender_id, name);
        let allowed = authorize::send(
            inner.stores.accounts.as_ref(),
            &inner.known_users,
            &inner.limits.broadcast,
            &sender,
            entry.message.to,
        )
        .await;
        match allowed {
            Ok(()) => match messages.append(entry.message.clone()).await {
                Ok(appended) => {
                    inner
                        .dispatcher
                        .enqueue(Arc::new(appended.message), Arc::clone(&sender.name))
                        .await;
                }
                Err(e) if e.kind() == ErrorKind::InvalidInput => {
                    tracing::warn!(entry = %entry.id, error = %e, "dropping a scheduled message that cannot be stored");
                }
                Err(e) => return Err(e),
            },
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => {
                tracing::info!(entry = %entry.id, error = %e, "dropping a scheduled message its sender may no longer send");
            }
            Err(e) => return Err(e),
        }
        match messages.finish_scheduled(entry.id).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
