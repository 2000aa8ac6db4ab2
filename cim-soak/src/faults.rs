//! The faults: what can go wrong, a seeded [`Planner`] that picks what goes wrong next, and the
//! [`Injector`] that makes it happen to the [`Cluster`] and undoes it.
//!
//! The schedule is the point of a soak, so it has rules of its own: at most two faults at a
//! time, never two on the same process, never two on the backends at once (with Redis *and*
//! PostgreSQL away nothing can make progress, which teaches nothing), and a quiet gap after each
//! storm. The system is meant to be degraded, not dead: the checker then asks whether it kept
//! its promises while degraded.
//!
//! Planning is separate from doing. The planner is pure (a seeded RNG and the set of busy
//! targets in, a fault out), so a seed always yields the same sequence of decisions and the
//! rules are unit-tested without a cluster; the injector runs on the main thread, one short
//! tick at a time, and never blocks on a restart (a server waiting for a stopped Redis must not
//! keep the loop from continuing that Redis).

use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{Cluster, Proc};
use crate::error::{Result, SoakError};
use crate::history::now_ms;
use crate::process::State;

/// A fault: what is done, to whom, with what parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL a server; start it again (same id, same addresses) after the hold.
    KillServer {
        /// The server (0-based).
        server: usize,
    },
    /// SIGSTOP a server for the hold, then SIGCONT.
    StopServer {
        /// The server.
        server: usize,
    },
    /// SIGKILL the route; start it again after the hold.
    KillRoute,
    /// SIGSTOP the route for the hold.
    StopRoute,
    /// SIGSTOP Redis for the hold.
    StopRedis,
    /// SIGSTOP PostgreSQL (postmaster and backends) for the hold.
    StopPostgres,
    /// Shut Redis down cleanly (SIGTERM) and start it again at once, on the same data.
    RestartRedis,
    /// Shut PostgreSQL down (fast: SIGINT) and start it again at once, on the same data.
    RestartPostgres,
    /// SIGKILL Redis; start it again on the same data after the hold.
    KillRedis,
    /// SIGKILL PostgreSQL (every process of it); start it again after the hold (it recovers
    /// from its WAL).
    KillPostgres,
    /// Drop every packet between a server and its backends for the hold.
    PartitionBackends {
        /// The server.
        server: usize,
        /// Whether Redis is cut off.
        redis: bool,
        /// Whether PostgreSQL is cut off.
        postgres: bool,
    },
    /// Drop a share of the packets on a server's link, each way, for the hold.
    Loss {
        /// The server.
        server: usize,
        /// The share dropped, in percent.
        percent: u32,
    },
    /// A slow link: a token bucket of `kbit` per second each way, queueing up to `latency_ms`.
    Throttle {
        /// The server.
        server: usize,
        /// The rate.
        kbit: u32,
        /// The longest queueing delay before packets drop.
        latency_ms: u32,
    },
    /// Take a server's link down for the hold: cut off from everything.
    Isolate {
        /// The server.
        server: usize,
    },
}

impl Fault {
    /// The process this fault is done to (or whose link it degrades).
    pub fn target(&self) -> Proc {
        match *self {
            Fault::KillServer { server }
            | Fault::StopServer { server }
            | Fault::PartitionBackends { server, .. }
            | Fault::Loss { server, .. }
            | Fault::Throttle { server, .. }
            | Fault::Isolate { server } => Proc::Server(server),
            Fault::KillRoute | Fault::StopRoute => Proc::Route,
            Fault::StopRedis | Fault::RestartRedis | Fault::KillRedis => Proc::Redis,
            Fault::StopPostgres | Fault::RestartPostgres | Fault::KillPostgres => Proc::Postgres,
        }
    }

