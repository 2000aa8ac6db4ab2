//! The workloads, written once for every system (generic over [`Wire`]), and what they share:
//! connecting many users, receiving (counting, checking order, timing), sending in a window of
//! messages in flight (closed loop) or at a fixed rate (open loop), and reading CPU time.
//!
//! A message is *in flight* from the moment it is written until its last recipient read it,
//! whatever the protocol acknowledges in between: the same definition for every system. Windows
//! are semaphores: a sender takes one permit per delivery it causes, a receiver gives one back
//! per message it reads.

pub mod w1;
pub mod w2;
pub mod w3;
pub mod w4;
pub mod w5;
pub mod w6;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::payload::{self, Clock, Header};
use crate::process;
use crate::progress::Phase;
use crate::report::Measurement;
use crate::systems::{Deployment, Env};
use crate::wire::{Conn, Counters, Decoder, Login, Target, Wire};

/// How big each workload is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sizes {
    /// Body size in bytes.
    pub body: usize,
    /// W1: senders.
    pub w1_senders: usize,
    /// W1: receivers.
    pub w1_receivers: usize,
    /// W1: messages in total.
    pub w1_messages: u64,
    /// W1: messages in flight per sender.
    pub w1_window: u32,
    /// W2: group sizes (receiving members).
    pub w2_groups: Vec<usize>,
    /// W2: deliveries per group size (at least).
    pub w2_deliveries: u64,
    /// W2: deliveries in flight.
    pub w2_window: u32,
    /// W3: clients logging in.
    pub w3_clients: usize,
    /// W3: logins in flight.
    pub w3_in_flight: usize,
    /// W4: idle connection counts.
    pub w4_connections: Vec<usize>,
    /// W5: how long each rate runs.
    pub w5_duration: Duration,
    /// W5: one-to-one rate (messages/s, all senders together).
    pub w5_one_to_one_rate: f64,
    /// W5: fan-out rate (messages/s).
    pub w5_fanout_rate: f64,
    /// W5: the fan-out group's size.
    pub w5_fanout_group: usize,
    /// W6: servers.
    pub w6_servers: usize,
    /// W6: clients.
    pub w6_clients: usize,
    /// W6: messages/s.
    pub w6_rate: f64,
    /// W6: traffic before the kill.
    pub w6_before_kill: Duration,
    /// W6: longest wait for reconnections after the kill.
    pub w6_after_kill: Duration,
    /// A closed-loop phase with no delivery for this long stops; the rest counts as lost.
    pub stall: Duration,
    /// W4: pause before reading memory (before and after the logins), so allocations settle.
    pub settle: Duration,
}

impl Sizes {
    /// The sizes, counts multiplied by `scale`.
    pub fn full(scale: f64) -> Sizes {
        let count = |n: f64| (n * scale).round().max(1.0);
        Sizes {
            body: 100,
            w1_senders: 4,
            w1_receivers: 100,
            w1_messages: count(100_000.0) as u64,
            w1_window: 256,
            w2_groups: vec![100, 1000],
            w2_deliveries: count(2_000_000.0) as u64,
            w2_window: 8192,
            w3_clients: count(10_000.0) as usize,
            w3_in_flight: 200,
            w4_connections: vec![count(10_000.0) as usize, count(100_000.0) as usize],
            w5_duration: Duration::from_secs_f64((10.0 * scale).clamp(1.0, 60.0)),
            w5_one_to_one_rate: 20_000.0,
            w5_fanout_rate: 500.0,
            w5_fanout_group: 100,
            w6_servers: 3,
            w6_clients: count(3_000.0) as usize,
            w6_rate: 1_000.0,
            w6_before_kill: Duration::from_secs(5),
            w6_after_kill: Duration::from_secs(60),
            stall: Duration::from_secs(10),
            settle: Duration::from_secs(2),
        }
    }

    /// Tiny sizes that finish in seconds (CI).
    pub fn smoke() -> Sizes {
        Sizes {
            body: 100,
            w1_senders: 4,
            w1_receivers: 20,
            w1_messages: 200,
            w1_window: 16,
            w2_groups: vec![10, 20],
            w2_deliveries: 2_000,
            w2_window: 200,
            w3_clients: 20,
            w3_in_flight: 10,
            w4_connections: vec![20, 40],
            w5_duration: Duration::from_secs(1),
            w5_one_to_one_rate: 1_000.0,
            w5_fanout_rate: 50.0,
            w5_fanout_group: 10,
            w6_servers: 3,
            w6_clients: 20,
            w6_rate: 50.0,
            w6_before_kill: Duration::from_secs(2),
            w6_after_kill: Duration::from_secs(15),
            stall: Duration::from_secs(5),
            settle: Duration::from_millis(300),
        }
    }
}

