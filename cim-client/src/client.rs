//! [`Client`]: the application's handle on one logged-in user.
//!
//! A handle is cheap to clone and every clone talks to the same connection task; many clients
//! (different users, or the same user on different routes) can live in one process, each with its
//! own task. Sends go over the server connection; the HTTP helpers go to the route with the
//! current token (renewed on every reconnect, since reconnecting logs in again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cim_proto::http::{
    CreateGroupRequest, GroupAccess, GroupHistory, GroupRole, GroupView, MemberView, MessageView,
    OnlineUser, PageOf, ServerView, UpdateGroupRequest, UserView,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::builder::{LoginFn, Settings};
use crate::connection::{Command, PendingSend, Status, Task, establish};
use crate::error::{ClientError, Result};
use crate::event::{ConnectionState, DisconnectReason, Events};
use crate::http::Route;
use crate::message::{Conversation, Outgoing, Recipient, SendReceipt, new_client_msg_id};

/// The longest `client_msg_id` the server accepts, in bytes.
const MAX_CLIENT_MSG_ID_LEN: usize = 128;

/// How many commands (sends, close) may wait for the connection task.
const COMMAND_CAPACITY: usize = 256;

/// A connected client: send messages, receive [`Events`], query the route.
///
/// Build one with [`ClientBuilder`](crate::ClientBuilder). Clones share the connection. The
/// connection task stops when [`close`](Client::close) or [`logout`](Client::logout) is called,
/// or when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    route: Route,
    settings: Arc<Settings>,
    events: Mutex<Option<Events>>,
    logging_out: Arc<AtomicBool>,
}

/// Who the client is logged in as, where, and how the connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// The user's id.
    pub user_id: u64,
    /// The user's name.
    pub user_name: String,
    /// The server of the current (or last) connection.
    pub server_id: String,
    /// The connection's id on that server.
    pub connection_id: u64,
    /// The connection's state.
    pub state: ConnectionState,
}