    /// Whether the fault takes a backend away (at most one such fault runs at a time).
    pub fn hits_a_backend(&self) -> bool {
        matches!(self.target(), Proc::Redis | Proc::Postgres)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = |n: usize| Proc::Server(n).to_string();
        match *self {
            Fault::KillServer { server } => write!(f, "SIGKILL {}", node(server)),
            Fault::StopServer { server } => write!(f, "SIGSTOP {}", node(server)),
            Fault::KillRoute => f.write_str("SIGKILL route"),
            Fault::StopRoute => f.write_str("SIGSTOP route"),
            Fault::StopRedis => f.write_str("SIGSTOP redis"),
            Fault::StopPostgres => f.write_str("SIGSTOP postgres"),
            Fault::RestartRedis => f.write_str("restart redis (SIGTERM, start)"),
            Fault::RestartPostgres => f.write_str("restart postgres (fast shutdown, start)"),
            Fault::KillRedis => f.write_str("SIGKILL redis"),
            Fault::KillPostgres => f.write_str("SIGKILL postgres"),
            Fault::PartitionBackends {
                server,
                redis,
                postgres,
            } => {
                let what = match (redis, postgres) {
                    (true, true) => "redis+postgres",
                    (true, false) => "redis",
                    _ => "postgres",
                };
                write!(f, "partition {} from {what}", node(server))
            }
            Fault::Loss { server, percent } => write!(f, "{percent}% loss on {}", node(server)),
            Fault::Throttle {
                server,
                kbit,
                latency_ms,
            } => write!(f, "throttle {} to {kbit}kbit/{latency_ms}ms", node(server)),
            Fault::Isolate { server } => write!(f, "isolate {} (link down)", node(server)),
        }
    }
}

/// The kinds of fault, with how often each is picked relative to the others.
const KINDS: [(Kind, u32); 14] = [
    (Kind::KillServer, 3),
    (Kind::StopServer, 2),
    (Kind::KillRoute, 1),
    (Kind::StopRoute, 1),
    (Kind::StopRedis, 1),
    (Kind::StopPostgres, 1),
    (Kind::RestartRedis, 1),
    (Kind::RestartPostgres, 1),
    (Kind::KillRedis, 1),
    (Kind::KillPostgres, 1),
    (Kind::PartitionBackends, 3),
    (Kind::Loss, 2),
    (Kind::Throttle, 2),
    (Kind::Isolate, 2),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    KillServer,
    StopServer,
    KillRoute,
    StopRoute,
    StopRedis,
    StopPostgres,
    RestartRedis,
    RestartPostgres,
    KillRedis,
    KillPostgres,
    PartitionBackends,
    Loss,
    Throttle,
    Isolate,
}

/// At most this many faults at once.
pub const MAX_CONCURRENT: usize = 2;

/// Picks faults at random, by the rules of the module docs, from a seed.
#[derive(Debug)]
pub struct Planner {
    rng: StdRng,
    servers: usize,
}

impl Planner {
    /// A planner for a cluster of `servers` servers.
    pub fn new(seed: u64, servers: usize) -> Self {
        Planner {
            rng: StdRng::seed_from_u64(seed),
            servers,
        }
    }

    /// The next fault and how long it holds, given the faults active now; `None` when every
    /// pick would break a rule (too many faults, or no free target).
    pub fn next(&mut self, active: &[Fault], busy: &[Proc]) -> Option<(Fault, Duration)> {
        if active.len() >= MAX_CONCURRENT {
            return None;
        }
        let total: u32 = KINDS.iter().map(|(_, weight)| weight).sum();
        for _ in 0..32 {
            let mut pick = self.rng.random_range(0..total);
            let kind = KINDS
                .iter()
                .find(|(_, weight)| {
                    if pick < *weight {
                        true
                    } else {
                        pick -= weight;
                        false
                    }
                })
                .map_or(Kind::KillServer, |(kind, _)| *kind);
            let fault = self.fault_of(kind);
            let taken = active.iter().map(Fault::target).chain(busy.iter().copied());
            let conflict = taken.clone().any(|proc| proc == fault.target())
                || (fault.hits_a_backend() && active.iter().any(Fault::hits_a_backend));
            if !conflict {
                let hold = self.hold(kind);
                return Some((fault, hold));
            }
        }
        None
    }