/// Everything a workload run needs besides the system.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The run's environment.
    pub env: &'a Env,
    /// Sizes.
    pub sizes: &'a Sizes,
    /// 1-based round.
    pub round: usize,
    /// The generator's clock.
    pub clock: Clock,
}

/// The source address for connection `i`: 127.0.0.1 for the first 25,000, then .2, .3...
/// (one source address has about 28,000 ephemeral ports per destination).
pub fn source_for(i: usize) -> Option<IpAddr> {
    let block = i / 25_000;
    (block > 0).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + block.min(250) as u8)))
}

/// Connects and logs in user `index` (subscribing to its own messages if asked, joining
/// `groups`), with a timeout.
pub async fn connect_user<W: Wire>(
    wire: &W,
    dep: &Deployment,
    index: usize,
    subscribe_self: bool,
    groups: &[u64],
) -> Result<Conn> {
    let user = &dep.users[index];
    let addr = dep.servers[user.server].addr;
    let login = async {
        let mut conn = Conn::connect(addr, source_for(index)).await?;
        wire.handshake(
            &mut conn,
            Login {
                address: user.address,
                token: user.token.as_deref(),
            },
            subscribe_self,
        )
        .await?;
        wire.join(&mut conn, groups).await?;
        Ok::<_, anyhow::Error>(conn)
    };
    tokio::time::timeout(Duration::from_secs(60), login)
        .await
        .context("logging in took over 60 s")?
        .with_context(|| format!("user {index} on {addr}"))
}

/// Connects `indices` (in order), `in_flight` at a time.
pub async fn connect_all<W: Wire>(
    env: &Env,
    wire: &W,
    dep: &Deployment,
    indices: &[usize],
    subscribe_self: bool,
    groups: &[u64],
    what: &str,
) -> Result<Vec<Conn>> {
    let phase = env.progress.phase(what, indices.len() as u64);
    let conns = futures::stream::iter(indices.iter().copied())
        .map(|i| {
            let phase = phase.clone();
            async move {
                let conn = connect_user(wire, dep, i, subscribe_self, groups).await?;
                phase.add(1);
                Ok::<_, anyhow::Error>(conn)
            }
        })
        .buffered(200)
        .try_collect()
        .await;
    phase.finish();
    conns
}

/// What receivers share with senders and the workload.
#[derive(Debug)]
pub struct Shared {
    /// The generator's clock (latency).
    pub clock: Clock,
    /// Messages read by every receiver together.
    pub delivered: AtomicU64,
    /// Per sender: its window (closed loop); empty for open loop.
    pub windows: Vec<Arc<Semaphore>>,
    /// Progress of the measured phase.
    pub phase: Phase,
    /// Whether to keep every latency sample.
    pub record_latency: bool,
}

/// What one receiver saw.
#[derive(Debug, Default)]
pub struct Received {
    /// Messages read.
    pub messages: u64,
    /// Messages at or below a sequence already seen from the same sender.
    pub duplicates: u64,
    /// Bodies that are not the bench's.
    pub foreign: u64,
    /// Latencies (ns), if recorded.
    pub latencies_ns: Vec<u64>,
    /// The decoder's counters.
    pub counters: Counters,
    /// Why it stopped early.
    pub error: Option<String>,
}

