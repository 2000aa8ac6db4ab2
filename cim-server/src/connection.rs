//! One client connection, from the first byte to the unbind.
//!
//! A connection is one task running one `select!` loop, so everything about it (its frames in,
//! its deliveries out, kicks, the idle timer, shutdown) is decided in one place and in order.
//! The stages:
//!
//! 1. **Login.** The first frame must be `Login` within `login_timeout`, with a token the route
//!    issued. Anything else gets an error frame and a close: nothing is served to a connection
//!    that has not proved who it is.
//! 2. **Bind.** The connection registers locally *before* it binds its session, so that once
//!    any dispatcher can find the session, the connection can receive. A replaced session's
//!    connection is kicked, here or on its server.
//! 3. **Sync.** Everything the user has not acknowledged is sent, page by page, oldest first per
//!    conversation. Live deliveries that arrive meanwhile are held back, and after the sync only
//!    those the sync did not already cover are sent, in sequence order: the client sees each
//!    conversation in order even when a message arrives during its sync.
//! 4. **Serve.** Pings, sends (stored before they are acknowledged, then dispatched), delivery
//!    acks, and live deliveries, until the client leaves, goes idle, floods, is kicked, falls
//!    too far behind, or the server shuts down.
//!
//!    Live delivery is best effort (a relay can fail, a link can break with frames in flight,
//!    a session can lapse in the store while this server is stalled), and the store is the
//!    truth, so the connection makes up for what it may have missed while it lives, not only at
//!    the next login. Per conversation it knows the highest sequence up to which it has sent
//!    everything addressed to the user. A live message above the next one it expects fills the
//!    gap from the store's history first, so nothing is skipped and each conversation stays in
//!    order; one at or below it was sent already and is dropped. The first live message of a
//!    conversation starts from the user's acknowledged cursor. And when the server finds this
//!    connection's session lost from the store, it tells the connection to sync again.
//! 5. **Close.** Unregister, then unbind the session by compare-and-delete, so a newer login of
//!    the same user is never undone by this old connection.
//!
//! A bad frame closes this connection only; a failing backend becomes an error frame. Nothing
//! here panics on input.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cim_core::token::Claims;
use cim_core::{
    BindOutcome, ConnectionId, ConversationId, Error, ErrorKind, GroupId, HistoryQuery, Seq,
    Session, SessionRef, StoredMessage, Timestamp, UserId,
};
use cim_pipeline::delivery::{deliver_frame, recipient_from_proto};
use cim_pipeline::local::ConnectionHandle;
use cim_pipeline::mailbox::{Control, Mail};
use cim_pipeline::{Accepted, Delivery, Gather, Mailbox, SendRequest, Sender, TokenBucket};
use cim_proto::v1::{self, PeerKick};
use cim_proto::{Body, ErrorCode, Frame, KickReason};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};

use crate::server::Shared;
use crate::wire::{
    ClientStream, Outbound, ReadEnd, close, error_code, error_frame, failure_frame, frame_error,
    kicked_frame, undeliverable_frame,
};

/// How far apart a server's connections catch up after another server died: each picks a
/// moment at random within this time, so the store is not read for all of them at once.
const CATCH_UP_SPREAD: Duration = Duration::from_secs(3);
/// The first and the longest wait before a connection syncs again after a failed check.
const MIN_RESYNC_WAIT: Duration = Duration::from_millis(500);
const MAX_RESYNC_WAIT: Duration = Duration::from_secs(15);
/// The longest device label accepted at login, in bytes.
const MAX_DEVICE_LEN: usize = 64;
/// Messages read per page during the sync.
const SYNC_PAGE: u32 = 256;
/// Deliveries queued before one flush.
const MAX_BATCH: usize = 64;
/// Bytes queued before a flush even in the middle of a batch (a sync page, a gap's fill).
const FLUSH_AT: usize = 64 * 1024;
/// Conversations whose delivered sequence a connection remembers; beyond, it forgets them all
/// and starts again from the acknowledged cursors (one store read per conversation).
const MAX_TRACKED: usize = 1024;

/// Serves one client connection to its end.
///
/// Only the main loop's wait stays in the connection's future for its whole life, which is
/// what most connections do most of the time: the opening (login, bind, sync, the first
/// frames), the ending, and every batch of frames served are boxed, so their state exists
/// only while they run.
pub(crate) async fn serve(shared: Arc<Shared>, socket: TcpStream) {
    let Some(mut connection) = Box::pin(open(shared, socket)).await else {
        return;
    };
    let last = connection.serve().await;
    Box::pin(connection.end(last)).await;
}

/// Logs the client in, registers, binds and syncs it; the connection, unless it ended.
async fn open(shared: Arc<Shared>, socket: TcpStream) -> Option<Connection> {
    let _ = socket.set_nodelay(true);
    let peer = socket.peer_addr().ok();
    let stream = ClientStream::new(socket, shared.config.max_frame_len);
    let (stream, claims, device, early) = match login(&shared, stream).await {
        Ok(logged_in) => logged_in,
        Err((stream, last)) => {
            close(stream, last, shared.config.idle_timeout).await;
            return None;
        }
    };
    tracing::debug!(?peer, user = %claims.user_id, "login");
    let (mut connection, session) = connect(&shared, stream, claims, device);
    match connection.start(session, early).await {
        Ok(()) => Some(connection),
        Err(last) => {
            connection.end(last).await;
            None
        }
    }
}

