//! Stage 2, **authorise**: may this sender write to this recipient?
//!
//! - A user: any existing user (`NotFound` otherwise).
//! - A group: only its members. An outsider gets one answer, `NotFound`, whether the group
//!   exists or not, so group ids cannot be probed.
//! - The built-in "all" group: whoever `[limits.broadcast]` allows (`PermissionDenied`
//!   otherwise).
//!
//! Checked on every message, at one store look-up each ([`AccountStore::is_member`] for a
//! group), except for users known to exist: accounts are never deleted, so once a user is
//! found, later messages to them skip the look-up (`KnownUsers`).

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use cim_core::{AccountStore, Error, GroupId, Recipient, Result, UserId};

use crate::config::BroadcastConfig;
use crate::message::Sender;

/// Users found to exist, so that a message to them needs no store look-up. Bounded: once it
/// holds [`KnownUsers::MAX`] users it starts again empty.
#[derive(Debug, Default)]
pub(crate) struct KnownUsers {
    users: Mutex<HashSet<UserId>>,
}

impl KnownUsers {
    /// Users remembered at most.
    const MAX: usize = 1 << 16;

    fn contains(&self, user: UserId) -> bool {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&user)
    }

    fn insert(&self, user: UserId) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if users.len() >= Self::MAX {
            users.clear();
        }
        users.insert(user);
    }
}

/// Fails unless `sender` may write to `to`.
pub(crate) async fn send(
    accounts: &dyn AccountStore,
    known: &KnownUsers,
    broadcast: &BroadcastConfig,
    sender: &Sender,
    to: Recipient,
) -> Result<()> {
    match to {
        Recipient::User(user) if known.contains(user) => Ok(()),
        Recipient::User(user) => match accounts.user(user).await? {
            Some(_) => {
                known.insert(user);
                Ok(())
            }
            None => Err(Error::not_found(format!("there is no user {user}"))),
        },
        Recipient::Group(GroupId::ALL) => {
            if broadcast.allows(&sender.name) {
                Ok(())
            } else {
                Err(Error::permission_denied(
                    "this deployment does not let you send to \"all\" (every online user); \
                     send to a user or a group",
                ))
            }
        }
        Recipient::Group(group) => {
            let member =
                accounts.capabilities().groups && accounts.is_member(group, sender.id).await?;
            if member {
                Ok(())
            } else {
                Err(Error::not_found(format!(
                    "there is no group {group} that you are a member of; join it first"
                )))
            }
        }
    }
}
