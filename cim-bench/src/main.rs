//! `cim-bench`: a load generator that measures cim against NATS, Mosquitto, Redis pub/sub and
//! a minimal TCP relay, with the same workloads on each (see README.md).
//!
//! `cim-bench run` starts every system itself as child processes (pinned to one core, the
//! generator to another), drives them over their real protocols, and prints a summary table
//! (or JSON with `--json`). `cim-bench relay` is the relay server it starts.

mod payload;
mod process;
mod progress;
mod relay;
mod report;
mod resp;
mod runner;
mod systems;
mod wire;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::process::Pinning;
use crate::progress::Progress;
use crate::runner::{RunConfig, Workload};
use crate::systems::{Env, SystemKind};
use crate::workloads::Sizes;

/// Measures cim against NATS, Mosquitto, Redis pub/sub and a plain TCP relay.
#[derive(Debug, Parser)]
#[command(name = "cim-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the workloads on the systems, several rounds, and prints the summary.
    Run(Box<RunArgs>),
    /// The one-hop relay server (started by `run`; not meant to be run by hand).
    #[command(hide = true)]
    Relay {
        /// Where to listen (port 0 picks one; the address is printed).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

/// Flags of `cim-bench run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// Systems to measure, comma-separated: cim, relay, nats, mosquitto, redis.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cim,relay,nats,mosquitto,redis"
    )]
    systems: Vec<String>,
    /// Workloads, comma-separated: w1 (one-to-one), w2 (fan-out), w3 (login storm), w4 (idle
    /// memory), w5 (latency), w6 (failover).
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4,w5,w6")]
    workloads: Vec<String>,
    /// Rounds (the systems run back to back in each, in rotating order).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Multiplies the counts (messages, deliveries, clients, connections, W5's
    /// duration).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Tiny sizes, one round: finishes in seconds (CI).
    #[arg(long)]
    smoke: bool,
    /// Prints one JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also writes the JSON document to this file (the table still goes to stdout).
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
    /// The `cim` binary (default: `cim` next to this executable; build both with
    /// `cargo build --release -p cim -p cim-bench`).
    #[arg(long, env = "CIM_BENCH_CIM_BIN")]
    cim_bin: Option<PathBuf>,
    /// Where the account vault (a Redis database file) is kept between runs (default:
    /// `cim-bench-cache` in the target directory).
    #[arg(long, env = "CIM_BENCH_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// W3: clients (overrides the scaled 10,000).
    #[arg(long)]
    w3_clients: Option<usize>,
    /// W3: logins in flight (overrides 200).
    #[arg(long)]
    w3_in_flight: Option<usize>,
    /// W4: connection counts, comma-separated (overrides the scaled 10,000 and 100,000).
    #[arg(long, value_delimiter = ',')]
    w4_connections: Option<Vec<usize>>,
    /// W6: clients (overrides the scaled 3,000).
    #[arg(long)]
    w6_clients: Option<usize>,
    /// Does not pin the servers and the generator to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// Keeps the systems' configs and logs (their directory is printed).
    #[arg(long)]
    keep_logs: bool,
    /// Prints no progress, only the result.
    #[arg(long)]
    quiet: bool,
    /// Before each measured phase, waits up to this many seconds for other processes on the
    /// machine (builds...) to use less than a third of a core; 0 never waits.
    #[arg(long, default_value_t = 60)]
    max_quiet_wait: u64,
    /// Profiles the servers during every measured phase with `perf record -g` into this
    /// directory (`perf report -i FILE` to read one).
    #[arg(long)]
    perf_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Relay { listen } => relay_main(&listen),
        Command::Run(args) => run_main(*args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cim-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A runtime with one worker per CPU this process may use (one, when pinned).
fn runtime() -> Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn relay_main(listen: &str) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        println!("relay listening on {}", listener.local_addr()?);
        relay::serve(listener).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_main(args: RunArgs) -> Result<ExitCode> {
    let mut systems = Vec::new();
    for name in &args.systems {
        let kind = SystemKind::parse(name).with_context(|| {
            format!(
                "unknown system {name:?}; the systems are: {}",
                SystemKind::ALL.map(SystemKind::name).join(", ")
            )
        })?;
        if !systems.contains(&kind) {
            systems.push(kind);
        }
    }
    let mut workloads = Vec::new();
    for name in &args.workloads {
        let workload = Workload::parse(name)
            .with_context(|| format!("unknown workload {name:?}; the workloads are w1 to w6"))?;
        if !workloads.contains(&workload) {
            workloads.push(workload);
        }
    }
    if args.rounds == 0 || args.scale.is_nan() || args.scale <= 0.0 {
        bail!("--rounds must be at least 1 and --scale above 0");
    }
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full(args.scale)
    };
    if let Some(clients) = args.w3_clients {
        sizes.w3_clients = clients.max(1);
    }
    if let Some(in_flight) = args.w3_in_flight {
        sizes.w3_in_flight = in_flight.max(1);
    }
    if let Some(connections) = &args.w4_connections {
        sizes.w4_connections = connections.iter().map(|n| (*n).max(1)).collect();
    }
    if let Some(clients) = args.w6_clients {
        sizes.w6_clients = clients.max(3);
    }
    let rounds = if args.smoke { 1 } else { args.rounds };

    let exe = std::env::current_exe().context("locating this executable")?;
    let exe_dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let cim_bin = args.cim_bin.clone().unwrap_or_else(|| exe_dir.join("cim"));
    if systems.iter().any(|kind| kind.is_cim()) && !cim_bin.is_file() {
        bail!(
            "the cim binary is not at {}; build it first (cargo build --release -p cim -p \
             cim-bench) or point --cim-bin at it",
            cim_bin.display()
        );
    }
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| {
        exe_dir
            .parent()
            .map_or_else(|| exe_dir.clone(), std::path::Path::to_path_buf)
            .join("cim-bench-cache")
    });

    // Pin before the runtime exists, so every thread inherits the generator's core.
    let pinning = Pinning::detect(!args.no_pin);
    pinning.pin_generator()?;
    let open_files = process::raise_open_files_limit();

    let runtime = runtime()?;
    let started = SystemTime::now();
    let progress = Progress::new(args.quiet);
    let work_dir = tempfile::Builder::new().prefix("cim-bench-").tempdir()?;
    let config = RunConfig {
        systems: systems.clone(),
        workloads: workloads.clone(),
        rounds,
        sizes: sizes.clone(),
        case_timeout: Duration::from_secs(45 * 60),
    };
    let measurements = runtime.block_on(async {
        let env = Env {
            cim_bin: cim_bin.clone(),
            self_bin: exe.clone(),
            pinning: pinning.clone(),
            work_dir,
            cache_dir: cache_dir.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(256)
                .build()?,
            progress: progress.clone(),
            vault: tokio::sync::Mutex::new(None),
            ready_timeout: Duration::from_secs(30),
            perf_dir: args.perf_dir.clone(),
            max_quiet_wait: Duration::from_secs(if args.smoke { 0 } else { args.max_quiet_wait }),
            quiet_cores: 0.33,
        };
        if let Some(dir) = &env.perf_dir {
            std::fs::create_dir_all(dir)?;
        }
        if pinning.server_cpus.is_none() {
            progress.note("not pinned: fewer than 2 CPUs, no taskset, or --no-pin");
        } else {
            progress.note(&format!(
                "servers on CPU {}, generator on CPU {}; open files limit {open_files}",
                pinning.server_cpus.clone().unwrap_or_default(),
                pinning.generator_cpus.clone().unwrap_or_default()
            ));
        }
        let measurements = tokio::select! {
            results = runner::run(&env, &config) => Some(results),
            _ = tokio::signal::ctrl_c() => None,
        };
        if args.keep_logs {
            let kept = env.work_dir.keep();
            eprintln!("configs and logs kept in {}", kept.display());
        }
        Ok::<_, anyhow::Error>(measurements)
    })?;
    // Stop whatever is still running (tasks own no process: deployments are dropped above).
    runtime.shutdown_timeout(Duration::from_secs(2));
    let Some(measurements) = measurements else {
        eprintln!("cim-bench: interrupted; every system it started was stopped");
        return Ok(ExitCode::from(130));
    };
    let summary = report::summarize(&measurements);
    let finished = SystemTime::now();
    let failed = measurements.iter().any(|m| m.status == "failed");
    let document = serde_json::json!({
            "tool": "cim-bench",
            "version": env!("CARGO_PKG_VERSION"),
            "started_unix_ms": unix_ms(started),
            "finished_unix_ms": unix_ms(finished),
            "args": std::env::args().collect::<Vec<_>>(),
            "smoke": args.smoke,
            "rounds": rounds,
            "scale": args.scale,
            "systems": systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "workloads": workloads.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>(),
            "sizes": sizes,
            "machine": machine(&pinning),
            "runs": measurements,
            "summary": summary,
    });
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!(
            "cim-bench: {} round(s), {} system(s), {:.0} s; medians over rounds, ratios are \
             medians of within-round cim / system",
            rounds,
            systems.len(),
            finished
                .duration_since(started)
                .unwrap_or_default()
                .as_secs_f64()
        );
        println!();
        print!("{}", report::table(&summary));
        print_notes(&measurements);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Every distinct note, once, with the runs it came from.
fn print_notes(measurements: &[report::Measurement]) {
    let mut notes: Vec<(String, Vec<String>)> = Vec::new();
    for m in measurements {
        for note in &m.notes {
            let text = format!("{} {}: {note}", m.workload, m.case);
            let run = format!("{} r{}", m.system, m.round);
            match notes.iter_mut().find(|(t, _)| *t == text) {
                Some((_, runs)) => {
                    if !runs.contains(&run) {
                        runs.push(run);
                    }
                }
                None => notes.push((text, vec![run])),
            }
        }
    }
    if notes.is_empty() {
        return;
    }
    println!("\nnotes:");
    for (text, runs) in notes {
        println!("  {text} [{}]", runs.join(", "));
    }
}

fn unix_ms(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// What the JSON says about the machine.
fn machine(pinning: &Pinning) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    let (soft, hard) = process::open_files_limit();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "cpus": pinning.all_cpus.as_deref().map_or(1, |list| list.split(',').count()),
        "cpu_model": model,
        "pinning": pinning,
        "open_files_limit": [soft, hard],
        "loadavg_at_end": load.trim(),
    })
}