/// Registers a logged-in connection here (before its session is bound, so that it can
/// receive as soon as any dispatcher can find the session); the connection and its session.
fn connect(
    shared: &Arc<Shared>,
    stream: ClientStream,
    claims: Claims,
    device: String,
) -> (Connection, Session) {
    let connection_id = ConnectionId(rand::random());
    let mailbox = Arc::new(Mailbox::new(shared.config.outbound_queue));
    let login_at = Timestamp::now();
    shared.local.register(
        claims.user_id,
        ConnectionHandle {
            id: connection_id,
            mailbox: Arc::clone(&mailbox),
            device: device.clone(),
            login_at,
            bound: false,
        },
    );
    if shared.shutdown.is_cancelled() {
        // The shutdown's kicks went out before this connection registered.
        mailbox.order(Control::Kick(KickReason::ServerShutdown));
    }
    let session = Session {
        user_id: claims.user_id,
        server_id: shared.id.clone(),
        connection_id,
        device,
        login_at,
    };
    let limits = shared.pipeline.limits();
    let connection = Connection {
        frames: TokenBucket::new(limits.frames, Instant::now()),
        refused_frames: Refusals::new(limits.frames.burst),
        refused_sends: Refusals::new(limits.messages.burst),
        token_expires: deadline(claims.expires_at),
        token_expires_at: claims.expires_at,
        session_id: claims.session_id,
        sender: Sender::new(claims.user_id, claims.user_name),
        user: claims.user_id,
        shared: Arc::clone(shared),
        stream,
        connection_id,
        mailbox,
        delivered: HashMap::new(),
        resync_at: None,
        resync_backoff: MIN_RESYNC_WAIT,
        catch_up_at: None,
    };
    (connection, session)
}

/// What a successful login leaves: the stream, who logged in, from which device, and the
/// frames the client sent after its `Login` in the same read.
type LoggedIn = (ClientStream, Claims, String, Vec<Frame>);

/// Reads and checks the `Login` frame; on failure, the connection and its last frame.
async fn login(
    shared: &Shared,
    mut stream: ClientStream,
) -> std::result::Result<LoggedIn, (ClientStream, Option<Outbound>)> {
    let first = tokio::select! {
        _ = shared.shutdown.cancelled() => {
            return Err((stream, Some(kicked_frame(KickReason::ServerShutdown))));
        }
        first = timeout(shared.config.login_timeout, stream.read()) => first,
    };
    let mut frames = match first {
        Err(_) => {
            let text = format!(
                "no Login frame within {:?}; log in first",
                shared.config.login_timeout
            );
            return Err((stream, Some(error_frame(ErrorCode::NotLoggedIn, text, ""))));
        }
        Ok(Err(end)) => {
            let last = read_end_frame(&end);
            return Err((stream, last));
        }
        Ok(Ok(frames)) => frames.into_iter(),
    };
    let login = match frames.next() {
        Some(Frame {
            body: Some(Body::Login(login)),
        }) => login,
        _ => {
            let text = "the first frame must be Login; log in before anything else";
            return Err((stream, Some(error_frame(ErrorCode::NotLoggedIn, text, ""))));
        }
    };
    let early: Vec<Frame> = frames.collect();
    let claims = match shared.key.verify(&login.token) {
        Ok(claims) if claims.user_id != UserId(0) => claims,
        Ok(_) => {
            let text = "this token is not a user's; log in through the route";
            return Err((
                stream,
                Some(error_frame(ErrorCode::Unauthenticated, text, "")),
            ));
        }
        Err(e) => {
            let text = e.message().to_string();
            return Err((
                stream,
                Some(error_frame(ErrorCode::Unauthenticated, text, "")),
            ));
        }
    };
    if login.device.len() > MAX_DEVICE_LEN {
        let text = format!("the device label is longer than {MAX_DEVICE_LEN} bytes");
        return Err((stream, Some(error_frame(ErrorCode::InvalidInput, text, ""))));
    }
    match shared
        .stores
        .accounts
        .is_session_revoked(&claims.session_id)
        .await
    {
        Ok(false) => {}
        Ok(true) => {
            let text = "this login was ended (logged out); log in again through the route";
            return Err((
                stream,
                Some(error_frame(ErrorCode::Unauthenticated, text, "")),
            ));
        }
        Err(e) => {
            let text = format!("cannot check your login now: {}", e.message());
            return Err((stream, Some(error_frame(error_code(e.kind()), text, ""))));
        }
    }
    Ok((stream, claims, login.device, early))
}

/// Why the connection ends, when the client should hear it.
type Last = Option<Outbound>;

/// A logged-in connection.
struct Connection {
    shared: Arc<Shared>,
    stream: ClientStream,
    user: UserId,
    /// The user, as the pipeline and recipients see them.
    sender: Sender,
    connection_id: ConnectionId,
    /// Deliveries and orders from outside the task.
    mailbox: Arc<Mailbox>,
    /// Every frame the client sends takes a token (`[limits.frames]`).
    frames: TokenBucket,
    /// Frames refused for the frame rate, and messages for the message rate, since the client
    /// last let its frame bucket fill up.
    refused_frames: Refusals,
    refused_sends: Refusals,
    /// The login this connection belongs to, and when its token expires (a `RefreshToken`
    /// frame moves it): the connection ends then.
    session_id: String,
    token_expires_at: Timestamp,
    token_expires: Instant,
    /// Per conversation, the sequence up to which every message addressed to the user has been
    /// written to this connection (by the sync, live, or filling a gap). A delivery at or below
    /// it is a duplicate; one above the next expected means a gap to fill from the store.
    delivered: HashMap<ConversationId, Seq>,
    /// When to sync again from the store, because a live delivery could not be checked for a
    /// hole below it (the store was unreachable); live deliveries wait for it meanwhile.
    resync_at: Option<Instant>,
    /// The wait before the next resync after one failed.
    resync_backoff: Duration,
    /// When to catch up from the store because another server died with fan-outs in flight;
    /// live deliveries go on meanwhile.
    catch_up_at: Option<Instant>,
}