/// Reads messages until `stop`.
pub async fn receive<W: Wire>(
    wire: W,
    mut conn: Conn,
    shared: Arc<Shared>,
    senders: usize,
    mut stop: watch::Receiver<bool>,
) -> Received {
    let mut decoder = wire.decoder();
    let mut out = BytesMut::new();
    let mut result = Received::default();
    let mut last_seq: Vec<Option<u64>> = vec![None; senders];
    let mut returned: Vec<u32> = vec![0; senders];
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stop.borrow() {
            break;
        }
        let mut batch = 0u64;
        tokio::select! {
            read = conn.read_more() => {
                if let Err(e) = read {
                    result.error = Some(e.to_string());
                    break;
                }
                let now = shared.clock.now_ns();
                let decoded = decoder.decode(&mut conn.buf, &mut out, &mut |body| {
                    batch += 1;
                    match payload::decode(body) {
                        Some(Header { sender, seq, sent_ns }) => {
                            let sender = sender as usize;
                            if let Some(last) = last_seq.get_mut(sender) {
                                if last.is_some_and(|last| seq <= last) {
                                    result.duplicates += 1;
                                } else {
                                    *last = Some(seq);
                                }
                            }
                            if let Some(permits) = returned.get_mut(sender) {
                                *permits += 1;
                            }
                            if shared.record_latency {
                                result.latencies_ns.push(now.saturating_sub(sent_ns));
                            }
                        }
                        None => result.foreign += 1,
                    }
                });
                if let Err(e) = decoded {
                    result.error = Some(e.to_string());
                    break;
                }
            }
            _ = tick.tick() => decoder.tick(&mut out),
            _ = stop.changed() => {}
        }
        if batch > 0 {
            result.messages += batch;
            shared.delivered.fetch_add(batch, Ordering::Relaxed);
            shared.phase.add(batch);
            for (sender, permits) in returned.iter_mut().enumerate() {
                if *permits > 0 {
                    if let Some(window) = shared.windows.get(sender) {
                        window.add_permits(*permits as usize);
                    }
                    *permits = 0;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = conn.write_all(&out).await {
                result.error = Some(e.to_string());
                break;
            }
            out.clear();
        }
    }
    result.counters = decoder.counters();
    result
}

/// Reads and decodes a sender's incoming frames (acknowledgements, errors) until `stop`.
pub fn spawn_drain<W: Wire>(
    wire: &W,
    mut read: OwnedReadHalf,
    mut buf: BytesMut,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Counters> {
    let mut decoder = wire.decoder();
    tokio::spawn(async move {
        let mut out = BytesMut::new();
        loop {
            let _ = decoder.decode(&mut buf, &mut out, &mut |_| {});
            out.clear();
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            tokio::select! {
                read = read.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = stop.changed() => break,
            }
        }
        decoder.counters()
    })
}

/// What a sender did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Messages written.
    pub messages: u64,
    /// Acknowledgements and errors read back.
    pub counters: Counters,
    /// Open loop: the furthest behind schedule the sender got.
    pub max_lag: Duration,
    /// Why it stopped early.
    pub error: Option<String>,
}

/// Sends `count` messages from sender `me`, `cost` window permits each (the deliveries each
/// causes), `to(seq)` deciding the recipient.
#[allow(clippy::too_many_arguments)]
pub async fn send_closed<W: Wire>(
    wire: W,
    conn: Conn,
    me: u32,
    count: u64,
    cost: u32,
    window: Arc<Semaphore>,
    to: impl Fn(u64) -> Target,
    body_len: usize,
    clock: Clock,
    stop: watch::Receiver<bool>,
) -> Sent {
    let Conn { stream, buf } = conn;
    let (read, mut write) = stream.into_split();
    let drain = spawn_drain(&wire, read, buf, stop.clone());
    let mut sent = Sent::default();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut body = Vec::with_capacity(body_len);
    let mut seq = 0u64;
    while seq < count {
        if *stop.borrow() {
            break;
        }
        // Take what the window allows (at least one message), up to 64 messages per write.
        let available = (window.available_permits() as u64 / u64::from(cost.max(1))).clamp(1, 64);
        let n = available.min(count - seq);
        let permits = (n * u64::from(cost)) as u32;
        match window.acquire_many(permits).await {
            Ok(permit) => permit.forget(),
            Err(_) => break,
        }
        for _ in 0..n {
            let header = Header {
                sender: me,
                seq,
                sent_ns: clock.now_ns(),
            };
            payload::encode(&mut body, header, body_len);
            wire.encode_send(&mut out, me, to(seq), &body, seq + 1);
            seq += 1;
        }
        if let Err(e) = write.write_all(&out).await {
            sent.error = Some(e.to_string());
            break;
        }
        out.clear();
    }
    sent.messages = seq;
    // Keep the read half (and the connection) until the workload stops: acknowledgements and
    // errors still arrive.
    let mut stop = stop;
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    sent.counters = drain.await.unwrap_or_default();
    drop(write);
    sent
}

/// Sends at `rate` messages/s for `duration` from sender `me`.
#[allow(clippy::too_many_arguments)]
pub async fn send_open<W: Wire>(
    wire: W,
    conn: Conn,
    me: u32,
    rate: f64,
    duration: Duration,
    to: impl Fn(u64) -> Target,
    body_len: usize,
    clock: Clock,
    stop: watch::Receiver<bool>,
) -> Sent {
    let Conn { stream, buf } = conn;
    let (read, mut write) = stream.into_split();
    let drain = spawn_drain(&wire, read, buf, stop.clone());
    let mut sent = Sent::default();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut body = Vec::with_capacity(body_len);
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        if due > seq {
            let scheduled = start + interval.mul_f64(seq as f64);
            sent.max_lag = sent.max_lag.max(scheduled.elapsed());
        }
        while seq < due {
            // Stamped when written, so the timer's granularity (about 1 ms) is not counted as
            // latency; how far the sender fell behind its schedule is reported apart.
            let header = Header {
                sender: me,
                seq,
                sent_ns: clock.now_ns(),
            };
            payload::encode(&mut body, header, body_len);
            wire.encode_send(&mut out, me, to(seq), &body, seq + 1);
            seq += 1;
        }
        if !out.is_empty() {
            if let Err(e) = write.write_all(&out).await {
                sent.error = Some(e.to_string());
                break;
            }
            out.clear();
        }
        if seq < total {
            tokio::time::sleep_until((start + interval.mul_f64(seq as f64)).into()).await;
        }
    }
    sent.messages = seq;
    let mut stop = stop;
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    sent.counters = drain.await.unwrap_or_default();
    drop(write);
    sent
}

