//! # cim-example-embed
//!
//! An "alerts" service that uses cim-core as a library: no cim server, no network, just the
//! store traits built from a config through the registry. It creates a bot account and an
//! on-call engineer, a group, fires alerts as direct and group messages, then does what a
//! delivery loop does for the engineer: read the pending inbox, acknowledge it, search history.
//!
//! The service only ever talks to `Arc<dyn Trait>`s from [`Stores`], so switching the config
//! from `memory` to `sqlite` (or a third-party backend) changes no code here. Memory backends are
//! used so the example runs anywhere: `cargo run -p cim-example-embed`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use cim_core::{
    ConversationId, CoreConfig, GroupId, NameRules, NewGroup, NewMessage, NewUser, Recipient,
    Result, Seq, StoredMessage, Stores, Timestamp, UserId,
};

/// Every store in process memory: nothing to install, nothing left behind.
const CONFIG: &str = r#"
[meta]
backend = "memory"
[sessions]
backend = "memory"
[accounts]
backend = "memory"
[messages]
backend = "memory"
"#;

/// How many pending messages to fetch per call. Small on purpose: the example walks more than
/// one page, so the cursor handling is exercised every run.
const PAGE_SIZE: u32 = 2;

/// What the run did, for `main` to report and for the test to check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    /// The bodies in the on-call engineer's inbox, in delivery order.
    delivered: Vec<String>,
    /// Re-fired alerts the store recognised by their `client_msg_id` and did not store again.
    duplicates: usize,
    /// Messages still pending after the acknowledgement.
    pending_after_ack: usize,
    /// Bodies matching the history search, newest first.
    search_hits: Vec<String>,
}

/// The service: accounts, a group, alerts, then one delivery round for the on-call engineer.
async fn run(stores: &Stores) -> Result<Summary> {
    // The same name rules a cim server applies unless `[names]` says otherwise.
    let names = NameRules::default();
    let accounts = &stores.accounts;
    let messages = &stores.messages;

    let bot = accounts
        .create_user(NewUser::new("alerts", "alerts-bot-password", &names).await?)
        .await?;
    let dana = accounts
        .create_user(NewUser::new("dana", "dana-password", &names).await?)
        .await?;
    println!(
        "created users {} (id {}) and {} (id {})",
        bot.name, bot.id, dana.name, dana.id
    );

    let oncall = accounts
        .create_group(NewGroup::new("oncall", bot.id, &names)?)
        .await?;
    accounts.add_member(oncall.id, dana.id, Seq(1)).await?;
    println!(
        "created group {} (id {}) with members alerts, dana",
        oncall.name, oncall.id
    );

    // The client_msg_id is the alert's own id: if the alert source fires it again, the store
    // recognises the retry and stores nothing new.
    let alerts = [
        (Recipient::User(dana.id), "disk-91", "db-1 disk at 91%"),
        (Recipient::User(dana.id), "disk-97", "db-1 disk at 97%"),
        (
            Recipient::Group(oncall.id),
            "failover",
            "db-1 failing over to db-2",
        ),
    ];
    for (to, alert_id, body) in alerts {
        let appended = messages.append(message(bot.id, to, alert_id, body)).await?;
        let stored = appended.message;
        println!(
            "alerts -> {} #{}: {}",
            stored.conversation, stored.seq, stored.body
        );
    }
    let refired = messages
        .append(message(
            bot.id,
            Recipient::User(dana.id),
            "disk-97",
            "db-1 disk at 97%",
        ))
        .await?;
    let duplicates = usize::from(refired.duplicate);
    println!(
        "alert disk-97 fired again: duplicate = {}",
        refired.duplicate
    );

    // Dana answers in the group. Her own message must not show up in her inbox.
    messages
        .append(message(
            dana.id,
            Recipient::Group(oncall.id),
            "dana-1",
            "on it",
        ))
        .await?;

    // The message store finds a user's direct conversations by itself, but group membership
    // lives in the account store: the caller names the groups to include.
    let groups: Vec<GroupId> = accounts
        .user_groups(dana.id)
        .await?
        .into_iter()
        .map(|group| group.id)
        .collect();

    let inbox = pending(stores, dana.id, &groups).await?;
    for m in &inbox {
        println!("dana <- {} #{}: {}", m.conversation, m.seq, m.body);
    }

    // Acknowledge what was delivered: per conversation, up to the highest sequence seen.
    let mut delivered_up_to: BTreeMap<ConversationId, Seq> = BTreeMap::new();
    for m in &inbox {
        let up_to = delivered_up_to.entry(m.conversation).or_insert(m.seq);
        *up_to = (*up_to).max(m.seq);
    }
    for (conversation, up_to) in &delivered_up_to {
        messages.ack(dana.id, *conversation, *up_to).await?;
    }
    let pending_after_ack = pending(stores, dana.id, &groups).await?.len();
    println!("acknowledged; {pending_after_ack} message(s) still pending for dana");

    // Search is a capability: a backend may not offer it, and says so rather than fail later.
    let search_hits = if messages.capabilities().search {
        let page = messages
            .search(dana.id, &groups, "disk db-1", None, 10)
            .await?;
        page.items.into_iter().map(|m| m.body).collect()
    } else {
        println!("this message store does not offer search; skipped");
        Vec::new()
    };
    println!("search \"disk db-1\": {search_hits:?}");

    Ok(Summary {
        delivered: inbox.into_iter().map(|m| m.body).collect(),
        duplicates,
        pending_after_ack,
        search_hits,
    })
}

