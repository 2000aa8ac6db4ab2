//! Stage 3, **store or schedule**: the message is made safe before anyone hears of it.
//!
//! Once this stage returns, the message is in the MessageStore (as durably as the backend
//! is) or kept there until it is due; only then is it acknowledged and dispatched. A retry with
//! the same `client_msg_id` stores nothing new: the store answers with the first message, which
//! is acknowledged and dispatched again (its first attempt may have been stored by a process
//! that died before delivering it; recipients drop what they already have), or with the first
//! schedule entry, acknowledged the same way again.

use std::sync::Arc;

use cim_core::{MessageStore, Result};

use crate::message::Accepted;
use crate::validate::Valid;

/// Appends `valid` now, or schedules it when it has a `deliver_at`.
pub(crate) async fn accept(messages: &dyn MessageStore, valid: Valid) -> Result<Accepted> {
    match valid.deliver_at {
        Some(at) => {
            let scheduled = messages.schedule(valid.message, at).await?;
            Ok(Accepted::Scheduled {
                entry: scheduled.entry,
                duplicate: scheduled.duplicate,
            })
        }
        None => {
            let appended = messages.append(valid.message).await?;
            Ok(Accepted::Stored {
                message: Arc::new(appended.message),
                duplicate: appended.duplicate,
            })
        }
    }
}
