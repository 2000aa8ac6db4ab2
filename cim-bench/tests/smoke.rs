//! The smoke run CI does: `cim-bench run --smoke --systems cim,relay --json` against the debug
//! `cim` binary, checked for what must hold at any size: every workload ran on cim, every run
//! moved messages (or logged clients in), and nothing was lost.
//!
//! It needs the `cim` binary next to `cim-bench` (built here with `cargo build -p cim` when
//! missing) and `redis-server` (cim's large workloads and its cluster use a Redis; install it
//! with `apt-get install redis-server`). Without `redis-server` the test says so and passes,
//! except under CI (`CI` set), where it fails. A second run checks that core NATS, as two
//! servers joined by routes, carries W1 across servers (it needs `nats-server`, the same way).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The `cim` binary of the same build, built if missing.
fn cim_binary(bench: &Path) -> PathBuf {
    let dir = bench.parent().expect("the bench binary has a directory");
    let cim = dir.join("cim");
    if !cim.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "cim"]);
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "`cargo build -p cim` failed");
    }
    assert!(
        cim.is_file(),
        "the cim binary is not at {} (build it with `cargo build -p cim`)",
        cim.display()
    );
    cim
}

/// Whether `program` is on `PATH` or in `/usr/sbin`.
fn installed(program: &str) -> bool {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.iter().any(|dir| dir.join(program).is_file())
}

/// True when `program` is installed; else says why the test cannot run, and fails under CI.
fn requires(program: &str, package: &str) -> bool {
    if installed(program) {
        return true;
    }
    let why = format!("cim-bench's smoke test needs {program} (apt-get install {package})");
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    false
}

/// The runs of `cim-bench run --smoke --json --quiet` with `args`, none of them failed.
fn smoke_runs(args: &[&str]) -> (Vec<Value>, Value) {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_cim-bench"));
    let cim = cim_binary(&bench);
    let cache = tempfile::tempdir().expect("a cache directory");
    let output = Command::new(&bench)
        .args(["run", "--smoke", "--json", "--quiet"])
        .args(args)
        .arg("--cim-bin")
        .arg(&cim)
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("cim-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the output is one JSON document ({e}); stderr:\n{stderr}"));
    let runs = report["runs"].as_array().expect("runs").clone();
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| {
            format!(
                "{} {} / {}: {}",
                r["workload"], r["case"], r["system"], r["reason"]
            )
        })
        .collect();
    assert!(failed.is_empty(), "runs failed:\n{}", failed.join("\n"));
    (runs, report)
}

fn metric(run: &Value, name: &str) -> f64 {
    run["metrics"][name].as_f64().unwrap_or(f64::NAN)
}

#[test]
fn the_smoke_run_moves_messages_on_every_workload_and_loses_none() {
    if !requires("redis-server", "redis-server") {
        return;
    }
    let (runs, report) = smoke_runs(&["--systems", "cim,relay"]);
    for workload in ["W1", "W2", "W3", "W4", "W5", "W6"] {
        let ok: Vec<&Value> = runs
            .iter()
            .filter(|r| r["workload"] == workload && r["status"] == "ok")
            .collect();
        assert!(
            ok.iter().any(|r| r["system"] == "cim"),
            "{workload} ran on cim"
        );
        if workload != "W6" {
            assert!(
                ok.iter().any(|r| r["system"] == "relay"),
                "{workload} ran on the relay"
            );
        }
        for run in ok {
            let what = format!("{workload} {} / {}", run["case"], run["system"]);
            let count = match workload {
                "W3" => metric(run, "logins"),
                "W4" => metric(run, "connections"),
                _ => metric(run, "deliveries"),
            };
            assert!(count > 0.0, "{what}: nothing happened ({run})");
            assert_eq!(metric(run, "lost"), 0.0, "{what}: messages lost ({run})");
            if workload == "W6" {
                assert_eq!(
                    metric(run, "lost_acked"),
                    0.0,
                    "{what}: acknowledged messages lost"
                );
                assert_eq!(metric(run, "duplicates"), 0.0, "{what}: duplicates shown");
            }
        }
    }
    assert!(
        report["summary"]
            .as_array()
            .is_some_and(|rows| !rows.is_empty()),
        "the JSON has a summary"
    );
}

#[test]
fn the_smoke_run_carries_w1_across_a_nats_cluster_of_two_servers() {
    if !requires("nats-server", "nats-server") {
        return;
    }
    let (runs, _) = smoke_runs(&["--systems", "nats", "--workloads", "w1"]);
    let across = runs
        .iter()
        .find(|r| r["case"] == "one-to-one, across 2 servers" && r["system"] == "nats")
        .expect("W1 across 2 servers ran on nats");
    assert_eq!(across["status"], "ok", "{across}");
    assert!(
        metric(across, "deliveries") > 0.0,
        "nothing was delivered: {across}"
    );
    assert_eq!(metric(across, "lost"), 0.0, "messages lost: {across}");
}
