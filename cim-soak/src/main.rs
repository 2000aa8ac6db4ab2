//! `cim-soak`: the fault-injection soak of cim (see README.md).
//!
//! `cim-soak run` starts a cluster of real processes (Redis, PostgreSQL, a route, three
//! servers, each server in its own network namespace), connects SDK clients that send and
//! record every acknowledgement, injects faults at random from a seed while they do, heals
//! everything, waits until every acknowledged message could have arrived, and checks the
//! history.
//!
//! The run has phases, and the main thread owns them: the cluster's processes are all spawned
//! from it (they die with it, see `process.rs`), and the fault loop runs on it, while the
//! clients run on the async runtime's worker threads. Teardown is ordered the one safe way:
//! clients closed, the runtime shut down, then the processes killed and the network removed.
//!
//! Exit status: 0 when the checker found nothing (or the soak was skipped outside CI), 1 for
//! violations (or a skip inside CI), 2 when the harness could not run, 130 when interrupted.

mod backends;
mod checker;
mod clients;
mod cluster;
mod error;
mod faults;
mod history;
mod network;
mod preflight;
mod process;
mod report;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio::runtime::Runtime;

use crate::clients::{Clients, Workload};
use crate::cluster::Cluster;
use crate::error::{Result, SoakError};
use crate::faults::{Injector, Planner, progress};
use crate::history::History;
use crate::report::Report;

/// Fault-injection soak of a cim cluster on real backends.
#[derive(Debug, Parser)]
#[command(name = "cim-soak", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the soak: cluster, clients, faults, heal, check; prints the report.
    Run(RunArgs),
}

/// Flags of `cim-soak run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// How long to inject faults (clients send meanwhile), e.g. 120s, 30m.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The seed of the fault schedule and the workload (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How many users.
    #[arg(long, default_value_t = 12)]
    clients: usize,
    /// How many cim servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// Messages per second, all users together.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// After healing, how long to wait for every acknowledged message to arrive.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    converge_timeout: Duration,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the whole history (one JSON object a line) to this file.
    #[arg(long)]
    history: Option<PathBuf>,
    /// The `cim` binary (default: `cim` next to this program).
    #[arg(long)]
    cim_bin: Option<PathBuf>,
    /// Keep the work directory (config, logs, data) even when the run passes. It is always
    /// kept when the run finds violations.
    #[arg(long)]
    keep: bool,
    /// Where the work directory is created (default: the system's temporary directory).
    #[arg(long)]
    work_root: Option<PathBuf>,
}

fn main() -> ExitCode {
    let Command::Run(args) = Cli::parse().command;
    history::start_clock();
    match run(&args) {
        Ok(report) => {
            if report.violations() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(SoakError::Prerequisite(why)) => skip(&why),
        Err(SoakError::Interrupted) => {
            eprintln!("cim-soak: interrupted; everything it started was removed");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("cim-soak: the harness could not run: {error}");
            ExitCode::from(2)
        }
    }
}

/// `SKIPPED: why` and success, or a failure inside CI.
fn skip(why: &str) -> ExitCode {
    if cim_backend_fixtures::in_ci() {
        eprintln!("cim-soak: FAILED: {why} (CI=true: the soak may not be skipped in CI)");
        ExitCode::from(1)
    } else {
        println!("SKIPPED: {why}");
        ExitCode::SUCCESS
    }
}

fn run(args: &RunArgs) -> Result<Report> {
    preflight::check()?;
    let cim = match &args.cim_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| SoakError::io("finding this program", e))?
            .with_file_name("cim"),
    };
    if !cim.is_file() {
        return Err(SoakError::Start {
            what: "cim".into(),
            reason: format!("no binary at {} (cargo build -p cim)", cim.display()),
            log: cim.clone(),
            tail: String::new(),
        });
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let work_root = args.work_root.clone().unwrap_or_else(std::env::temp_dir);
    for removed in network::clean_stale(&work_root) {
        progress(&format!("removed a dead soak's {removed}"));
    }
    progress(&format!(
        "cim-soak: seed {seed} (replay with --seed {seed}), {:?} of faults, {} clients, {} servers",
        args.duration, args.clients, args.servers
    ));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SoakError::io("starting the async runtime", e))?;
    let interrupted = watch_signals(&runtime)?;

    progress("starting redis, postgres, the servers and the route");
    let mut cluster = Cluster::start(&cim, args.servers, &work_root)?;
    progress(&format!(
        "cluster up: route {}, work directory {}",
        cluster.route_url(),
        cluster.dir().display()
    ));
    let outcome = soak(args, seed, &runtime, &mut cluster, &interrupted);
    // The runtime goes first: no client may still try to reach the cluster's addresses once
    // the network is removed.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let report = outcome?;
    if args.keep || report.violations() > 0 {
        cluster.keep_dir();
        progress(&format!(
            "work directory kept for inspection: {}",
            cluster.dir().display()
        ));
    }
    drop(cluster);
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        report.write_json(path)?;
    }
    Ok(report)
}

