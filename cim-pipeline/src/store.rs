//! Stage 3, **store or schedule**: the message is made safe before anyone hears of it.
//!
//! Once this stage returns, the message is in the MessageStore (as durably as the backend
//! is) or kept there until it is due; only then is it acknowledged and dispatched. A retry with
//! the same `client_msg_id` stores nothing new: the store answers with the first message, which
//! is acknowledged and dispatched again (its first attempt may have been stored by a process
//! that died before delivering it; recipients drop what they already have), or with the first
//! schedule entry, acknowledged the same way again.
//!
//! A batch (the sends a connection read at once) is stored together: its appends go to the
//! store in one [`MessageStore::append_all`], which a backend may commit as one (SQLite does).

use std::sync::Arc;

use cim_core::{MessageStore, Result};

use crate::batch::Gather;
use crate::message::Accepted;
use crate::validate::Valid;

/// Appends each of `valid` now, or schedules it when it has a `deliver_at`: each message's own
/// result, in order.
pub(crate) async fn accept_all(
    messages: &dyn MessageStore,
    valid: Vec<Valid>,
) -> Vec<Result<Accepted>> {
    let mut results = Gather::with_capacity(valid.len());
    let mut appends = Vec::new();
    for valid in valid {
        match valid.deliver_at {
            Some(at) => {
                let scheduled = messages.schedule(valid.message, at).await;
                results.decided(scheduled.map(|scheduled| Accepted::Scheduled {
                    entry: scheduled.entry,
                    duplicate: scheduled.duplicate,
                }));
            }
            None => {
                results.deferred();
                appends.push(valid.message);
            }
        }
    }
    let appended = if results.has_deferred() {
        messages.append_all(appends).await
    } else {
        Vec::new()
    };
    results.finish(appended.into_iter().map(|appended| {
        appended.map(|appended| Accepted::Stored {
            message: Arc::new(appended.message),
            duplicate: appended.duplicate,
        })
    }))
}