    /// The quiet time after the faults cleared before the next one starts.
    pub fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(2_000..6_000))
    }

    /// Whether the next fault overlaps the one just started, and if so how soon it starts.
    pub fn overlap(&mut self) -> Option<Duration> {
        self.rng
            .random_bool(0.3)
            .then(|| Duration::from_millis(self.rng.random_range(500..3_000)))
    }

    fn fault_of(&mut self, kind: Kind) -> Fault {
        let server = self.rng.random_range(0..self.servers);
        match kind {
            Kind::KillServer => Fault::KillServer { server },
            Kind::StopServer => Fault::StopServer { server },
            Kind::KillRoute => Fault::KillRoute,
            Kind::StopRoute => Fault::StopRoute,
            Kind::StopRedis => Fault::StopRedis,
            Kind::StopPostgres => Fault::StopPostgres,
            Kind::RestartRedis => Fault::RestartRedis,
            Kind::RestartPostgres => Fault::RestartPostgres,
            Kind::KillRedis => Fault::KillRedis,
            Kind::KillPostgres => Fault::KillPostgres,
            Kind::PartitionBackends => {
                let (redis, postgres) = match self.rng.random_range(0..3) {
                    0 => (true, false),
                    1 => (false, true),
                    _ => (true, true),
                };
                Fault::PartitionBackends {
                    server,
                    redis,
                    postgres,
                }
            }
            Kind::Loss => Fault::Loss {
                server,
                percent: self.rng.random_range(10..=30),
            },
            Kind::Throttle => Fault::Throttle {
                server,
                kbit: [64, 128, 256, 512][self.rng.random_range(0..4)],
                latency_ms: self.rng.random_range(200..=1_000),
            },
            Kind::Isolate => Fault::Isolate { server },
        }
    }

    fn hold(&mut self, kind: Kind) -> Duration {
        let (low, high) = match kind {
            Kind::KillServer => (1_000, 6_000),
            Kind::StopServer => (2_000, 8_000),
            Kind::KillRoute => (1_000, 4_000),
            Kind::StopRoute => (2_000, 6_000),
            Kind::StopRedis | Kind::StopPostgres => (1_000, 5_000),
            Kind::RestartRedis | Kind::RestartPostgres => (0, 1),
            Kind::KillRedis | Kind::KillPostgres => (1_000, 3_000),
            Kind::PartitionBackends => (2_000, 10_000),
            Kind::Loss | Kind::Throttle => (5_000, 15_000),
            Kind::Isolate => (2_000, 8_000),
        };
        Duration::from_millis(self.rng.random_range(low..high))
    }
}

/// One fault as it happened, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    /// Its number in the run (1-based).
    pub id: usize,
    /// What it was.
    pub fault: Fault,
    /// `fault` in words.
    pub description: String,
    /// When it was applied (ms since the start).
    pub start_ms: u64,
    /// When it was undone and its target was ready again (ms since the start).
    pub end_ms: Option<u64>,
    /// How long it was meant to hold.
    pub planned_hold_ms: u64,
    /// What happened along the way (restart times, failures).
    pub notes: Vec<String>,
}

/// A process that exited (or failed to come back) without the soak asking it to.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// When it was noticed (ms since the start).
    pub t_ms: u64,
    /// Which process.
    pub process: String,
    /// What happened.
    pub what: String,
    /// The last lines of its log.
    pub log_tail: String,
}

#[derive(Debug)]
enum Phase {
    /// Applied; undone at `until`.
    Holding { until: Instant },
    /// Its process was started again; waiting for it to be ready.
    Restarting { since: Instant, attempts: u32 },
}

#[derive(Debug)]
struct Active {
    record: usize,
    fault: Fault,
    phase: Phase,
}

/// A process the injector restarts because it exited by itself.
#[derive(Debug)]
struct Recovery {
    which: Proc,
    since: Instant,
    attempts: u32,
}

/// How many times a process is started again before the harness gives up on it.
const MAX_START_ATTEMPTS: u32 = 6;

/// Applies the planner's faults to the cluster and undoes them on time.
#[derive(Debug)]
pub struct Injector {
    planner: Planner,
    active: Vec<Active>,
    recoveries: Vec<Recovery>,
    records: Vec<FaultRecord>,
    incidents: Vec<Incident>,
    /// When the next fault may start (`None`: when the active ones are over, plus a gap).
    next_start: Option<Instant>,
}

impl Injector {
    /// An injector with `planner`; the first fault comes after a first quiet gap.
    pub fn new(mut planner: Planner) -> Self {
        let first = Instant::now() + planner.gap();
        Injector {
            planner,
            active: Vec::new(),
            recoveries: Vec::new(),
            records: Vec::new(),
            incidents: Vec::new(),
            next_start: Some(first),
        }
    }

    /// The faults applied so far.
    pub fn records(&self) -> &[FaultRecord] {
        &self.records
    }

    /// Processes that exited by themselves, or could not be brought back.
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// What is active now, in words (for progress lines).
    pub fn active_now(&self) -> Vec<String> {
        self.active
            .iter()
            .map(|a| a.fault.to_string())
            .chain(
                self.recoveries
                    .iter()
                    .map(|r| format!("recovering {}", r.which)),
            )
            .collect()
    }

