//! [`SessionView`]: where this process last saw users connected to *other* servers, so that a
//! direct message to a user it relayed to recently skips the session store.
//!
//! The view may be stale (the user moved, reconnected elsewhere, or left), and that must cost a
//! retry, never a lost or misdirected message. Three rules keep it so:
//!
//! - It holds only **remote, positive** placements: a user seen online on another server, and
//!   only when every session of theirs is there. "Offline" is never remembered (a login
//!   elsewhere would go unseen), and neither is a session of this server (whose connections
//!   are known exactly).
//! - A relay placed from the view asks the listener to report the users it has no connection
//!   for (`PeerDeliver.report_missed`); the answer ([`PeerMissed`](cim_proto::v1::PeerMissed))
//!   drops those entries and the message goes to where the store says they are now.
//! - A relay names users, not connections, so a user who reconnected to the same server gets
//!   the message on their new connection.
//!
//! Entries also expire after [`VIEW_TTL`], and the view forgets everything when it reaches
//! [`VIEW_CAPACITY`] users, so its memory is bounded whatever the traffic.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cim_core::{ServerId, UserId};
use tokio::time::Instant;

/// How long a placement is trusted without a new look-up.
pub const VIEW_TTL: Duration = Duration::from_secs(10);
/// Users remembered at most; beyond, the view starts over.
pub const VIEW_CAPACITY: usize = 100_000;

/// Users on other servers, as last looked up. See the module documentation.
#[derive(Debug, Default)]
pub struct SessionView {
    entries: Mutex<HashMap<UserId, Placement>>,
}

#[derive(Debug, Clone)]
struct Placement {
    servers: Vec<ServerId>,
    until: Instant,
}

impl SessionView {
    /// The servers `user` was seen on, if that is recent enough to be trusted.
    pub fn get(&self, user: UserId, now: Instant) -> Option<Vec<ServerId>> {
        let entries = self.lock();
        let placement = entries.get(&user)?;
        (placement.until > now).then(|| placement.servers.clone())
    }

    /// Remembers that every session of `user` is on `servers` (none of them this server).
    pub fn record(&self, user: UserId, servers: Vec<ServerId>, now: Instant) {
        if servers.is_empty() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= VIEW_CAPACITY && !entries.contains_key(&user) {
            entries.clear();
        }
        entries.insert(
            user,
            Placement {
                servers,
                until: now + VIEW_TTL,
            },
        );
    }

    /// Forgets `user`'s placement on `server` (it said the user is not there): the next
    /// message to them looks them up again.
    pub fn forget(&self, user: UserId, server: &ServerId) {
        let mut entries = self.lock();
        if entries
            .get(&user)
            .is_some_and(|placement| placement.servers.contains(server))
        {
            entries.remove(&user);
        }
    }

    /// Users remembered now (expired ones included until they are replaced).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the view remembers nobody.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, Placement>> {
        // Every critical section is one map operation: never half-done.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: &str) -> ServerId {
        ServerId::new(id).expect("a valid id")
    }

    #[test]
    fn a_placement_is_trusted_until_it_expires() {
        let view = SessionView::default();
        let now = Instant::now();
        view.record(UserId(1), vec![server("b")], now);
        assert_eq!(view.get(UserId(1), now), Some(vec![server("b")]));
        assert_eq!(view.get(UserId(1), now + VIEW_TTL), None, "expired");
        assert_eq!(view.get(UserId(2), now), None, "never seen");
    }

    #[test]
    fn a_miss_on_the_remembered_server_forgets_the_user_and_one_elsewhere_does_not() {
        let view = SessionView::default();
        let now = Instant::now();
        view.record(UserId(1), vec![server("b")], now);
        view.forget(UserId(1), &server("c"));
        assert_eq!(view.get(UserId(1), now), Some(vec![server("b")]));
        view.forget(UserId(1), &server("b"));
        assert_eq!(view.get(UserId(1), now), None);
    }

    #[test]
    fn nothing_is_remembered_for_no_server_and_the_view_stays_bounded() {
        let view = SessionView::default();
        let now = Instant::now();
        view.record(UserId(1), Vec::new(), now);
        assert!(view.is_empty());
        for user in 0..=VIEW_CAPACITY as u64 {
            view.record(UserId(user), vec![server("b")], now);
        }
        assert!(view.len() <= VIEW_CAPACITY, "{} entries", view.len());
    }
}
