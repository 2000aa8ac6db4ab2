//! [`LocalConnections`]: the client connections this server holds, by user.
//!
//! Everything that reaches a connection from outside its own task (a delivery from another
//! sender's dispatch, a message relayed by a peer, a kick) goes through here into the
//! connection's [`Mailbox`], and never waits: the mailbox holds a bounded queue of deliveries,
//! and a connection whose queue is full is too slow to keep up. It is told to close instead of
//! making the sender (or a whole group fan-out) wait for it. Orders (kicks, syncs) are flags
//! beside the queue, so a full queue cannot hold them back.
//!
//! A user normally has one connection here, but briefly two: when a new login replaces an old
//! one on the same server, the old connection lives until it has read its kick. The registry
//! keeps the first inline, so an idle connection costs one map slot and its mailbox.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use cim_core::{ConnectionId, ServerId, Session, Timestamp, UserId};
use cim_proto::KickReason;
use smallvec::SmallVec;

use crate::delivery::Delivery;
use crate::mailbox::{Control, Mailbox, Pushed};

/// How the rest of the server reaches one connection's task.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    /// The connection's id.
    pub id: ConnectionId,
    /// Where its deliveries and orders go.
    pub mailbox: Arc<Mailbox>,
    /// The device label and login time of the session, to bind it again if the store lost it.
    pub device: String,
    /// When the connection logged in.
    pub login_at: Timestamp,
    /// Whether the connection bound its session (see [`LocalConnections::mark_bound`]).
    pub bound: bool,
}

impl ConnectionHandle {
    /// Queues `delivery` without waiting; a full queue marks the connection slow.
    fn push(&self, delivery: &Arc<Delivery>) -> bool {
        match self.mailbox.push(delivery) {
            Pushed::Queued => true,
            Pushed::Full => {
                tracing::warn!(connection = %self.id, "delivery queue full; closing the slow connection");
                false
            }
            Pushed::Closed => false,
        }
    }
}

/// The connections of one user here: one, inline, almost always.
type Handles = SmallVec<[ConnectionHandle; 1]>;

/// The client connections held by one server, by user.
///
/// Shared by the server's connection tasks (which register and unregister themselves), its
/// internal listener (relayed messages and kicks) and the [`Dispatcher`](crate::Dispatcher)
/// (local fan-out): the last stop of the pipeline on a server.
#[derive(Debug)]
pub struct LocalConnections {
    server_id: ServerId,
    users: RwLock<HashMap<UserId, Handles>>,
}

impl LocalConnections {
    /// An empty set of connections for server `server_id`.
    pub fn new(server_id: ServerId) -> Self {
        LocalConnections {
            server_id,
            users: RwLock::new(HashMap::new()),
        }
    }

    /// The server these connections belong to.
    pub fn server_id(&self) -> &ServerId {
        &self.server_id
    }

