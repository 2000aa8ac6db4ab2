//! W4, idle memory: N logged-in, subscribed, idle connections (10,000 and 100,000); the
//! server's resident memory per connection, `(VmRSS after − VmRSS before) / N`.
//!
//! Each connection needs a file descriptor in the generator and one in the server, so N is
//! capped below the open-files limit (the cap is reported); beyond 25,000 connections the
//! generator spreads them over several loopback source addresses (127.0.0.2, ...) so that one
//! address's ephemeral ports do not run out. cim's users come from the vault with their
//! route-issued tokens, so the measured phase is the TCP login only.

use anyhow::Result;

use std::time::Instant;

use super::{CpuMark, Ctx, connect_all};
use crate::process;
use crate::report::Measurement;
use crate::systems::{Accounts, Deployment, Plan};
use crate::wire::Wire;

/// File descriptors kept free for everything else a process opens.
const FD_RESERVE: usize = 1000;

/// The case name for `requested` connections.
pub fn case(requested: usize) -> String {
    format!("idle, {requested} connections")
}

/// How many connections fit under the open-files limit.
pub fn capped(requested: usize) -> usize {
    let (soft, _) = process::open_files_limit();
    let room = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(FD_RESERVE);
    requested.min(room.max(1))
}

/// `connections` users with tokens ready.
pub fn plan(connections: usize) -> Plan {
    let mut plan = Plan::users(connections);
    plan.accounts = Accounts::VaultWithTokens;
    plan
}

/// Runs W4 on `dep` (sized by [`plan`] with [`capped`] connections).
pub async fn run<W: Wire>(
    ctx: &Ctx<'_>,
    wire: W,
    dep: &mut Deployment,
    requested: usize,
) -> Result<Measurement> {
    let connections = dep.users.len();
    dep.pin_for_measurement()?;
    tokio::time::sleep(ctx.sizes.settle).await;
    let before = dep.server_rss()?;
    let indices: Vec<usize> = (0..connections).collect();
    let mark = CpuMark::now(ctx, dep, "W4").await?;
    let conns = connect_all(ctx.env, &wire, dep, &indices, true, &[], "idle logins").await?;
    let logged_in = Instant::now();
    tokio::time::sleep(ctx.sizes.settle).await;
    dep.check_alive()?;
    let after = dep.server_rss()?;
    let mut m = Measurement::new("W4", &case(requested), dep.kind.name(), ctx.round);
    // The TCP part of a login (cim: token check, session bind, sync), without the route.
    mark.record(
        dep,
        logged_in,
        conns.len() as u64,
        "server_cpu_us_per_login",
        &mut m,
    )?;
    m.set("connections", conns.len() as f64);
    m.set("rss_before", before as f64);
    m.set("rss_after", after as f64);
    m.set(
        "rss_per_connection",
        after.saturating_sub(before) as f64 / conns.len().max(1) as f64,
    );
    m.set("lost", 0.0);
    if connections < requested {
        let (soft, hard) = process::open_files_limit();
        m.notes.push(format!(
            "capped at {connections} of {requested} connections by the open-files limit \
             (soft {soft}, hard {hard}; raising the hard limit needs CAP_SYS_RESOURCE)"
        ));
    }
    m.notes.extend(dep.notes.iter().cloned());
    drop(conns);
    Ok(m)
}