/// Why a sync stopped.
enum SyncFailed {
    /// The store could not be read.
    Store(Error),
    /// The connection ends, with this last frame.
    End(Last),
}

/// What the main loop's timer found due.
enum Due {
    /// The connection went idle, or its token expired.
    Close(KickReason),
    /// A resync or a catch-up.
    Resync,
    /// Nothing yet: a deadline moved.
    Nothing,
}

/// What the loop does after handling one event.
enum Step {
    Continue,
    Close(Last),
}

impl Connection {
    /// Binds, answers the login, syncs, and serves `early`, the frames the client sent right
    /// after its `Login`; `Err` with the frame to end with if the connection ends already.
    async fn start(
        &mut self,
        session: Session,
        early: Vec<Frame>,
    ) -> std::result::Result<(), Last> {
        self.bind(session).await?;
        let result = Body::LoginResult(v1::LoginResult {
            user_id: self.user.0,
            user_name: self.sender.name.to_string(),
            server_id: self.shared.id.to_string(),
            connection_id: self.connection_id.0,
            heartbeat_interval_ms: millis(self.shared.config.heartbeat_interval),
            idle_timeout_ms: millis(self.shared.config.idle_timeout),
            max_frame_len: u32::try_from(self.shared.config.max_frame_len).unwrap_or(u32::MAX),
            max_body_len: u32::try_from(self.shared.pipeline.limits().max_body_len)
                .unwrap_or(u32::MAX),
            token_expires_at_ms: self.token_expires_at.as_millis(),
        });
        if self.write(result.into()).await.is_err() {
            return Err(None);
        }
        let held = match Box::pin(self.sync()).await {
            Ok(held) => held,
            Err(SyncFailed::Store(e)) => return Err(Some(sync_error_frame(&e))),
            Err(SyncFailed::End(last)) => return Err(last),
        };
        if let Step::Close(last) = self.send_held(held).await {
            return Err(last);
        }
        match self.handle_batch(early).await {
            Step::Continue => Ok(()),
            Step::Close(last) => Err(last),
        }
    }

    /// Unregisters, unbinds the session by compare-and-delete (a newer login of the same user
    /// stays), then says goodbye with `last`.
    async fn end(self, last: Last) {
        self.mailbox.close();
        self.shared.local.unregister(self.user, self.connection_id);
        let session = SessionRef {
            user_id: self.user,
            server_id: self.shared.id.clone(),
            connection_id: self.connection_id,
        };
        // Unbind before the goodbye, which may linger: the user can log in again at once.
        if let Err(e) = self.shared.stores.sessions.unbind(&session).await {
            tracing::warn!(user = %self.user, error = %e, "cannot unbind a closed connection's session; it expires with the server's");
        }
        close(self.stream, last, self.shared.config.idle_timeout).await;
    }