    /// One step: undo what is due, follow restarts, restart what died by itself, and (when
    /// `inject`) start the next fault if its time has come.
    pub fn tick(&mut self, cluster: &mut Cluster, inject: bool) {
        let now = Instant::now();
        self.follow_active(cluster, now);
        self.follow_recoveries(cluster);
        for (which, status, tail) in cluster.unexpected_exits() {
            let what = format!("exited by itself ({status}) at t={}ms", now_ms());
            progress(&format!("INCIDENT: {which} {what}; restarting it"));
            self.incidents.push(Incident {
                t_ms: now_ms(),
                process: which.to_string(),
                what,
                log_tail: tail,
            });
            self.recoveries.push(Recovery {
                which,
                since: now,
                attempts: 0,
            });
            self.start_again(cluster, which, 0);
        }
        if !inject {
            return;
        }
        if self.active.is_empty() && self.next_start.is_none() {
            self.next_start = Some(now + self.planner.gap());
        }
        if self.next_start.is_some_and(|at| now >= at) {
            let faults: Vec<Fault> = self.active.iter().map(|a| a.fault.clone()).collect();
            let busy: Vec<Proc> = self.recoveries.iter().map(|r| r.which).collect();
            match self.planner.next(&faults, &busy) {
                Some((fault, hold)) => {
                    self.apply(cluster, fault, hold);
                    self.next_start = match self.planner.overlap() {
                        Some(after) if self.active.len() < MAX_CONCURRENT => Some(now + after),
                        _ => None,
                    };
                }
                None => self.next_start = None,
            }
        }
    }