/// A message from `sender`, sent now.
fn message(sender: UserId, to: Recipient, client_msg_id: &str, body: &str) -> NewMessage {
    NewMessage {
        sender,
        to,
        client_msg_id: client_msg_id.to_string(),
        body: body.to_string(),
        sent_at: Timestamp::now(),
    }
}

/// Everything pending for `user`, page after page until the store says there is no more.
async fn pending(stores: &Stores, user: UserId, groups: &[GroupId]) -> Result<Vec<StoredMessage>> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = stores
            .messages
            .pending(user, groups, cursor.as_ref(), PAGE_SIZE)
            .await?;
        all.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

/// Builds the stores the config names and runs the service on them.
async fn start() -> Result<Summary> {
    let config = CoreConfig::from_toml(CONFIG)?;
    let stores = Stores::from_config(&config).await?;
    run(&stores).await
}

#[tokio::main]
async fn main() -> ExitCode {
    match start().await {
        Ok(summary) => {
            println!(
                "done: {} delivered, {} duplicate suppressed, {} search hit(s)",
                summary.delivered.len(),
                summary.duplicates,
                summary.search_hits.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("alerts: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run, on fresh memory stores, as `main` does it.
    async fn summary() -> Summary {
        start().await.expect("the example runs")
    }

    #[tokio::test]
    async fn every_alert_reaches_the_engineer_once_and_her_own_reply_does_not() {
        let summary = summary().await;

        let mut delivered = summary.delivered.clone();
        delivered.sort();
        assert_eq!(
            delivered,
            [
                "db-1 disk at 91%",
                "db-1 disk at 97%",
                "db-1 failing over to db-2"
            ],
            "delivered: {:?}",
            summary.delivered
        );
        // Across conversations the order is the store's; within one it is sequence order.
        let position = |body: &str| summary.delivered.iter().position(|b| b == body);
        assert!(position("db-1 disk at 91%") < position("db-1 disk at 97%"));
        assert_eq!(summary.duplicates, 1, "the re-fired alert is a duplicate");
    }

    #[tokio::test]
    async fn acknowledging_empties_the_inbox() {
        assert_eq!(summary().await.pending_after_ack, 0);
    }

    #[tokio::test]
    async fn search_finds_the_disk_alerts_newest_first() {
        assert_eq!(
            summary().await.search_hits,
            ["db-1 disk at 97%", "db-1 disk at 91%"]
        );
    }
}