    /// Binds the session under the login policy and kicks the session it replaces.
    async fn bind(&mut self, session: Session) -> std::result::Result<(), Last> {
        let policy = self.shared.config.login_policy;
        let (user, connection) = (session.user_id, session.connection_id);
        match self.shared.stores.sessions.bind(session, policy).await {
            Ok(BindOutcome::Bound) => {
                self.shared.local.mark_bound(user, connection);
                Ok(())
            }
            Ok(BindOutcome::Replaced(old)) => {
                self.shared.local.mark_bound(user, connection);
                self.kick_replaced(old.reference()).await;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Some(error_frame(
                ErrorCode::Forbidden,
                "you are logged in elsewhere and this deployment rejects a second login; log \
                 out there first",
                "",
            ))),
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e, "cannot bind a session");
                Err(Some(error_frame(
                    error_code(e.kind()),
                    format!("cannot log in now: {}", e.message()),
                    "",
                )))
            }
        }
    }

    async fn kick_replaced(&self, old: SessionRef) {
        if old.server_id == self.shared.id {
            self.shared
                .local
                .kick(old.user_id, old.connection_id, KickReason::Replaced);
            return;
        }
        let kick = PeerKick {
            user_id: old.user_id.0,
            connection_id: old.connection_id.0,
            reason: KickReason::Replaced as i32,
        };
        if let Err(e) = self.shared.pool.kick(&old.server_id, kick).await {
            // Its server is gone or unreachable: the old connection is gone with it, or its
            // session check fails there at the next bind.
            tracing::debug!(server = %old.server_id, error = %e, "cannot kick a replaced session");
        }
    }

    /// Sends every pending message; returns the live deliveries that arrived meanwhile.
    async fn sync(&mut self) -> std::result::Result<Vec<Arc<Delivery>>, SyncFailed> {
        let stores = self.shared.stores.clone();
        let user = self.user;
        let unavailable = |e: Error| {
            tracing::warn!(%user, error = %e, "sync failed");
            SyncFailed::Store(e)
        };
        let groups: Vec<GroupId> = if stores.accounts.capabilities().groups {
            stores
                .accounts
                .user_groups(self.user)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|group| group.id)
                .filter(|group| *group != GroupId::ALL)
                .collect()
        } else {
            Vec::new()
        };
        let mut names: HashMap<UserId, String> = HashMap::new();
        let mut held = Vec::new();
        let held_limit = self.shared.config.outbound_queue.saturating_mul(4);
        let mut cursor = None;
        loop {
            let page = stores
                .messages
                .pending(self.user, &groups, cursor.as_ref(), SYNC_PAGE)
                .await
                .map_err(unavailable)?;
            for message in page.items {
                if self.is_delivered(message.conversation, message.seq) {
                    continue;
                }
                let item = self.stored_item(&mut names, &message).await;
                self.feed(item).await.map_err(|()| SyncFailed::End(None))?;
                self.mark_delivered(message.conversation, message.seq);
            }
            self.flush().await.map_err(|()| SyncFailed::End(None))?;
            while let Some(delivery) = self.mailbox.try_delivery() {
                held.push(delivery);
            }
            if held.len() > held_limit {
                return Err(SyncFailed::End(Some(slow_frame())));
            }
            while let Some(order) = self.mailbox.take_order() {
                match order {
                    // This very sync covers what the order is about.
                    Control::Resync | Control::CatchUp => {}
                    control => return Err(SyncFailed::End(control_frame(control))),
                }
            }
            if self.shared.shutdown.is_cancelled() {
                return Err(SyncFailed::End(Some(kicked_frame(
                    KickReason::ServerShutdown,
                ))));
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(held),
            }
        }
    }

    /// Sends the deliveries held during the sync that it did not cover, in sequence order per
    /// conversation.
    async fn send_held(&mut self, mut held: Vec<Arc<Delivery>>) -> Step {
        held.sort_by_key(|delivery| (delivery.conversation, delivery.seq));
        held.dedup_by_key(|delivery| delivery.message_id);
        for delivery in held {
            if self.deliver(delivery).await.is_err() {
                return Step::Close(None);
            }
        }
        self.flush_step().await
    }

    /// The main loop.
    ///
    /// One timer serves every deadline (idle, token expiry, a resync, a catch-up): it is set
    /// for the earliest, moved earlier when a nearer one appears, and otherwise left alone. A
    /// read only records its time, so the idle deadline moves without touching the timer,
    /// which, when it fires early, is set again for what is due next.
    async fn serve(&mut self) -> Last {
        let mut idle_at = Instant::now() + self.shared.config.idle_timeout;
        let timer = sleep_until(self.next_deadline(idle_at));
        tokio::pin!(timer);
        loop {
            // Orders before anything else, so that neither a flood of frames nor a stream of
            // deliveries holds back a kick.
            let step = match self.mailbox.take_order() {
                Some(order) => self.obey(order).await,
                // The server's shutdown arrives as an order too.
                None => tokio::select! {
                    biased;
                    () = &mut timer => match self.due(idle_at) {
                        Due::Close(reason) => Step::Close(Some(kicked_frame(reason))),
                        Due::Resync => Box::pin(self.resync()).await,
                        Due::Nothing => Step::Continue,
                    },
                    frames = self.stream.read() => match frames {
                        Err(end) => Step::Close(read_end_frame(&end)),
                        Ok(frames) => {
                            idle_at = Instant::now() + self.shared.config.idle_timeout;
                            // Boxed: serving a batch (a send through the pipeline) takes
                            // far more state than waiting, which is what most connections
                            // do most of the time.
                            Box::pin(self.handle_batch(frames)).await
                        }
                    },
                    mail = self.mailbox.next() => match mail {
                        Mail::Order(order) => self.obey(order).await,
                        Mail::Delivery(delivery) => match self.queue_in_order(delivery, &mut 0) {
                            None => self.flush_step().await,
                            // Boxed, like a batch of frames: a gap to fill is rare, and its
                            // state large.
                            Some(slow) => Box::pin(self.send_live(Some(slow))).await,
                        },
                    },
                },
            };
            if let Step::Close(last) = step {
                return last;
            }
            let due = self.next_deadline(idle_at);
            if due < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(due);
            }
        }
    }

    /// The earliest of the connection's deadlines, given when it goes idle.
    fn next_deadline(&self, idle_at: Instant) -> Instant {
        [self.resync_at, self.catch_up_at]
            .into_iter()
            .flatten()
            .fold(idle_at.min(self.token_expires), Instant::min)
    }

    /// What the deadlines that have come ask for (the timer may fire for one that moved).
    fn due(&mut self, idle_at: Instant) -> Due {
        let now = Instant::now();
        if idle_at <= now {
            return Due::Close(KickReason::Idle);
        }
        if self.token_expires <= now {
            return Due::Close(KickReason::TokenExpired);
        }
        if self.resync_at.is_some_and(|at| at <= now) {
            return Due::Resync;
        }
        if self.catch_up_at.is_some_and(|at| at <= now) {
            tracing::debug!(user = %self.user, "catching up after another server's death");
            self.catch_up_at = None;
            return Due::Resync;
        }
        Due::Nothing
    }

    /// Carries out an order from outside the task.
    async fn obey(&mut self, order: Control) -> Step {
        match order {
            Control::Resync => {
                tracing::info!(user = %self.user, "syncing a live connection again");
                Box::pin(self.resync()).await
            }
            Control::CatchUp => {
                self.schedule_catch_up();
                Step::Continue
            }
            control => Step::Close(control_frame(control)),
        }
    }

    /// Serves frames read together, then writes every answer, and the deliveries queued
    /// meanwhile, in one flush. Consecutive `Send`s go through the pipeline together (one
    /// store commit on backends that can); every frame is still answered in order.
    async fn handle_batch(&mut self, frames: Vec<Frame>) -> Step {
        if frames.is_empty() {
            return Step::Continue;
        }
        let mut sends = Vec::new();
        for frame in frames {
            if let Some(step) = self.admit().await {
                if let Step::Close(last) = step {
                    return Step::Close(last);
                }
                continue;
            }
            let step = match frame.body {
                Some(Body::Send(send)) => {
                    sends.push(send);
                    continue;
                }
                body => match self.handle_sends(std::mem::take(&mut sends)).await {
                    Step::Continue => self.handle(body).await,
                    close => close,
                },
            };
            if let Step::Close(last) = step {
                return Step::Close(last);
            }
        }
        if let Step::Close(last) = self.handle_sends(sends).await {
            return Step::Close(last);
        }
        self.send_live(None).await
    }

    /// Queues `first` and the deliveries waiting behind it (a batch's worth), then flushes
    /// everything queued. Runs of deliveries that need nothing from the store are queued by
    /// [`queue_in_order`](Self::queue_in_order); each other one (a duplicate, a gap to fill, a
    /// first of its conversation) goes through [`deliver`](Self::deliver), boxed.
    async fn send_live(&mut self, first: Option<Arc<Delivery>>) -> Step {
        let mut next = first.or_else(|| self.mailbox.try_delivery());
        let mut taken = 0;
        while let Some(delivery) = next.take() {
            let Some(slow) = self.queue_in_order(delivery, &mut taken) else {
                break;
            };
            if Box::pin(self.deliver(slow)).await.is_err() {
                return Step::Close(None);
            }
            if self.stream.queued() >= FLUSH_AT && self.flush().await.is_err() {
                return Step::Close(None);
            }
            taken += 1;
            if taken < MAX_BATCH {
                next = self.mailbox.try_delivery();
            }
        }
        self.flush_step().await
    }

    /// Flushes what is queued: continue, or close if the connection is gone or stuck.
    async fn flush_step(&mut self) -> Step {
        match self.flush().await {
            Ok(()) => Step::Continue,
            Err(()) => Step::Close(None),
        }
    }

    /// Syncs again (the server found this connection's session lost from the store, so
    /// senders may have seen the user offline): what the store holds for the user and this
    /// connection has not sent.
    async fn resync(&mut self) -> Step {
        self.resync_at = None;
        match Box::pin(self.sync()).await {
            Ok(held) => {
                self.resync_backoff = MIN_RESYNC_WAIT;
                self.send_held(held).await
            }
            Err(SyncFailed::Store(_)) => {
                // The store is down: the connection stays, and tries again later.
                self.schedule_resync();
                self.resync_backoff = (self.resync_backoff * 2).min(MAX_RESYNC_WAIT);
                Step::Continue
            }
            Err(SyncFailed::End(last)) => Step::Close(last),
        }
    }

    /// Catches up from the store at a random moment within [`CATCH_UP_SPREAD`] (unless a catch-up
    /// is due already).
    fn schedule_catch_up(&mut self) {
        if self.catch_up_at.is_none() {
            let spread = u64::try_from(CATCH_UP_SPREAD.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let wait = Duration::from_millis(rand::random::<u64>() % spread);
            self.catch_up_at = Some(Instant::now() + wait);
        }
    }

    /// Sends nothing live until a resync, soon: something below a live message may be missing
    /// and the store cannot say now. What is held back is in the store, and comes with the
    /// resync.
    fn schedule_resync(&mut self) {
        if self.resync_at.is_none() {
            self.resync_at = Some(Instant::now() + self.resync_backoff);
        }
    }

    /// Queues a live delivery that needs nothing from the store (the next one expected in
    /// its conversation, a broadcast, or one held back for a resync); gives back any other.
    /// Does not flush.
    fn deliver_in_order(&mut self, delivery: Arc<Delivery>) -> Option<Arc<Delivery>> {
        let conversation = delivery.conversation;
        if conversation == ConversationId::Group(GroupId::ALL) {
            // Reaches who is online, never stored per user: nothing to fill or track.
            self.stream.queue_delivery(delivery);
            return None;
        }
        if self.resync_at.is_some() {
            // Held back for the resync, which reads it from the store.
            return None;
        }
        match self.delivered.get_mut(&conversation) {
            Some(high) if high.0.checked_add(1) == Some(delivery.seq.0) => {
                // The common case, in one look-up.
                *high = delivery.seq;
                self.stream.queue_delivery(delivery);
                None
            }
            _ => Some(delivery),
        }
    }

    /// Queues `first` and the deliveries waiting behind it (until `taken` reaches a batch's
    /// worth, or `FLUSH_AT` bytes are queued), as long as each needs nothing from the store;
    /// gives back the first that does. The common case of live delivery, without a future of
    /// its own.
    fn queue_in_order(&mut self, first: Arc<Delivery>, taken: &mut usize) -> Option<Arc<Delivery>> {
        let mut next = Some(first);
        while let Some(delivery) = next.take() {
            if let Some(slow) = self.deliver_in_order(delivery) {
                return Some(slow);
            }
            *taken += 1;
            if *taken < MAX_BATCH && self.stream.queued() < FLUSH_AT {
                next = self.mailbox.try_delivery();
            }
        }
        None
    }

    /// Feeds a live delivery unless it was sent already, after filling any gap below it from
    /// the store; does not flush.
    async fn deliver(&mut self, delivery: Arc<Delivery>) -> std::result::Result<(), ()> {
        let Some(delivery) = self.deliver_in_order(delivery) else {
            return Ok(());
        };
        let conversation = delivery.conversation;
        let (mut floor, from_cursor) = match self.delivered.get(&conversation) {
            Some(&high) => (high, false),
            None => match self.acknowledged(conversation).await {
                Some(acknowledged) => (acknowledged, true),
                None => {
                    self.schedule_resync();
                    return Ok(());
                }
            },
        };
        if delivery.seq.0 > floor.0.saturating_add(1) && !from_cursor {
            // The gap starts at the cursor if that is higher: a user who left a group and
            // joined again was acknowledged up to their join, and what was sent in between is
            // not theirs to read.
            let Some(acknowledged) = self.acknowledged(conversation).await else {
                self.schedule_resync();
                return Ok(());
            };
            floor = floor.max(acknowledged);
        }
        if delivery.seq <= floor {
            return Ok(());
        }
        if delivery.seq.0 > floor.0.saturating_add(1)
            && !self.fill_gap(conversation, floor, delivery.seq).await?
        {
            // Sending this one now would leave a hole the client cannot tell from a gap.
            self.schedule_resync();
            return Ok(());
        }
        let seq = delivery.seq;
        self.feed(Outbound::Delivery(delivery)).await?;
        self.mark_delivered(conversation, seq);
        Ok(())
    }

    /// The user's acknowledged cursor in `conversation`, where tracking it starts; `None` if
    /// the store cannot say now.
    async fn acknowledged(&self, conversation: ConversationId) -> Option<Seq> {
        match self
            .shared
            .stores
            .messages
            .delivered_up_to(self.user, conversation)
            .await
        {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::debug!(user = %self.user, %conversation, error = %e, "cannot read a delivery cursor");
                None
            }
        }
    }

    /// Feeds the messages of `conversation` strictly between `after` and `before` that are
    /// addressed to the user (everything but their own); `Ok(false)` if the store cannot be
    /// read now.
    async fn fill_gap(
        &mut self,
        conversation: ConversationId,
        after: Seq,
        before: Seq,
    ) -> std::result::Result<bool, ()> {
        let mut names = HashMap::new();
        let mut after = after;
        loop {
            let query = HistoryQuery {
                after: Some(after),
                before: Some(before),
                limit: SYNC_PAGE,
            };
            let page = match self
                .shared
                .stores
                .messages
                .history(conversation, query)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(user = %self.user, %conversation, error = %e, "cannot fill a gap in live deliveries; syncing again later");
                    return Ok(false);
                }
            };
            let Some(last) = page.last().map(|message| message.seq) else {
                return Ok(true);
            };
            let full = page.len() >= SYNC_PAGE as usize;
            for message in page {
                if message.sender != self.user {
                    let item = self.stored_item(&mut names, &message).await;
                    self.feed(item).await?;
                }
            }
            tracing::debug!(user = %self.user, %conversation, %after, %last, "filled a gap in live deliveries from the store");
            if !full {
                return Ok(true);
            }
            after = last;
        }
    }

    /// The frame for a message read from the store: its delivery, or, when no frame can carry
    /// it, the error that tells the client what it misses.
    async fn stored_item(
        &self,
        names: &mut HashMap<UserId, String>,
        message: &StoredMessage,
    ) -> Outbound {
        let name = sender_name(&self.shared.stores, names, message.sender).await;
        match Delivery::encode(
            &deliver_frame(message, &name),
            self.shared.config.max_frame_len,
        ) {
            Ok(delivery) => Outbound::Delivery(delivery),
            Err(e) => {
                // Stored under other limits, or with a longer name than the rules allow now:
                // tell the client what it misses, and move on.
                tracing::warn!(message = %message.id, error = %e, "skipping a message no frame can carry");
                undeliverable_frame(message, &e)
            }
        }
    }

    fn is_delivered(&self, conversation: ConversationId, seq: Seq) -> bool {
        self.delivered
            .get(&conversation)
            .is_some_and(|high| seq <= *high)
    }

    /// Records that everything of `conversation` up to `seq` was sent.
    fn mark_delivered(&mut self, conversation: ConversationId, seq: Seq) {
        if self.delivered.len() >= MAX_TRACKED && !self.delivered.contains_key(&conversation) {
            self.delivered.clear();
        }
        let high = self.delivered.entry(conversation).or_default();
        *high = (*high).max(seq);
    }

    /// Takes a token from the frame rate limit for one frame: `None` to serve the frame, or
    /// what to do instead (it is ignored, answered with one notice per flood, or the
    /// connection is closed).
    async fn admit(&mut self) -> Option<Step> {
        let now = Instant::now();
        if self.frames.is_full(now) {
            // The client let its bucket fill up: it is not flooding.
            self.refused_frames.forgive();
            self.refused_sends.forgive();
        }
        if self.frames.take(now).is_err() {
            if self.refused_frames.count() {
                return Some(Step::Close(Some(flooding_frame(""))));
            }
            // Tell the client once per flood, not per frame: answering every frame of a flood
            // would cost what the limit is there to save.
            if self.refused_frames.is_first() {
                let limit = self.shared.pipeline.limits().frames;
                let text = format!(
                    "more than {} frames per second; frames are ignored until you slow down",
                    limit.per_second
                );
                return Some(
                    self.reply(error_frame(ErrorCode::RateLimited, text, ""))
                        .await,
                );
            }
            return Some(Step::Continue);
        }
        None
    }

    /// Serves one admitted frame other than `Send`.
    async fn handle(&mut self, body: Option<Body>) -> Step {
        let reply = match body {
            Some(Body::Ping(ping)) => Body::Pong(v1::Pong { nonce: ping.nonce }).into(),
            Some(Body::Send(send)) => return self.handle_sends(vec![send]).await,
            Some(Body::DeliveryAck(ack)) => match self.handle_ack(ack).await {
                Some(error) => error,
                None => return Step::Continue,
            },
            Some(Body::RefreshToken(refresh)) => self.refresh_token(&refresh.token).await,
            Some(Body::Login(_)) => error_frame(
                ErrorCode::InvalidInput,
                "this connection is logged in already",
                "",
            ),
            Some(_) | None => error_frame(
                ErrorCode::InvalidInput,
                "only the server sends this frame",
                "",
            ),
        };
        self.reply(reply).await
    }

    /// Moves the connection onto a fresh token of the same login; the answer to send.
    async fn refresh_token(&mut self, token: &str) -> Outbound {
        let claims = match self.shared.key.verify(token) {
            Ok(claims) => claims,
            Err(e) => return error_frame(ErrorCode::Unauthenticated, e.message(), ""),
        };
        if claims.user_id != self.user || claims.session_id != self.session_id {
            return error_frame(
                ErrorCode::Unauthenticated,
                "the token is not one of this connection's login; refresh it with POST /api/v1/token",
                "",
            );
        }
        match self
            .shared
            .stores
            .accounts
            .is_session_revoked(&claims.session_id)
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                return error_frame(
                    ErrorCode::Unauthenticated,
                    "this login was ended (logged out)",
                    "",
                );
            }
            Err(e) => return failure_frame(&e, ""),
        }
        if claims.expires_at > self.token_expires_at {
            self.token_expires_at = claims.expires_at;
            self.token_expires = deadline(claims.expires_at);
        }
        Body::TokenRefreshed(v1::TokenRefreshed {
            expires_at_ms: self.token_expires_at.as_millis(),
        })
        .into()
    }

    /// Queues one answer for the batch's flush; closes if the connection is gone or stuck.
    async fn reply(&mut self, item: Outbound) -> Step {
        match self.feed(item).await {
            Ok(()) => Step::Continue,
            Err(()) => Step::Close(None),
        }
    }

    /// Takes messages through the pipeline together and acknowledges each (or says why not),
    /// in order.
    async fn handle_sends(&mut self, sends: Vec<v1::Send>) -> Step {
        if sends.is_empty() {
            return Step::Continue;
        }
        let mut ids = Vec::with_capacity(sends.len());
        let mut results = Gather::with_capacity(sends.len());
        let mut requests = Vec::new();
        for send in sends {
            ids.push(send.client_msg_id.clone());
            match recipient_from_proto(send.to.as_ref()) {
                Ok(to) => {
                    results.deferred();
                    requests.push(SendRequest {
                        to,
                        client_msg_id: send.client_msg_id,
                        body: send.body,
                        deliver_at: send.deliver_at_ms.map(Timestamp),
                    });
                }
                Err(e) => results.decided(Err(e)),
            }
        }
        let accepted = self.shared.pipeline.send_all(&self.sender, requests).await;
        for (client_msg_id, result) in ids.into_iter().zip(results.finish(accepted)) {
            if let Step::Close(last) = self.answer_send(&client_msg_id, result).await {
                return Step::Close(last);
            }
        }
        Step::Continue
    }

    /// Acknowledges one send (or says why it was refused).
    async fn answer_send(&mut self, client_msg_id: &str, result: Result<Accepted, Error>) -> Step {
        match result {
            Ok(accepted) => {
                if let Accepted::Stored { message, .. } = &accepted {
                    // The user's own message is never delivered back: it is no gap.
                    if self
                        .delivered
                        .get(&message.conversation)
                        .is_some_and(|high| high.0.saturating_add(1) == message.seq.0)
                    {
                        self.mark_delivered(message.conversation, message.seq);
                    }
                }
                self.reply(Body::SendAck(send_ack(accepted)).into()).await
            }
            Err(e) => {
                match e.kind() {
                    ErrorKind::RateLimited if self.refused_sends.count() => {
                        return Step::Close(Some(flooding_frame(client_msg_id)));
                    }
                    ErrorKind::InvalidInput
                    | ErrorKind::NotFound
                    | ErrorKind::PermissionDenied
                    | ErrorKind::RateLimited => {}
                    _ => tracing::warn!(user = %self.user, error = %e, "cannot store a message"),
                }
                self.reply(failure_frame(&e, client_msg_id)).await
            }
        }
    }

    async fn handle_ack(&self, ack: v1::DeliveryAck) -> Option<Outbound> {
        let result = match ack.conversation.parse::<ConversationId>() {
            Ok(conversation) => {
                self.shared
                    .stores
                    .messages
                    .ack(self.user, conversation, Seq(ack.up_to_seq))
                    .await
            }
            Err(e) => Err(e),
        };
        result.err().map(|e| {
            let code = match e.kind() {
                ErrorKind::NotFound => ErrorCode::InvalidInput,
                kind => error_code(kind),
            };
            error_frame(code, e.message().to_string(), "")
        })
    }

    /// Writes and flushes one item; `Err` if the connection is gone or stuck.
    async fn write(&mut self, item: Outbound) -> std::result::Result<(), ()> {
        self.feed(item).await?;
        self.flush().await
    }

    /// Queues one item, flushing first if much is queued already; `Err` if the connection is
    /// gone or stuck.
    async fn feed(&mut self, item: Outbound) -> std::result::Result<(), ()> {
        if let Err(e) = self.stream.queue(item) {
            tracing::warn!(user = %self.user, error = %e, "cannot encode a frame");
            return Err(());
        }
        if self.stream.queued() >= FLUSH_AT {
            return self.flush().await;
        }
        Ok(())
    }

    /// Writes what is queued: at once when the socket takes it all (the common case), else
    /// waiting for the client, up to the write timeout.
    async fn flush(&mut self) -> std::result::Result<(), ()> {
        match self.stream.try_flush() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(user = %self.user, error = %e, "write failed");
                return Err(());
            }
        }
        // Boxed: a client that is slow to read is rare, and the wait's state large.
        match Box::pin(timeout(
            self.shared.config.idle_timeout,
            self.stream.flush(),
        ))
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(user = %self.user, error = %e, "write failed");
                Err(())
            }
            Err(_) => {
                tracing::debug!(user = %self.user, "the client stopped reading");
                Err(())
            }
        }
    }
}

