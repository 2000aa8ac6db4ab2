//! Stage 2, **authorise**: may this sender write to this recipient?
//!
//! - A user: any existing user (`NotFound` otherwise).
//! - A group: only its members. An outsider gets one answer, `NotFound`, whether the group
//!   exists or not, so group ids cannot be probed.
//! - The built-in "all" group: whoever `[limits.broadcast]` allows (`PermissionDenied`
//!   otherwise).
//!
//! Checked on every message, at one store look-up each
//! ([`AccountStore::is_member`] for a group).

use cim_core::{AccountStore, Error, GroupId, Recipient, Result};

use crate::config::BroadcastConfig;
use crate::message::Sender;

/// Fails unless `sender` may write to `to`.
pub(crate) async fn send(
    accounts: &dyn AccountStore,
    broadcast: &BroadcastConfig,
    sender: &Sender,
    to: Recipient,
) -> Result<()> {
    match to {
        Recipient::User(user) => match accounts.user(user).await? {
            Some(_) => Ok(()),
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
