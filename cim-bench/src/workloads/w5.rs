//! W5, latency under load: open-loop fixed rates (one-to-one at 20,000 msg/s from 4 senders to
//! 100 receivers; fan-out to a group of 100 at 500 msg/s), latency from send to receipt.
//!
//! Open loop: senders follow a schedule and never wait for the system, so a system that cannot
//! keep up shows it as latency (queues grow) rather than by slowing the senders down. Each body
//! carries the generator's clock at the moment it was written; the receiver subtracts it from
//! the clock when it decodes the message (one process, one monotonic clock). How far a sender
//! fell behind its schedule (its own lag, for instance when the socket pushes back) is reported
//! as `sender_lag_ms`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::{
    CpuMark, Ctx, Shared, connect_all, percentile, receive, record_received, record_sent,
    send_open, stop_signal, wait_for_deliveries,
};
use crate::report::Measurement;
use crate::systems::{Deployment, Plan};
use crate::wire::{Target, Wire};

/// One-to-one senders.
const SENDERS: usize = 4;
/// One-to-one receivers.
const RECEIVERS: usize = 100;

/// Which W5 case.
#[derive(Debug, Clone, Copy)]
pub enum Case {
    /// One-to-one at a total rate.
    OneToOne,
    /// Fan-out to a group.
    FanOut,
}

impl Case {
    /// The case's name.
    pub fn name(self, ctx: &Ctx<'_>) -> String {
        match self {
            Case::OneToOne => format!(
                "latency, one-to-one at {} msg/s",
                ctx.sizes.w5_one_to_one_rate
            ),
            Case::FanOut => format!(
                "latency, fan-out {} at {} msg/s",
                ctx.sizes.w5_fanout_group, ctx.sizes.w5_fanout_rate
            ),
        }
    }

    /// What to deploy.
    pub fn plan(self, ctx: &Ctx<'_>) -> Plan {
        match self {
            Case::OneToOne => Plan::users(SENDERS + RECEIVERS.min(ctx.sizes.w1_receivers.max(1))),
            Case::FanOut => super::w2::plan(ctx.sizes.w5_fanout_group),
        }
    }
}

/// Runs a W5 case on `dep`.
pub async fn run<W: Wire>(
    ctx: &Ctx<'_>,
    wire: W,
    dep: &mut Deployment,
    case: Case,
) -> Result<Measurement> {
    let sizes = ctx.sizes;
    let (senders, receivers, groups, fanout, rate): (usize, Vec<usize>, Vec<u64>, u64, f64) =
        match case {
            Case::OneToOne => (
                SENDERS,
                (SENDERS..dep.users.len()).collect(),
                Vec::new(),
                1,
                sizes.w5_one_to_one_rate,
            ),
            Case::FanOut => (
                1,
                (1..dep.users.len()).collect(),
                vec![dep.groups[0]],
                (dep.users.len() - 1) as u64,
                sizes.w5_fanout_rate,
            ),
        };
    let receiver_conns = connect_all(
        ctx.env,
        &wire,
        dep,
        &receivers,
        matches!(case, Case::OneToOne),
        &groups,
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
    let addresses: Vec<u64> = receivers.iter().map(|r| dep.users[*r].address).collect();
    dep.pin_for_measurement()?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let per_sender_rate = rate / senders as f64;
    let per_sender_total = (per_sender_rate * sizes.w5_duration.as_secs_f64()).round() as u64;
    let expected = per_sender_total * senders as u64 * fanout;
    let shared = Arc::new(Shared {
        clock: ctx.clock,
        delivered: Default::default(),
        windows: Vec::new(),
        phase: ctx.env.progress.phase("deliveries", expected),
        record_latency: true,
    });
    let (stop_tx, stop) = stop_signal();
    let mark = CpuMark::now(ctx, dep, &format!("W5-{}", case.name(ctx))).await?;
    let started = std::time::Instant::now();
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
            let addresses = addresses.clone();
            let group = groups.first().copied();
            tokio::spawn(send_open(
                wire.clone(),
                conn,
                s as u32,
                per_sender_rate,
                sizes.w5_duration,
                move |seq| match group {
                    Some(group) => Target::Group(group),
                    None => Target::User(addresses[(seq as usize * SENDERS + s) % addresses.len()]),
                },
                sizes.body,
                ctx.clock,
                stop.clone(),
            ))
        })
        .collect();
    let ended = wait_for_deliveries(&shared, expected, sizes.stall).await;
    let mut m = Measurement::new("W5", &case.name(ctx), dep.kind.name(), ctx.round);
    let delivered_now = shared.delivered.load(std::sync::atomic::Ordering::Relaxed);
    mark.record(
        dep,
        ended,
        delivered_now,
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
    let mut latencies = record_received(&received, &mut m);
    record_sent(&sent, &mut m);
    latencies.sort_unstable();
    let micros = |ns: u64| ns as f64 / 1000.0;
    m.set("p50_us", micros(percentile(&latencies, 50.0)));
    m.set("p99_us", micros(percentile(&latencies, 99.0)));
    m.set("p999_us", micros(percentile(&latencies, 99.9)));
    m.set("max_us", micros(latencies.last().copied().unwrap_or(0)));
    let delivered = m.get("deliveries").unwrap_or(0.0);
    m.set(
        "rate",
        delivered / ended.duration_since(started).as_secs_f64().max(1e-9),
    );
    let written = m.get("sent").unwrap_or(0.0);
    m.set("lost", (written * fanout as f64 - delivered).max(0.0));
    let lag = sent.iter().map(|s| s.max_lag).max().unwrap_or_default();
    m.set("sender_lag_ms", lag.as_secs_f64() * 1000.0);
    m.notes.extend(dep.notes.iter().cloned());
    m.notes.push(format!(
        "{senders} sender(s) at {per_sender_rate} msg/s each for {:?}, {} receivers",
        sizes.w5_duration,
        receivers.len()
    ));
    Ok(m)
}