/// Waits until `delivered` reaches `expected`, or makes no progress for `stall`.
pub async fn wait_for_deliveries(shared: &Shared, expected: u64, stall: Duration) -> Instant {
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.delivered.load(Ordering::Relaxed);
        if now >= expected {
            return Instant::now();
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > stall {
            return last_change;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// CPU time of the servers and of the generator, read at the start of a measured phase (and
/// the servers' profile, with `--perf-dir`).
#[derive(Debug)]
pub struct CpuMark {
    at: Instant,
    server: process::CpuSnapshot,
    others: process::CpuSnapshot,
    generator: process::CpuSnapshot,
    machine: Duration,
    quiet_wait: Option<(Duration, f64)>,
    profiler: Option<process::Profiler>,
}

/// Every process of the bench: servers, others, the generator.
fn bench_pids(dep: &Deployment) -> Vec<u32> {
    let mut pids = dep.server_pids();
    pids.extend(dep.other_pids());
    pids.push(std::process::id());
    pids
}

/// Waits (up to `env.max_quiet_wait`) until processes outside the bench use less than
/// `env.quiet_cores` for a second; returns how long it waited and the last foreign load.
async fn wait_for_quiet(env: &Env, dep: &Deployment) -> Result<Option<(Duration, f64)>> {
    if env.max_quiet_wait.is_zero() {
        return Ok(None);
    }
    let started = Instant::now();
    let pids = bench_pids(dep);
    let mut noted = false;
    loop {
        let (machine, ours, at) = (
            process::machine_busy()?,
            process::CpuSnapshot::take(&pids),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let elapsed = at.elapsed().as_secs_f64();
        let foreign = (process::machine_busy()?.saturating_sub(machine))
            .saturating_sub(process::CpuSnapshot::take(&pids).since(&ours))
            .as_secs_f64()
            / elapsed;
        let waited = started.elapsed();
        if foreign < env.quiet_cores || waited >= env.max_quiet_wait {
            return Ok(
                (waited > Duration::from_secs(2) || foreign >= env.quiet_cores)
                    .then_some((waited, foreign)),
            );
        }
        if !noted {
            env.progress.note(&format!(
                "other processes use {foreign:.2} cores: waiting up to {:?} for a quieter machine",
                env.max_quiet_wait
            ));
            noted = true;
        }
    }
}

impl CpuMark {
    /// Waits for a quiet machine (see [`Env::max_quiet_wait`]), then reads the CPU times;
    /// starts profiling the servers if asked.
    pub async fn now(ctx: &Ctx<'_>, dep: &Deployment, label: &str) -> Result<CpuMark> {
        let quiet_wait = wait_for_quiet(ctx.env, dep).await?;
        let profiler = ctx.env.perf_dir.as_ref().and_then(|dir| {
            let name: String = format!("{}-{label}-r{}.perf.data", dep.kind.name(), ctx.round)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            process::Profiler::start(&dep.server_pids(), dir.join(name))
        });
        Ok(CpuMark {
            at: Instant::now(),
            server: process::CpuSnapshot::take(&dep.server_pids()),
            others: process::CpuSnapshot::take(&dep.other_pids()),
            generator: process::CpuSnapshot::take(&[std::process::id()]),
            machine: process::machine_busy()?,
            quiet_wait,
            profiler,
        })
    }

    /// Sets the CPU metrics of the phase from this mark to `end`: server CPU per `units`
    /// (µs, under `per_unit_metric`), and utilisations.
    pub fn record(
        self,
        dep: &Deployment,
        end: Instant,
        units: u64,
        per_unit_metric: &str,
        m: &mut Measurement,
    ) -> Result<()> {
        let server = process::CpuSnapshot::take(&dep.server_pids()).since(&self.server);
        let others = process::CpuSnapshot::take(&dep.other_pids()).since(&self.others);
        let generator = process::CpuSnapshot::take(&[std::process::id()]).since(&self.generator);
        let machine = process::machine_busy()?.saturating_sub(self.machine);
        let foreign = machine.saturating_sub(server + others + generator);
        if let Some((waited, load)) = self.quiet_wait {
            m.notes.push(format!(
                "waited {:.0} s for a quiet machine (other processes then used {load:.2} cores)",
                waited.as_secs_f64()
            ));
        }
        if let Some(profiler) = self.profiler {
            let file = profiler.stop();
            m.notes.push(format!("profile: {}", file.display()));
        }
        let elapsed = end
            .saturating_duration_since(self.at)
            .as_secs_f64()
            .max(1e-9);
        let units = units.max(1) as f64;
        m.set(per_unit_metric, server.as_secs_f64() * 1e6 / units);
        m.set("server_cpu_util", server.as_secs_f64() / elapsed);
        m.set("generator_cpu_util", generator.as_secs_f64() / elapsed);
        m.set("foreign_cpu_util", foreign.as_secs_f64() / elapsed);
        if !dep.others.is_empty() || !dep.shared_pids.is_empty() {
            m.set(
                "others_cpu_us_per_delivery",
                others.as_secs_f64() * 1e6 / units,
            );
        }
        Ok(())
    }
}

/// Samples the servers' total resident memory every 50 ms and keeps the highest.
#[derive(Debug)]
pub struct RssPeak {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl RssPeak {
    /// Starts sampling `pids`.
    pub fn start(pids: Vec<u32>) -> RssPeak {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                let total: u64 = pids
                    .iter()
                    .filter_map(|pid| process::rss_bytes(*pid).ok())
                    .sum();
                peak = peak.max(total);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopped.changed() => return peak,
                }
            }
        });
        RssPeak { stop, task }
    }

    /// The highest total seen.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or(0)
    }
}