/// The phases after the cluster is up: clients, faults, heal, convergence, check.
fn soak(
    args: &RunArgs,
    seed: u64,
    runtime: &Runtime,
    cluster: &mut Cluster,
    interrupted: &AtomicBool,
) -> Result<Report> {
    let _entered = runtime.enter();
    let history = Arc::new(History::new());
    let mut clients = runtime.block_on(Clients::setup(
        cluster.route_url(),
        args.clients,
        seed,
        Arc::clone(&history),
    ))?;
    let setup = clients.setup_info().clone();
    for group in &setup.groups {
        let names: Vec<String> = group.members.iter().map(|id| setup.name(*id)).collect();
        progress(&format!(
            "{} (id {}): {}",
            group.name,
            group.id,
            names.join(" ")
        ));
    }
    let workload = Workload {
        rate: args.rate,
        seed,
    };
    clients.start_sending(&workload);

    // Faults.
    let mut injector = Injector::new(Planner::new(seed, cluster.server_count()));
    let fault_start = Instant::now();
    let mut last_progress = Instant::now();
    while fault_start.elapsed() < args.duration {
        if interrupted.load(Ordering::SeqCst) {
            runtime.block_on(clients.close());
            return Err(SoakError::Interrupted);
        }
        injector.tick(cluster, true);
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            report_progress(&history, &injector);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fault_seconds = fault_start.elapsed().as_secs_f64();

    // Heal, then let the sends in flight finish.
    let drained = clients.stop_sending(Duration::from_secs(30));
    progress("fault phase over: no new sends; healing everything");
    let heal_start = Instant::now();
    injector.heal_all(cluster)?;
    let heal_ms = millis(heal_start.elapsed());
    progress(&format!(
        "healed in {:.1}s: every process ready, no rule left",
        heal_start.elapsed().as_secs_f64()
    ));
    drive(runtime, cluster, &mut injector, interrupted, drained)?;
    let probe = clients.probe_round();
    let probe_failures = drive(runtime, cluster, &mut injector, interrupted, probe)?;
    progress(&format!(
        "post-heal probe: {} of {} acknowledged",
        setup.users.len() - probe_failures.len(),
        setup.users.len()
    ));

    // Convergence: every acknowledged message at every recipient, or the deadline.
    let converge_start = Instant::now();
    let mut outstanding = checker::outstanding(&history.snapshot(), &setup);
    let mut converged_after_ms = None;
    while converge_start.elapsed() < args.converge_timeout {
        if outstanding == 0 {
            converged_after_ms = Some(millis(heal_start.elapsed()));
            break;
        }
        if interrupted.load(Ordering::SeqCst) {
            runtime.block_on(clients.close());
            return Err(SoakError::Interrupted);
        }
        injector.tick(cluster, false);
        std::thread::sleep(Duration::from_millis(500));
        outstanding = checker::outstanding(&history.snapshot(), &setup);
    }
    if outstanding == 0 && converged_after_ms.is_none() {
        converged_after_ms = Some(millis(heal_start.elapsed()));
    }
    progress(&match converged_after_ms {
        Some(ms) => format!("converged: everything acknowledged arrived ({ms}ms after the heal)"),
        None => format!("convergence deadline passed with {outstanding} deliveries outstanding"),
    });
    // A last look for processes that died while the clients converged, and at where the
    // cluster thinks everyone is.
    injector.tick(cluster, false);
    let presence = drive(
        runtime,
        cluster,
        &mut injector,
        interrupted,
        clients.presence(),
    )?;
    for p in presence.iter().filter(|p| p.disagrees()) {
        progress(&format!(
            "presence: {} is {} but the session store says {}",
            p.user, p.client, p.session_store
        ));
    }
    runtime.block_on(clients.close());

    let entries = history.snapshot();
    if let Some(path) = &args.history {
        history::write_jsonl(path, &entries)?;
    }
    let findings = checker::check(&entries, &setup, injector.records());
    Ok(Report {
        seed,
        fault_seconds,
        clients: args.clients,
        servers: args.servers,
        rate: args.rate,
        faults: injector.records().to_vec(),
        incidents: injector.incidents().to_vec(),
        heal_ms,
        converged_after_ms,
        outstanding_at_end: outstanding,
        probe_failures,
        presence_at_end: presence,
        setup,
        findings,
    })
}

/// Runs `work` on the runtime while the main thread keeps ticking the injector (no new
/// faults: only restarts of processes that died by themselves).
fn drive<T: Send + 'static>(
    runtime: &Runtime,
    cluster: &mut Cluster,
    injector: &mut Injector,
    interrupted: &AtomicBool,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    let handle = runtime.spawn(work);
    while !handle.is_finished() {
        if interrupted.load(Ordering::SeqCst) {
            handle.abort();
            return Err(SoakError::Interrupted);
        }
        injector.tick(cluster, false);
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime
        .block_on(handle)
        .map_err(|e| SoakError::Clients(format!("a client task failed: {e}")))
}

/// Sets a flag on Ctrl-C or SIGTERM (the soak then tears down in order instead of dying).
fn watch_signals(runtime: &Runtime) -> Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let flag = Arc::new(AtomicBool::new(false));
    // Registered here, before anything is started, not when a task first runs.
    let registered = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut interrupt, mut terminate) =
        registered.map_err(|e| SoakError::io("installing the signal handlers", e))?;
    let set = Arc::clone(&flag);
    runtime.spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        progress("signal received: stopping, then removing everything");
        set.store(true, Ordering::SeqCst);
    });
    Ok(flag)
}

/// A progress line with the clients' counts and the active faults.
fn report_progress(history: &History, injector: &Injector) {
    let counts = clients::counts(&history.snapshot());
    let get = |key| counts.get(key).copied().unwrap_or(0);
    let active = injector.active_now();
    progress(&format!(
        "sent {} acked {} failed {} received {} reconnects {} | faults so far {} | active: {}",
        get("sent"),
        get("acked"),
        get("failed"),
        get("received"),
        get("reconnects"),
        injector.records().len(),
        if active.is_empty() {
            "none".into()
        } else {
            active.join(", ")
        }
    ));
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