impl Client {
    /// Connects with `login` and starts the connection task.
    pub(crate) async fn start(route: Route, login: LoginFn, settings: Settings) -> Result<Client> {
        let established = establish(&settings, &login).await?;
        let status = established.status();
        let span = tracing::info_span!("cim_client", user = status.user_id);
        let settings = Arc::new(settings);
        let (command_tx, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (event_tx, event_rx) = mpsc::channel(settings.event_capacity);
        let (status_tx, status_rx) = watch::channel(status);
        let logging_out = Arc::new(AtomicBool::new(false));
        let task = Task::new(
            Arc::clone(&settings),
            login,
            route.clone(),
            command_rx,
            event_tx,
            status_tx,
            Arc::clone(&logging_out),
        );
        // The task is owned through the command channel: it stops when the last handle is gone.
        tokio::spawn(task.run(established).instrument(span));
        Ok(Client {
            inner: Arc::new(Inner {
                commands: command_tx,
                status: status_rx,
                route,
                settings,
                events: Mutex::new(Some(Events::new(event_rx))),
                logging_out,
            }),
        })
    }

    /// The stream of events (messages, state changes, kicks), from the moment of `connect` on.
    ///
    /// There is one stream per client: the first call gets it, later calls get `None`. Consume
    /// it steadily, concurrently with awaiting sends: while events wait, the client stops reading
    /// from the server (so acknowledgements of sends wait too). An application that wants no
    /// events (a send-only integration) takes the stream and drops it, which discards them.
    pub fn events(&self) -> Option<Events> {
        match self.inner.events.lock() {
            Ok(mut events) => events.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Who the client is logged in as, where, and the connection's state.
    pub fn info(&self) -> ClientInfo {
        let status = self.inner.status.borrow();
        ClientInfo {
            user_id: status.user_id,
            user_name: status.user_name.clone(),
            server_id: status.server_id.clone(),
            connection_id: status.connection_id,
            state: status.state.clone(),
        }
    }

    /// The connection's state.
    pub fn state(&self) -> ConnectionState {
        self.inner.status.borrow().state.clone()
    }

    /// Sends a message; resolves when the server has stored it (or scheduled it).
    ///
    /// While the client reconnects the message waits in a bounded queue and goes out on the new
    /// connection. Errors: [`ClientError::NotFound`] (no such recipient),
    /// [`ClientError::Forbidden`] (not a member of the group), [`ClientError::InvalidInput`]
    /// (empty or too long), [`ClientError::RateLimited`], [`ClientError::Timeout`] (no
    /// acknowledgement within the send timeout: resend with the same
    /// [`client_msg_id`](Outgoing::client_msg_id) to be safe), [`ClientError::Unavailable`]
    /// (not sent: no connection in time, or too many sends pending), [`ClientError::Closed`].
    pub async fn send(&self, outgoing: Outgoing) -> Result<SendReceipt> {
        let client_msg_id = outgoing.client_msg_id.unwrap_or_else(new_client_msg_id);
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN {
            return Err(ClientError::InvalidInput(format!(
                "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID_LEN} bytes, not {}",
                client_msg_id.len()
            )));
        }
        let (reply, answer) = oneshot::channel();
        let frame = cim_proto::v1::Send {
            client_msg_id,
            to: Some(outgoing.to.to_proto()),
            body: outgoing.body,
            deliver_at_ms: outgoing.deliver_at_ms,
        };
        let deadline = Instant::now() + self.inner.settings.send_timeout;
        let send = PendingSend::new(frame, reply, deadline);
        self.inner
            .commands
            .send(Command::Send(send))
            .await
            .map_err(|_| ClientError::Closed)?;
        // The task answers every send; a dropped answer means it stopped.
        answer.await.unwrap_or(Err(ClientError::Closed))
    }

    /// Sends a private message to a user.
    pub async fn send_to_user(&self, user_id: u64, body: impl Into<String>) -> Result<SendReceipt> {
        self.send(Outgoing::new(Recipient::User(user_id), body))
            .await
    }

    /// Sends a message to every member of a group.
    pub async fn send_to_group(
        &self,
        group_id: u64,
        body: impl Into<String>,
    ) -> Result<SendReceipt> {
        self.send(Outgoing::new(Recipient::Group(group_id), body))
            .await
    }

    /// Sends a message to every user online now (the "all" group).
    pub async fn send_to_all(&self, body: impl Into<String>) -> Result<SendReceipt> {
        self.send(Outgoing::new(Recipient::All, body)).await
    }

    /// The current bearer token.
    fn token(&self) -> String {
        self.inner.status.borrow().token.clone()
    }

    /// Users online now, a page at a time (`cursor` from the previous page's `next_cursor`).
    pub async fn online_users(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<PageOf<OnlineUser>> {
        let cursor = cursor.map(str::to_owned);
        self.inner
            .route
            .online_users(&self.token(), cursor, limit)
            .await
    }

    /// Users whose name starts with `prefix`, a page at a time.
    pub async fn search_users(
        &self,
        prefix: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<PageOf<UserView>> {
        let cursor = cursor.map(str::to_owned);
        self.inner
            .route
            .search_users(&self.token(), prefix, cursor, limit)
            .await
    }

    /// Stored messages of a conversation, ascending by sequence: those before sequence `before`
    /// and/or after sequence `after`, at most `limit`.
    pub async fn history(
        &self,
        conversation: Conversation,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<MessageView>> {
        self.inner
            .route
            .history(&self.token(), conversation, before, after, limit)
            .await
    }

    /// Messages visible to this user whose text contains every word of `query`, newest first.
    pub async fn search_messages(
        &self,
        query: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<PageOf<MessageView>> {
        let cursor = cursor.map(str::to_owned);
        self.inner
            .route
            .search_messages(&self.token(), query, cursor, limit)
            .await
    }

    /// Creates an open group owned by this user, whose whole history its members read
    /// ([`ClientError::AlreadyExists`] if the name is taken).
    pub async fn create_group(&self, name: &str) -> Result<GroupView> {
        self.create_group_with(name, GroupAccess::Open, GroupHistory::Full)
            .await
    }

    /// Creates a group owned by this user with the given settings: who may become a member,
    /// and what new members may read.
    pub async fn create_group_with(
        &self,
        name: &str,
        access: GroupAccess,
        history: GroupHistory,
    ) -> Result<GroupView> {
        let body = CreateGroupRequest {
            name: name.into(),
            access,
            history,
        };
        self.inner.route.create_group(&self.token(), &body).await
    }

    /// The group with this id, if this user may see it (it is open, or they are a member).
    pub async fn group(&self, group_id: u64) -> Result<GroupView> {
        self.inner.route.group(&self.token(), group_id).await
    }

    /// Changes a group's settings (owner and admins); `None` keeps a setting as it is.
    pub async fn update_group(
        &self,
        group_id: u64,
        access: Option<GroupAccess>,
        history: Option<GroupHistory>,
    ) -> Result<GroupView> {
        let body = UpdateGroupRequest { access, history };
        self.inner
            .route
            .update_group(&self.token(), group_id, &body)
            .await
    }

    /// Makes a member an admin, or an admin a member again (the group's owner only).
    pub async fn set_role(&self, group_id: u64, user_id: u64, role: GroupRole) -> Result<()> {
        self.inner
            .route
            .set_role(&self.token(), group_id, user_id, role)
            .await
    }

    /// Bans a user from a group, removing them if they are a member (owner and admins).
    pub async fn ban(&self, group_id: u64, user_id: u64) -> Result<()> {
        self.inner.route.ban(&self.token(), group_id, user_id).await
    }

    /// Lifts a user's ban from a group (owner and admins); they are not added back.
    pub async fn unban(&self, group_id: u64, user_id: u64) -> Result<()> {
        self.inner
            .route
            .unban(&self.token(), group_id, user_id)
            .await
    }

    /// The users banned from a group, a page at a time (owner and admins).
    pub async fn bans(
        &self,
        group_id: u64,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<PageOf<UserView>> {
        let cursor = cursor.map(str::to_owned);
        self.inner
            .route
            .bans(&self.token(), group_id, cursor, limit)
            .await
    }

    /// The group with this name (any letter case); [`ClientError::NotFound`] if none.
    ///
    /// [`ClientError::NotFound`]: crate::ClientError::NotFound
    pub async fn find_group(&self, name: &str) -> Result<GroupView> {
        self.inner.route.find_group(&self.token(), name).await
    }

    /// Joins an open group (others need an invitation: a member adds them).
    pub async fn join_group(&self, group_id: u64) -> Result<()> {
        let me = self.info().user_id;
        self.add_member(group_id, me).await
    }

    /// Adds a user to a group (the caller must be a member, and of a closed group an admin).
    pub async fn add_member(&self, group_id: u64, user_id: u64) -> Result<()> {
        self.inner
            .route
            .add_member(&self.token(), group_id, user_id)
            .await
    }

    /// Removes a user from a group.
    pub async fn remove_member(&self, group_id: u64, user_id: u64) -> Result<()> {
        self.inner
            .route
            .remove_member(&self.token(), group_id, user_id)
            .await
    }

    /// The groups this user is a member of.
    pub async fn my_groups(&self) -> Result<Vec<GroupView>> {
        self.inner.route.my_groups(&self.token()).await
    }

    /// A group's members with their roles, a page at a time.
    pub async fn members(
        &self,
        group_id: u64,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<PageOf<MemberView>> {
        let cursor = cursor.map(str::to_owned);
        self.inner
            .route
            .members(&self.token(), group_id, cursor, limit)
            .await
    }

    /// The live servers of the cluster.
    pub async fn servers(&self) -> Result<Vec<ServerView>> {
        self.inner.route.servers(&self.token()).await
    }

    /// Logs out at the route (the user goes offline), then closes the client. The client is
    /// closed even when the route call fails; its error is returned.
    pub async fn logout(&self) -> Result<()> {
        self.inner.logging_out.store(true, Ordering::SeqCst);
        let result = self.inner.route.logout(&self.token()).await;
        self.stop(DisconnectReason::LoggedOut).await;
        result
    }

    /// Closes the client: acknowledges what it received, closes the connection, fails pending
    /// sends with [`ClientError::Closed`]. Returns once stopped; the event stream then yields
    /// the remaining events and ends. Closing twice is harmless.
    pub async fn close(&self) {
        self.stop(DisconnectReason::Closed).await;
    }

    async fn stop(&self, reason: DisconnectReason) {
        // A send error means the task is gone already.
        let _ = self.inner.commands.send(Command::Close { reason }).await;
        let mut status = self.inner.status.clone();
        let _ = status
            .wait_for(|status| matches!(status.state, ConnectionState::Disconnected { .. }))
            .await;
    }
}
