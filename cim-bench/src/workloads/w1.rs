//! W1, one-to-one throughput: 4 senders, 100 receivers, 100,000 messages of 100 bytes, each
//! sender keeping a window of messages in flight (written but not yet read by the recipient);
//! on one server, and (cim, and core NATS as a two-server cluster) across two servers, where
//! every message crosses from the sender's server to the recipient's.
//!
//! Measured from the first send to the last delivery: deliveries per second, the server's CPU
//! time per delivered message, lost and duplicated messages.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio::sync::Semaphore;

use super::{
    CpuMark, Ctx, Shared, connect_all, receive, record_received, record_sent, send_closed,
    stop_signal, wait_for_deliveries,
};
use crate::report::Measurement;
use crate::systems::{Accounts, Deployment, Plan};
use crate::wire::{Target, Wire};

/// The W1 case on one server.
pub const SAME_SERVER: &str = "one-to-one, same server";
/// The W1 case across two servers.
pub const ACROSS_SERVERS: &str = "one-to-one, across 2 servers";

/// The plan: senders are users `0..senders`, receivers the rest; `servers` servers, with
/// senders and receivers alternating between them.
pub fn plan(ctx: &Ctx<'_>, servers: usize) -> Plan {
    let sizes = ctx.sizes;
    let users = sizes.w1_senders + sizes.w1_receivers;
    let mut plan = Plan::users(users);
    if servers > 1 {
        plan.servers = servers;
        plan.accounts = Accounts::VaultWithTokens;
        plan.placement = (0..users).map(|i| i % servers).collect();
    }
    plan
}

/// Runs W1 on `dep`.
pub async fn run<W: Wire>(
    ctx: &Ctx<'_>,
    wire: W,
    dep: &mut Deployment,
    case: &str,
) -> Result<Measurement> {
    let sizes = ctx.sizes;
    let senders = sizes.w1_senders;
    let receivers: Vec<usize> = (senders..senders + sizes.w1_receivers).collect();
    let across = dep.servers.len() > 1;
    let receiver_conns = connect_all(
        ctx.env,
        &wire,
        dep,
        &receivers,
        true,
        &[],
        "connect receivers",
    )
    .await?;
    let sender_indices: Vec<usize> = (0..senders).collect();
    let sender_conns = connect_all(
        ctx.env,
        &wire,
        dep,
        &sender_indices,
        false,
        &[],
        "connect senders",
    )
    .await?;
    // Each sender's recipients: every receiver (same server), or those on other servers.
    let recipients: Vec<Vec<u64>> = (0..senders)
        .map(|s| {
            receivers
                .iter()
                .filter(|r| !across || dep.users[**r].server != dep.users[s].server)
                .map(|r| dep.users[*r].address)
                .collect()
        })
        .collect();
    dep.pin_for_measurement()?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let total = sizes.w1_messages;
    let per_sender: Vec<u64> = (0..senders as u64)
        .map(|s| total / senders as u64 + u64::from(s < total % senders as u64))
        .collect();
    let shared = Arc::new(Shared {
        clock: ctx.clock,
        delivered: Default::default(),
        windows: (0..senders)
            .map(|_| Arc::new(Semaphore::new(sizes.w1_window as usize)))
            .collect(),
        phase: ctx.env.progress.phase("deliveries", total),
        record_latency: false,
    });
    let (stop_tx, stop) = stop_signal();
    let mark = CpuMark::now(ctx, dep, &format!("W1-{case}")).await?;
    let started = Instant::now();
    let receiving: Vec<_> = receiver_conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(receive(
                wire.clone(),
                conn,
                Arc::clone(&shared),
                senders,
                stop.clone(),
            ))
        })
        .collect();
    let sending: Vec<_> = sender_conns
        .into_iter()
        .enumerate()
        .map(|(s, conn)| {
            let targets = recipients[s].clone();
            let me = s as u32;
            tokio::spawn(send_closed(
                wire.clone(),
                conn,
                me,
                per_sender[s],
                1,
                Arc::clone(&shared.windows[s]),
                move |seq| Target::User(targets[(seq as usize + s) % targets.len()]),
                sizes.body,
                ctx.clock,
                stop.clone(),
            ))
        })
        .collect();
    let ended = wait_for_deliveries(&shared, total, sizes.stall).await;
    let mut m = Measurement::new("W1", case, dep.kind.name(), ctx.round);
    mark.record(
        dep,
        ended,
        shared.delivered.load(std::sync::atomic::Ordering::Relaxed),
        "server_cpu_us_per_delivery",
        &mut m,
    )?;
    shared.phase.finish();
    let _ = stop_tx.send(true);
    let mut received = Vec::new();
    for task in receiving {
        received.push(task.await?);
    }
    let mut sent = Vec::new();
    for task in sending {
        sent.push(task.await?);
    }
    record_received(&received, &mut m);
    record_sent(&sent, &mut m);
    let delivered = m.get("deliveries").unwrap_or(0.0);
    let elapsed = ended.duration_since(started).as_secs_f64().max(1e-9);
    m.set("throughput", delivered / elapsed);
    let written = m.get("sent").unwrap_or(0.0);
    m.set("lost", (written - delivered).max(0.0));
    if written < total as f64 {
        m.notes
            .push(format!("only {written} of {total} messages were sent"));
    }
    m.notes.extend(dep.notes.iter().cloned());
    m.notes.push(format!(
        "{senders} senders × window {} messages, {} receivers, {total} messages of {} B",
        sizes.w1_window, sizes.w1_receivers, sizes.body
    ));
    Ok(m)
}