    /// Undoes every fault now and brings every process back; waits (bounded) until all are
    /// ready and no network rule is left. An error means the cluster could not be healed.
    pub fn heal_all(&mut self, cluster: &mut Cluster) -> Result<()> {
        for active in std::mem::take(&mut self.active) {
            let record = active.record;
            if matches!(active.phase, Phase::Holding { .. }) {
                self.note(record, "undone early: the fault phase ended".into());
                self.undo(cluster, &active.fault, record);
            }
            self.finish_later(record);
        }
        self.recoveries.clear();
        for which in cluster.all() {
            let process = cluster.process(which);
            match process.state() {
                State::Stopped => {
                    let _ = process.signal(Signal::SIGCONT);
                }
                State::Down => {
                    let _ = process.spawn();
                }
                State::Starting | State::Running => {}
            }
        }
        for n in 0..cluster.server_count() {
            cluster.network().heal(n)?;
        }
        for which in cluster.all() {
            let mut attempts = 0;
            loop {
                match cluster.process(which).wait_ready() {
                    Ok(()) => break,
                    Err(error) if attempts < MAX_START_ATTEMPTS => {
                        attempts += 1;
                        progress(&format!("heal: {which} is not ready ({error}); again"));
                        std::thread::sleep(Duration::from_secs(1));
                        cluster.process(which).spawn()?;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        for n in 0..cluster.server_count() {
            let rules = cluster.network().rules(n)?;
            if rules.lines().any(|line| !line.starts_with("-P ")) {
                return Err(SoakError::Command {
                    command: format!("iptables -S in {}", cluster.network().node(n).netns),
                    detail: format!("rules left after healing:\n{rules}"),
                });
            }
        }
        let end = now_ms();
        for record in &mut self.records {
            if record.end_ms.is_none() {
                record.end_ms = Some(end);
            }
        }
        Ok(())
    }

    fn apply(&mut self, cluster: &mut Cluster, fault: Fault, hold: Duration) {
        let record = self.records.len();
        self.records.push(FaultRecord {
            id: record + 1,
            description: fault.to_string(),
            fault: fault.clone(),
            start_ms: now_ms(),
            end_ms: None,
            planned_hold_ms: u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
            notes: Vec::new(),
        });
        progress(&format!(
            "fault #{} start: {fault} (hold {:.1}s)",
            record + 1,
            hold.as_secs_f64()
        ));
        let target = fault.target();
        let (redis_port, postgres_port) = cluster.backend_ports();
        let result = match &fault {
            Fault::KillServer { .. }
            | Fault::KillRoute
            | Fault::KillRedis
            | Fault::KillPostgres => {
                cluster.process(target).kill();
                Ok(())
            }
            Fault::StopServer { .. }
            | Fault::StopRoute
            | Fault::StopRedis
            | Fault::StopPostgres => cluster.process(target).signal(Signal::SIGSTOP),
            Fault::RestartRedis => {
                cluster
                    .process(target)
                    .shut_down(Signal::SIGTERM, Duration::from_secs(10));
                Ok(())
            }
            Fault::RestartPostgres => {
                cluster
                    .process(target)
                    .shut_down(Signal::SIGINT, Duration::from_secs(10));
                Ok(())
            }
            Fault::PartitionBackends {
                server,
                redis,
                postgres,
            } => {
                let mut ports = Vec::new();
                if *redis {
                    ports.push(redis_port);
                }
                if *postgres {
                    ports.push(postgres_port);
                }
                cluster.network().block_ports(*server, &ports)
            }
            Fault::Loss { server, percent } => cluster
                .network()
                .random_loss(*server, f64::from(*percent) / 100.0),
            Fault::Throttle {
                server,
                kbit,
                latency_ms,
            } => cluster.network().throttle(*server, *kbit, *latency_ms),
            Fault::Isolate { server } => cluster.network().set_link(*server, false),
        };
        if let Err(error) = result {
            self.note(record, format!("applying failed: {error}"));
        }
        let phase = match fault {
            Fault::RestartRedis | Fault::RestartPostgres => {
                self.start_again(cluster, target, record);
                Phase::Restarting {
                    since: Instant::now(),
                    attempts: 0,
                }
            }
            _ => Phase::Holding {
                until: Instant::now() + hold,
            },
        };
        self.active.push(Active {
            record,
            fault,
            phase,
        });
    }

    /// Ends holds that are due and follows restarts.
    fn follow_active(&mut self, cluster: &mut Cluster, now: Instant) {
        let mut still = Vec::new();
        for mut active in std::mem::take(&mut self.active) {
            let record = active.record;
            match &mut active.phase {
                Phase::Holding { until } if now >= *until => {
                    if self.undo(cluster, &active.fault, record) {
                        active.phase = Phase::Restarting {
                            since: now,
                            attempts: 0,
                        };
                        still.push(active);
                    } else {
                        self.finish(record, "undone".into());
                    }
                }
                Phase::Holding { .. } => still.push(active),
                Phase::Restarting { since, attempts } => {
                    let target = active.fault.target();
                    match cluster.process(target).poll_ready() {
                        Ok(true) => {
                            let took = since.elapsed().as_secs_f64();
                            self.finish(record, format!("{target} ready {took:.1}s after start"));
                        }
                        Ok(false) => still.push(active),
                        Err(error) => {
                            *attempts += 1;
                            self.note(record, format!("start attempt {attempts} failed: {error}"));
                            if *attempts >= MAX_START_ATTEMPTS {
                                self.incidents.push(Incident {
                                    t_ms: now_ms(),
                                    process: target.to_string(),
                                    what: format!(
                                        "could not be started again after fault #{}",
                                        record + 1
                                    ),
                                    log_tail: cluster.process(target).log_tail(),
                                });
                                self.finish(record, "gave up restarting".into());
                            } else {
                                self.start_again(cluster, target, record);
                                still.push(active);
                            }
                        }
                    }
                }
            }
        }
        self.active = still;
    }

    fn follow_recoveries(&mut self, cluster: &mut Cluster) {
        let mut still = Vec::new();
        for mut recovery in std::mem::take(&mut self.recoveries) {
            match cluster.process(recovery.which).poll_ready() {
                Ok(true) => progress(&format!(
                    "{} is back {:.1}s after its unexpected exit",
                    recovery.which,
                    recovery.since.elapsed().as_secs_f64()
                )),
                Ok(false) => still.push(recovery),
                Err(error) if recovery.attempts < MAX_START_ATTEMPTS => {
                    recovery.attempts += 1;
                    progress(&format!(
                        "{} failed to start again: {error}",
                        recovery.which
                    ));
                    if cluster.process(recovery.which).spawn().is_ok() {
                        still.push(recovery);
                    }
                }
                Err(error) => self.incidents.push(Incident {
                    t_ms: now_ms(),
                    process: recovery.which.to_string(),
                    what: format!("could not be started again: {error}"),
                    log_tail: cluster.process(recovery.which).log_tail(),
                }),
            }
        }
        self.recoveries = still;
    }

    /// Undoes `fault`; returns whether its process was started again (and must be followed).
    fn undo(&mut self, cluster: &mut Cluster, fault: &Fault, record: usize) -> bool {
        let target = fault.target();
        let result = match fault {
            Fault::KillServer { .. }
            | Fault::KillRoute
            | Fault::KillRedis
            | Fault::KillPostgres => {
                self.start_again(cluster, target, record);
                return true;
            }
            Fault::StopServer { .. }
            | Fault::StopRoute
            | Fault::StopRedis
            | Fault::StopPostgres => cluster.process(target).signal(Signal::SIGCONT),
            Fault::RestartRedis | Fault::RestartPostgres => Ok(()),
            Fault::PartitionBackends { server, .. }
            | Fault::Loss { server, .. }
            | Fault::Throttle { server, .. }
            | Fault::Isolate { server } => cluster.network().heal(*server),
        };
        if let Err(error) = result {
            self.note(record, format!("undoing failed: {error}"));
        }
        false
    }

    fn start_again(&mut self, cluster: &mut Cluster, which: Proc, record: usize) {
        if let Err(error) = cluster.process(which).spawn() {
            self.note(record, format!("starting {which} failed: {error}"));
        }
    }

    fn note(&mut self, record: usize, note: String) {
        if let Some(entry) = self.records.get_mut(record) {
            entry.notes.push(note);
        }
    }

    fn finish(&mut self, record: usize, note: String) {
        if let Some(entry) = self.records.get_mut(record) {
            entry.end_ms = Some(now_ms());
            progress(&format!(
                "fault #{} end: {} ({note})",
                entry.id, entry.description
            ));
            entry.notes.push(note);
        }
    }

    /// Marks a fault cut short by healing; its end is stamped when the heal completes.
    fn finish_later(&mut self, record: usize) {
        if let Some(entry) = self.records.get(record) {
            progress(&format!(
                "fault #{} end: {} (healed)",
                entry.id, entry.description
            ));
        }
    }
}

/// A progress line on stderr, stamped with the soak's clock.
pub fn progress(line: &str) {
    eprintln!("[{:>7.1}s] {line}", crate::history::elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, rounds: usize) -> Vec<Fault> {
        let mut planner = Planner::new(seed, 3);
        (0..rounds)
            .filter_map(|_| planner.next(&[], &[]).map(|(fault, _)| fault))
            .collect()
    }

    #[test]
    fn the_same_seed_plans_the_same_faults() {
        assert_eq!(plan(7, 50), plan(7, 50));
        assert_ne!(plan(7, 50), plan(8, 50));
    }

    #[test]
    fn every_kind_of_fault_is_planned_in_a_long_run() {
        let faults = plan(1, 2_000);
        let described: Vec<String> = faults.iter().map(ToString::to_string).collect();
        for expected in [
            "SIGKILL node-",
            "SIGSTOP node-",
            "SIGKILL route",
            "SIGSTOP route",
            "SIGSTOP redis",
            "SIGSTOP postgres",
            "restart redis",
            "restart postgres",
            "SIGKILL redis",
            "SIGKILL postgres",
            "partition node-",
            "% loss on node-",
            "throttle node-",
            "isolate node-",
        ] {
            assert!(
                described
                    .iter()
                    .any(|d| d.starts_with(expected) || d.contains(expected)),
                "{expected} never planned"
            );
        }
    }

    #[test]
    fn a_second_fault_never_hits_a_busy_target_or_a_second_backend() {
        let mut planner = Planner::new(3, 3);
        for _ in 0..500 {
            let Some((first, _)) = planner.next(&[], &[]) else {
                continue;
            };
            let Some((second, _)) = planner.next(std::slice::from_ref(&first), &[]) else {
                continue;
            };
            assert_ne!(first.target(), second.target(), "{first} and {second}");
            assert!(
                !(first.hits_a_backend() && second.hits_a_backend()),
                "{first} and {second} both hit a backend"
            );
            assert!(
                planner
                    .next(&[first.clone(), second.clone()], &[])
                    .is_none(),
                "a third fault while {first} and {second} are active"
            );
        }
    }

    #[test]
    fn a_recovering_process_gets_no_fault() {
        let mut planner = Planner::new(5, 1);
        for _ in 0..200 {
            if let Some((fault, _)) = planner.next(&[], &[Proc::Server(0)]) {
                assert_ne!(fault.target(), Proc::Server(0), "{fault}");
            }
        }
    }

    #[test]
    fn holds_stay_in_the_ranges_that_keep_the_cluster_degraded_not_dead() {
        let mut planner = Planner::new(11, 3);
        for _ in 0..1_000 {
            if let Some((fault, hold)) = planner.next(&[], &[]) {
                assert!(hold <= Duration::from_secs(15), "{fault} held {hold:?}");
                if let Fault::Loss { percent, .. } = fault {
                    assert!((10..=30).contains(&percent));
                }
            }
        }
    }
}