/// The name to show for `sender`, looked up once per sync.
async fn sender_name(
    stores: &cim_core::Stores,
    names: &mut HashMap<UserId, String>,
    sender: UserId,
) -> String {
    if let Some(name) = names.get(&sender) {
        return name.clone();
    }
    let name = match stores.accounts.user(sender).await {
        Ok(Some(user)) => user.name,
        Ok(None) | Err(_) => String::new(),
    };
    names.insert(sender, name.clone());
    name
}

/// Rate-limit refusals in a row: a client that keeps sending after three bursts' worth of
/// refusals, without ever letting its bucket fill up, is not a client to serve.
struct Refusals {
    refused: u32,
    close_at: u32,
}

impl Refusals {
    fn new(burst: u32) -> Self {
        Refusals {
            refused: 0,
            close_at: burst.max(1).saturating_mul(3),
        }
    }

    /// Counts one; true once the connection should be closed.
    fn count(&mut self) -> bool {
        self.refused = self.refused.saturating_add(1);
        self.refused >= self.close_at
    }

    /// Whether the last one counted was the first of this flood.
    fn is_first(&self) -> bool {
        self.refused == 1
    }

    fn forgive(&mut self) {
        self.refused = 0;
    }
}

/// The error a flooding connection is closed with.
fn flooding_frame(client_msg_id: &str) -> Outbound {
    error_frame(
        ErrorCode::RateLimited,
        "too many frames over the rate limit without slowing down; closing the connection",
        client_msg_id,
    )
}

