//! Rounds: every workload case runs on every system back to back, the systems in a different
//! order each round (rotated by one), each on a fresh deployment.

use std::time::Duration;

use anyhow::Result;

use crate::payload::Clock;
use crate::report::Measurement;
use crate::systems::{Deployment, Env, Plan, SystemKind, deploy};
use crate::wire::Wire;
use crate::wire::cim::CimWire;
use crate::wire::mqtt::MqttWire;
use crate::wire::nats::NatsWire;
use crate::wire::redis::RedisWire;
use crate::wire::relay::RelayWire;
use crate::workloads::{Ctx, Sizes, w1, w2, w3, w4, w5, w6};

/// A workload of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// One-to-one throughput.
    W1,
    /// Group fan-out.
    W2,
    /// Login storm.
    W3,
    /// Idle memory.
    W4,
    /// Latency under load.
    W5,
    /// Failover.
    W6,
}

impl Workload {
    /// All of them.
    pub const ALL: [Workload; 6] = [
        Workload::W1,
        Workload::W2,
        Workload::W3,
        Workload::W4,
        Workload::W5,
        Workload::W6,
    ];

    /// `w1` ... `w6` (any case).
    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| format!("{w:?}").eq_ignore_ascii_case(name.trim()))
    }
}

/// One concrete case of a workload.
#[derive(Debug, Clone, Copy)]
enum Case {
    W1SameServer,
    W1AcrossServers,
    W2(usize),
    W3(w3::Mode),
    W4(usize),
    W5(w5::Case),
    W6,
}

impl Case {
    fn of(workload: Workload, sizes: &Sizes) -> Vec<Case> {
        match workload {
            Workload::W1 => vec![Case::W1SameServer, Case::W1AcrossServers],
            Workload::W2 => sizes.w2_groups.iter().map(|n| Case::W2(*n)).collect(),
            Workload::W3 => w3::Mode::ALL.into_iter().map(Case::W3).collect(),
            Workload::W4 => sizes.w4_connections.iter().map(|n| Case::W4(*n)).collect(),
            Workload::W5 => vec![Case::W5(w5::Case::OneToOne), Case::W5(w5::Case::FanOut)],
            Workload::W6 => vec![Case::W6],
        }
    }

