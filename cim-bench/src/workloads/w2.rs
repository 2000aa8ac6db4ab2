//! W2, group fan-out: one sender, a group of N receiving members (100 and 1,000), at least
//! 2 million deliveries, a window of deliveries in flight.
//!
//! cim's group is created through the route by the sender, who is then a member too (cim
//! requires it, and does not echo a sender's own messages); the peers' groups are a subject
//! with N subscribers. Measured: deliveries per second and server CPU time per delivery.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use tokio::sync::Semaphore;

use super::{
    CpuMark, Ctx, Shared, connect_all, receive, record_received, record_sent, send_closed,
    stop_signal, wait_for_deliveries,
};
use crate::report::Measurement;
use crate::systems::{Deployment, Plan};
use crate::wire::{Target, Wire};

/// The case name for groups of `members`.
pub fn case(members: usize) -> String {
    format!("group of {members}")
}

/// User 0 sends; users `1..=members` receive; one group.
pub fn plan(members: usize) -> Plan {
    let mut plan = Plan::users(members + 1);
    plan.groups = vec![(1..=members).collect()];
    plan.group_senders = vec![0];
    plan
}

/// Runs W2 with a group of `members` on `dep`.
pub async fn run<W: Wire>(
    ctx: &Ctx<'_>,
    wire: W,
    dep: &mut Deployment,
    members: usize,
) -> Result<Measurement> {
    let sizes = ctx.sizes;
    let group = dep.groups[0];
    let receivers: Vec<usize> = (1..=members).collect();
    let receiver_conns = connect_all(
        ctx.env,
        &wire,
        dep,
        &receivers,
        false,
        &[group],
        "connect members",
    )
    .await?;
    let sender_conn = connect_all(ctx.env, &wire, dep, &[0], false, &[], "connect sender")
        .await?
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no sender connection"))?;
    dep.pin_for_measurement()?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let messages = sizes.w2_deliveries.div_ceil(members as u64);
    let total = messages * members as u64;
    let window = (sizes.w2_window as usize).max(members);
    let shared = Arc::new(Shared {
        clock: ctx.clock,
        delivered: Default::default(),
        windows: vec![Arc::new(Semaphore::new(window))],
        phase: ctx.env.progress.phase("deliveries", total),
        record_latency: false,
    });
    let (stop_tx, stop) = stop_signal();
    let mark = CpuMark::now(ctx, dep, &format!("W2-{members}")).await?;
    let started = Instant::now();
    let receiving: Vec<_> = receiver_conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(receive(
                wire.clone(),
                conn,
                Arc::clone(&shared),
                1,
                stop.clone(),
            ))
        })
        .collect();
    let sending = tokio::spawn(send_closed(
        wire.clone(),
        sender_conn,
        0,
        messages,
        members as u32,
        Arc::clone(&shared.windows[0]),
        move |_| Target::Group(group),
        sizes.body,
        ctx.clock,
        stop.clone(),
    ));
    let ended = wait_for_deliveries(&shared, total, sizes.stall).await;
    let mut m = Measurement::new("W2", &case(members), dep.kind.name(), ctx.round);
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
    let sent = vec![sending.await?];
    record_received(&received, &mut m);
    record_sent(&sent, &mut m);
    let delivered = m.get("deliveries").unwrap_or(0.0);
    let elapsed = ended.duration_since(started).as_secs_f64().max(1e-9);
    m.set("throughput", delivered / elapsed);
    let expected = m.get("sent").unwrap_or(0.0) * members as f64;
    m.set("lost", (expected - delivered).max(0.0));
    if expected < total as f64 {
        m.notes.push(format!(
            "only {} of {messages} messages were sent",
            m.get("sent").unwrap_or(0.0)
        ));
    }
    m.notes.extend(dep.notes.iter().cloned());
    m.notes.push(format!(
        "{messages} messages × {members} members, window {window} deliveries, {} B bodies",
        sizes.body
    ));
    Ok(m)
}