/// A stop signal for a phase's tasks.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Sums what the receivers saw into `m` (and returns the latency samples).
pub fn record_received(received: &[Received], m: &mut Measurement) -> Vec<u64> {
    let messages: u64 = received.iter().map(|r| r.messages).sum();
    let duplicates: u64 = received.iter().map(|r| r.duplicates).sum();
    let errors: u64 = received.iter().map(|r| r.counters.errors).sum();
    m.set("deliveries", messages as f64);
    m.set("duplicates", duplicates as f64);
    if let Some(error) = received.iter().find_map(|r| r.error.clone()) {
        m.notes.push(format!("a receiver stopped: {error}"));
    }
    if let Some(error) = received.iter().find_map(|r| r.counters.last_error.clone()) {
        m.notes.push(format!("receiver error: {error}"));
    }
    let mut latencies = Vec::new();
    for r in received {
        latencies.extend_from_slice(&r.latencies_ns);
    }
    m.set("errors", errors as f64);
    latencies
}

/// Adds what the senders saw into `m`.
pub fn record_sent(sent: &[Sent], m: &mut Measurement) {
    let messages: u64 = sent.iter().map(|s| s.messages).sum();
    let errors: u64 = sent.iter().map(|s| s.counters.errors).sum();
    m.set("sent", messages as f64);
    let before = m.get("errors").unwrap_or(0.0);
    m.set("errors", before + errors as f64);
    if let Some(error) = sent.iter().find_map(|s| s.error.clone()) {
        m.notes.push(format!("a sender stopped: {error}"));
    }
    if let Some(error) = sent.iter().find_map(|s| s.counters.last_error.clone()) {
        m.notes.push(format!("sender got an error: {error}"));
    }
}

/// Percentile `p` (0..=100) of sorted `values`.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