/// The `SendAck` for what the pipeline did with a message.
fn send_ack(accepted: Accepted) -> v1::SendAck {
    match accepted {
        Accepted::Stored { message, .. } => v1::SendAck {
            client_msg_id: message.client_msg_id.clone(),
            message_id: message.id.0,
            conversation: message.conversation.to_string(),
            seq: message.seq.0,
            sent_at_ms: message.sent_at.as_millis(),
            scheduled_id: 0,
        },
        Accepted::Scheduled { entry, .. } => v1::SendAck {
            conversation: entry.message.conversation().to_string(),
            sent_at_ms: entry.message.sent_at.as_millis(),
            scheduled_id: entry.id.0,
            client_msg_id: entry.message.client_msg_id,
            ..Default::default()
        },
    }
}

/// The last frame for an order that closes the connection.
fn control_frame(control: Control) -> Last {
    match control {
        Control::Kick(reason) => Some(kicked_frame(reason)),
        Control::Slow => Some(slow_frame()),
        Control::Resync | Control::CatchUp => None,
    }
}

/// The last frame for a client side that ended: an error for a bad frame, nothing when the
/// client left.
fn read_end_frame(end: &ReadEnd) -> Last {
    match end {
        ReadEnd::Closed => None,
        ReadEnd::Failed(e) => frame_error(e),
    }
}

/// The error a connection whose login sync failed is closed with.
fn sync_error_frame(e: &Error) -> Outbound {
    error_frame(
        error_code(e.kind()),
        format!(
            "cannot sync your messages now: {}; reconnect later",
            e.message()
        ),
        "",
    )
}

fn slow_frame() -> Outbound {
    error_frame(
        ErrorCode::Unavailable,
        "this connection fell too far behind its messages; reconnect to sync",
        "",
    )
}

/// The instant wall-clock time `at` comes (now, if it has passed).
fn deadline(at: Timestamp) -> Instant {
    let left = at.as_millis().saturating_sub(Timestamp::now().as_millis());
    Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}