    /// How many connections are registered (the load the server reports).
    pub fn len(&self) -> usize {
        self.read().values().map(SmallVec::len).sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Adds a logged-in connection of `user`.
    pub fn register(&self, user: UserId, handle: ConnectionHandle) {
        self.write().entry(user).or_default().push(handle);
    }

    /// Removes connection `id` of `user`, if registered.
    pub fn unregister(&self, user: UserId, id: ConnectionId) {
        let mut users = self.write();
        if let Some(handles) = users.get_mut(&user) {
            handles.retain(|handle| handle.id != id);
            if handles.is_empty() {
                users.remove(&user);
            }
        }
    }

    /// Queues `delivery` on connection `id` of `user`; false if that connection is not here
    /// (any more) or is too slow.
    pub fn deliver_to(&self, user: UserId, id: ConnectionId, delivery: &Arc<Delivery>) -> bool {
        self.read()
            .get(&user)
            .and_then(|handles| handles.iter().find(|handle| handle.id == id))
            .is_some_and(|handle| handle.push(delivery))
    }

    /// Queues `delivery` on every connection of `user`; how many took it.
    pub fn deliver_to_user(&self, user: UserId, delivery: &Arc<Delivery>) -> usize {
        self.deliver_if_connected(user, delivery).unwrap_or(0)
    }

    /// As [`deliver_to_user`](Self::deliver_to_user), and `None` if `user` has no connection
    /// here (a connection too slow to take it is there all the same: it catches up from the
    /// store).
    pub fn deliver_if_connected(&self, user: UserId, delivery: &Arc<Delivery>) -> Option<usize> {
        self.read().get(&user).map(|handles| {
            handles
                .iter()
                .filter(|handle| handle.push(delivery))
                .count()
        })
    }

    /// Queues `delivery` on every connection except those of `sender`; how many took it.
    pub fn deliver_to_all_except(&self, sender: UserId, delivery: &Arc<Delivery>) -> usize {
        self.read()
            .iter()
            .filter(|(user, _)| **user != sender)
            .flat_map(|(_, handles)| handles)
            .filter(|handle| handle.push(delivery))
            .count()
    }

    /// Tells connection `id` of `user` to close with `reason`; false if it is not here.
    pub fn kick(&self, user: UserId, id: ConnectionId, reason: KickReason) -> bool {
        self.read()
            .get(&user)
            .and_then(|handles| handles.iter().find(|handle| handle.id == id))
            .is_some_and(|handle| handle.mailbox.order(Control::Kick(reason)))
    }

    /// Tells every connection to close with `reason`; how many were told.
    pub fn kick_all(&self, reason: KickReason) -> usize {
        self.read()
            .values()
            .flatten()
            .filter(|handle| handle.mailbox.order(Control::Kick(reason)))
            .count()
    }

    /// Records that connection `id` of `user` bound its session in the store.
    pub fn mark_bound(&self, user: UserId, id: ConnectionId) {
        if let Some(handle) = self
            .write()
            .get_mut(&user)
            .and_then(|handles| handles.iter_mut().find(|handle| handle.id == id))
        {
            handle.bound = true;
        }
    }

    /// The sessions of the connections registered here that bound them, as they were bound
    /// (a connection registers before it binds, and is only then the session's owner).
    pub fn sessions(&self) -> Vec<Session> {
        self.read()
            .iter()
            .flat_map(|(user, handles)| {
                handles
                    .iter()
                    .filter(|handle| handle.bound)
                    .map(|handle| Session {
                        user_id: *user,
                        server_id: self.server_id.clone(),
                        connection_id: handle.id,
                        device: handle.device.clone(),
                        login_at: handle.login_at,
                    })
            })
            .collect()
    }

    /// Tells connection `id` of `user` to send again what it may have missed; false if it is
    /// not here.
    pub fn resync(&self, user: UserId, id: ConnectionId) -> bool {
        self.read()
            .get(&user)
            .and_then(|handles| handles.iter().find(|handle| handle.id == id))
            .is_some_and(|handle| handle.mailbox.order(Control::Resync))
    }

    /// Tells every connection to catch up from the store ([`Control::CatchUp`]); how many
    /// were told.
    pub fn catch_up_all(&self) -> usize {
        self.read()
            .values()
            .flatten()
            .filter(|handle| handle.mailbox.order(Control::CatchUp))
            .count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, Handles>> {
        // A panic elsewhere never leaves the map half-updated: every critical section is a
        // single insert, retain or lookup.
        self.users.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Handles>> {
        self.users.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cim_core::{ConversationId, MessageId, Seq};

    use super::*;

    fn handle(id: u64, queue: usize) -> (ConnectionHandle, Arc<Mailbox>) {
        let mailbox = Arc::new(Mailbox::new(queue));
        let handle = ConnectionHandle {
            id: ConnectionId(id),
            mailbox: Arc::clone(&mailbox),
            device: String::new(),
            login_at: Timestamp(0),
            bound: false,
        };
        (handle, mailbox)
    }

    fn delivery(sender: u64) -> Arc<Delivery> {
        Arc::new(Delivery {
            message_id: MessageId(1),
            conversation: ConversationId::direct(UserId(sender), UserId(99)),
            seq: Seq(1),
            sender: UserId(sender),
            frame: Bytes::from_static(b"x"),
        })
    }

    fn local() -> LocalConnections {
        LocalConnections::new(ServerId::new("s1").expect("valid id"))
    }

    #[test]
    fn delivery_needs_the_matching_connection_id() {
        let local = local();
        let (h, mailbox) = handle(7, 4);
        local.register(UserId(1), h);
        assert!(!local.deliver_to(UserId(1), ConnectionId(8), &delivery(2)));
        assert!(local.deliver_to(UserId(1), ConnectionId(7), &delivery(2)));
        assert!(mailbox.try_delivery().is_some());
        local.unregister(UserId(1), ConnectionId(7));
        assert!(local.is_empty());
    }

    #[test]
    fn a_full_queue_marks_the_connection_slow_instead_of_waiting() {
        let local = local();
        let (h, mailbox) = handle(7, 1);
        local.register(UserId(1), h);
        assert_eq!(local.deliver_to_user(UserId(1), &delivery(2)), 1);
        assert_eq!(local.deliver_to_user(UserId(1), &delivery(2)), 0);
        assert_eq!(mailbox.take_order(), Some(Control::Slow));
    }

    #[test]
    fn broadcast_skips_the_sender() {
        let local = local();
        let (a, a_mailbox) = handle(1, 4);
        let (b, b_mailbox) = handle(2, 4);
        local.register(UserId(1), a);
        local.register(UserId(2), b);
        assert_eq!(local.len(), 2);
        assert_eq!(local.deliver_to_all_except(UserId(1), &delivery(1)), 1);
        assert!(a_mailbox.try_delivery().is_none());
        assert!(b_mailbox.try_delivery().is_some());
    }

    #[test]
    fn a_shutdown_kicks_every_connection_and_the_registry_keeps_two_of_one_user() {
        let local = local();
        let (a, a_mailbox) = handle(1, 4);
        let (b, b_mailbox) = handle(2, 4);
        local.register(UserId(1), a);
        local.register(UserId(1), b);
        assert_eq!(local.len(), 2);
        assert_eq!(local.kick_all(KickReason::ServerShutdown), 2);
        for mailbox in [a_mailbox, b_mailbox] {
            assert_eq!(
                mailbox.take_order(),
                Some(Control::Kick(KickReason::ServerShutdown))
            );
        }
        local.unregister(UserId(1), ConnectionId(1));
        assert_eq!(local.len(), 1);
    }

    #[test]
    fn kicks_reach_only_the_named_connection() {
        let local = local();
        let (h, mailbox) = handle(7, 4);
        local.register(UserId(1), h);
        assert!(!local.kick(UserId(1), ConnectionId(6), KickReason::Replaced));
        assert!(local.kick(UserId(1), ConnectionId(7), KickReason::Replaced));
        assert_eq!(
            mailbox.take_order(),
            Some(Control::Kick(KickReason::Replaced))
        );
    }
}