    fn workload(self) -> &'static str {
        match self {
            Case::W1SameServer | Case::W1AcrossServers => "W1",
            Case::W2(_) => "W2",
            Case::W3(_) => "W3",
            Case::W4(_) => "W4",
            Case::W5(_) => "W5",
            Case::W6 => "W6",
        }
    }

    fn name(self, ctx: &Ctx<'_>) -> String {
        match self {
            Case::W1SameServer => w1::SAME_SERVER.into(),
            Case::W1AcrossServers => w1::ACROSS_SERVERS.into(),
            Case::W2(n) => w2::case(n),
            Case::W3(mode) => mode.case().into(),
            Case::W4(n) => w4::case(n),
            Case::W5(case) => case.name(ctx),
            Case::W6 => w6::CASE.into(),
        }
    }

    /// Whether `kind` can run this case: the peers have no failover semantics (W6) and no route
    /// to log in at (W3 by token); of them, only core NATS runs as a cluster (two servers joined
    /// by routes) for W1 across servers.
    fn runs_on(self, kind: SystemKind) -> bool {
        match self {
            Case::W1AcrossServers => matches!(kind, SystemKind::Cim | SystemKind::Nats),
            Case::W6 | Case::W3(w3::Mode::Resume | w3::Mode::AppToken) => kind == SystemKind::Cim,
            _ => true,
        }
    }

    fn plan(self, ctx: &Ctx<'_>) -> Plan {
        let sizes = ctx.sizes;
        match self {
            Case::W1SameServer => w1::plan(ctx, 1),
            Case::W1AcrossServers => w1::plan(ctx, 2),
            Case::W2(n) => w2::plan(n),
            Case::W3(mode) => w3::plan(sizes.w3_clients, mode),
            Case::W4(n) => w4::plan(w4::capped(n)),
            Case::W5(case) => case.plan(ctx),
            Case::W6 => w6::plan(sizes.w6_servers, sizes.w6_clients),
        }
    }

    async fn run<W: Wire>(
        self,
        ctx: &Ctx<'_>,
        wire: W,
        dep: &mut Deployment,
    ) -> Result<Measurement> {
        match self {
            Case::W1SameServer => w1::run(ctx, wire, dep, w1::SAME_SERVER).await,
            Case::W1AcrossServers => w1::run(ctx, wire, dep, w1::ACROSS_SERVERS).await,
            Case::W2(n) => w2::run(ctx, wire, dep, n).await,
            Case::W3(mode) => w3::run(ctx, wire, dep, mode).await,
            Case::W4(n) => w4::run(ctx, wire, dep, n).await,
            Case::W5(case) => w5::run(ctx, wire, dep, case).await,
            Case::W6 => w6::run(ctx, dep).await,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Systems, in the first round's order.
    pub systems: Vec<SystemKind>,
    /// Workloads, in order.
    pub workloads: Vec<Workload>,
    /// Rounds.
    pub rounds: usize,
    /// Sizes.
    pub sizes: Sizes,
    /// The longest one case may take on one system.
    pub case_timeout: Duration,
}

/// Runs every round; returns every measurement (skipped and failed ones included).
pub async fn run(env: &Env, config: &RunConfig) -> Vec<Measurement> {
    let clock = Clock::new();
    let mut results = Vec::new();
    for round in 1..=config.rounds {
        for workload in &config.workloads {
            for case in Case::of(*workload, &config.sizes) {
                let ctx = Ctx {
                    env,
                    sizes: &config.sizes,
                    round,
                    clock,
                };
                let name = case.name(&ctx);
                let mut order = config.systems.clone();
                let shift = (round - 1) % order.len().max(1);
                order.rotate_left(shift);
                for kind in order {
                    if kind.is_durable() && !matches!(case, Case::W1SameServer) {
                        if round == 1 {
                            let mut m =
                                Measurement::new(case.workload(), &name, kind.name(), round);
                            m.status = "skipped".into();
                            m.reason = Some(format!(
                                "n/a: {kind} is measured on W1 on one server, against the other \
                                 durable system"
                            ));
                            results.push(m);
                        }
                        continue;
                    }
                    if !case.runs_on(kind) {
                        if round == 1 {
                            let mut m =
                                Measurement::new(case.workload(), &name, kind.name(), round);
                            m.status = "skipped".into();
                            m.reason = Some(if matches!(case, Case::W3(_)) {
                                format!(
                                    "n/a: {kind} has no route to log in at; its handshake is \
                                     measured in \"{}\"",
                                    w3::Mode::Password.case()
                                )
                            } else {
                                format!(
                                    "n/a: the bench runs {kind} as a single server without this \
                                     scenario"
                                )
                            });
                            results.push(m);
                        }
                        continue;
                    }
                    if matches!(case, Case::W6) && round > 1 {
                        // Failover has no peer to compare with within a round: once is enough.
                        continue;
                    }
                    env.progress.set_prefix(&format!(
                        "[{} {name} | {kind} | round {round}/{}]",
                        case.workload(),
                        config.rounds
                    ));
                    let outcome =
                        tokio::time::timeout(config.case_timeout, run_case(&ctx, kind, case)).await;
                    let m = match outcome {
                        Ok(Ok(Ok(m))) => m,
                        Ok(Ok(Err(skipped))) => {
                            let mut m =
                                Measurement::new(case.workload(), &name, kind.name(), round);
                            m.status = "skipped".into();
                            m.reason = Some(skipped);
                            m
                        }
                        Ok(Err(e)) => {
                            let mut m =
                                Measurement::new(case.workload(), &name, kind.name(), round);
                            m.status = "failed".into();
                            m.reason = Some(format!("{e:#}"));
                            m
                        }
                        Err(_) => {
                            let mut m =
                                Measurement::new(case.workload(), &name, kind.name(), round);
                            m.status = "failed".into();
                            m.reason =
                                Some(format!("did not finish within {:?}", config.case_timeout));
                            m
                        }
                    };
                    env.progress.note(&one_line(&m));
                    results.push(m);
                }
            }
        }
    }
    env.progress.set_prefix("");
    results
}

async fn run_case(
    ctx: &Ctx<'_>,
    kind: SystemKind,
    case: Case,
) -> Result<Result<Measurement, String>> {
    let plan = case.plan(ctx);
    let mut dep = match deploy(ctx.env, kind, &plan).await? {
        Ok(dep) => dep,
        Err(reason) => return Ok(Err(reason)),
    };
    let m = match kind {
        SystemKind::Cim | SystemKind::CimDurable => case.run(ctx, CimWire, &mut dep).await,
        SystemKind::Relay => case.run(ctx, RelayWire, &mut dep).await,
        SystemKind::Nats => case.run(ctx, NatsWire::core(), &mut dep).await,
        SystemKind::NatsJs => case.run(ctx, NatsWire::jetstream(), &mut dep).await,
        SystemKind::Mosquitto => case.run(ctx, MqttWire, &mut dep).await,
        SystemKind::Redis => case.run(ctx, RedisWire, &mut dep).await,
    };
    // A server that died during the run (other than W6's victim) makes the figures
    // meaningless: the run failed, its metrics stay in the JSON for the record.
    let m = m.map(|mut m| {
        if !matches!(case, Case::W6)
            && let Err(e) = dep.check_alive()
        {
            m.status = "failed".into();
            let first = format!("{e:#}");
            m.reason = Some(format!(
                "{} (an exit by signal 9 with no one killing it is usually the kernel's \
                 out-of-memory killer: see dmesg)",
                first.lines().next().unwrap_or_default()
            ));
        }
        m
    });
    // Stop the system before the next one starts (dropping the deployment kills it).
    drop(dep);
    Ok(Ok(m?))
}

/// A measurement in one line, for progress.
fn one_line(m: &Measurement) -> String {
    if m.status != "ok" {
        return format!("{}: {}", m.status, m.reason.clone().unwrap_or_default());
    }
    let keys = [
        "throughput",
        "server_cpu_us_per_delivery",
        "logins_per_s",
        "logins_per_core_s",
        "rss_per_connection",
        "p50_us",
        "p99_us",
        "reconnect_p99_ms",
        "lost",
        "lost_acked",
        "duplicates",
        "failed",
    ];
    let parts: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            m.get(k).map(|v| {
                format!(
                    "{k} {}",
                    crate::report::format_value(v, crate::report::unit(k))
                )
            })
        })
        .collect();
    format!("done: {}", parts.join(", "))
}
