//! The scheduler: scheduled messages become ordinary messages when they are due.
//!
//! Every server runs one, and they cooperate through the MessageStore alone:
//! [`claim_due`](cim_core::MessageStore::claim_due) hands each due entry to one claimer at a
//! time, for a claim period. The claimer releases it into the message pipeline
//! ([`Pipeline::release`](cim_pipeline::Pipeline::release): appended idempotently by its
//! `client_msg_id`, so a claimer that dies after the append and before finishing is replaced
//! without a duplicate, then dispatched and finished). Nothing lives in memory between ticks, so
//! with a durable store the schedule survives any restart.

use std::sync::Arc;
use std::time::Duration;

use cim_core::{Result, Timestamp};
use tokio::time::MissedTickBehavior;

use crate::server::Shared;

/// How often due messages are looked for.
const TICK: Duration = Duration::from_millis(500);
/// How long a claim keeps other servers away from an entry.
const CLAIM_FOR: Duration = Duration::from_secs(30);
/// Entries claimed at once.
const BATCH: u32 = 100;

/// Runs until shutdown; returns at once if the MessageStore cannot schedule.
pub(crate) async fn run(shared: Arc<Shared>) {
    if !shared.stores.messages.capabilities().scheduling {
        tracing::info!("the message store cannot schedule; scheduled messages are refused");
        return;
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = run_due(&shared).await {
                    tracing::warn!(error = %e, "cannot deliver scheduled messages now");
                }
            }
        }
    }
}

/// Delivers every entry due now.
async fn run_due(shared: &Shared) -> Result<()> {
    loop {
        let due = shared
            .stores
            .messages
            .claim_due(Timestamp::now(), CLAIM_FOR, BATCH)
            .await?;
        let full = due.len() == BATCH as usize;
        for entry in due {
            shared.pipeline.release(entry).await?;
        }
        if !full {
            return Ok(());
        }
    }
}
