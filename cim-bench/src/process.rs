//! The processes the bench starts and measures: spawning pinned to a core, waiting for
//! readiness, reading CPU time and resident memory from `/proc`, and killing on drop.
//!
//! Every system under test runs as a child process so that its CPU time and memory can be read
//! from `/proc/<pid>` without counting the load generator. A [`Proc`] kills its process when
//! dropped, so an error, a panic or Ctrl-C (which drops the run) never leaves a server behind.
//! Pinning uses the `taskset` program rather than `sched_setaffinity` (the workspace forbids
//! `unsafe`): the generator pins itself at start, before any thread exists, and children are
//! started under `taskset -c <cpu>` or re-pinned with `taskset -a -p`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where the bench pins what, or nothing when the machine has one core or no `taskset`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pinning {
    /// The CPU list the systems under test run on (`taskset -c`), if pinned.
    pub server_cpus: Option<String>,
    /// The CPU list the load generator runs on, if pinned.
    pub generator_cpus: Option<String>,
    /// Every CPU this process may use, for setup phases that are not measured.
    pub all_cpus: Option<String>,
}

impl Pinning {
    /// Server on the first allowed CPU, generator on the second; none if fewer than two CPUs
    /// or no `taskset`.
    pub fn detect(enabled: bool) -> Pinning {
        let none = Pinning {
            server_cpus: None,
            generator_cpus: None,
            all_cpus: None,
        };
        if !enabled || find_program("taskset").is_none() {
            return none;
        }
        let cpus = allowed_cpus();
        if cpus.len() < 2 {
            return none;
        }
        let list = cpus
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Pinning {
            server_cpus: Some(cpus[0].to_string()),
            generator_cpus: Some(cpus[1].to_string()),
            all_cpus: Some(list),
        }
    }

    /// Pins this process (all its threads) to the generator's CPU. Call it before the async
    /// runtime starts, so every thread created later inherits the affinity.
    pub fn pin_generator(&self) -> Result<()> {
        match &self.generator_cpus {
            Some(cpus) => pin_pid(std::process::id(), cpus),
            None => Ok(()),
        }
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`).
fn allowed_cpus() -> Vec<u32> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((low, high)) => {
                if let (Ok(low), Ok(high)) = (low.parse::<u32>(), high.parse::<u32>()) {
                    cpus.extend(low..=high);
                }
            }
            None => {
                if let Ok(cpu) = part.parse() {
                    cpus.push(cpu);
                }
            }
        }
    }
    cpus
}

/// `taskset -a -p -c <cpus> <pid>`: every thread of `pid` onto `cpus`.
pub fn pin_pid(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset -a -p -c {cpus} {pid} failed ({status})");
    }
    Ok(())
}

/// The first executable called `name` on `PATH` or in the sbin directories packages install
/// daemons into.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Raises this process's soft open-files limit to its hard limit (with `prlimit`, which needs
/// no privilege for that) and returns the soft limit now in force. Children inherit it.
pub fn raise_open_files_limit() -> u64 {
    let (soft, hard) = open_files_limit();
    if soft < hard && find_program("prlimit").is_some() {
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    open_files_limit().0
}

/// The (soft, hard) open-files limit of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> (u64, u64) {
    let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let parse = |word: Option<&str>| match word {
        Some("unlimited") => u64::MAX,
        Some(word) => word.parse().unwrap_or(1024),
        None => 1024,
    };
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .map(|line| {
            let mut words = line["Max open files".len()..].split_whitespace();
            (parse(words.next()), parse(words.next()))
        })
        .unwrap_or((1024, 1024))
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 if unknown).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks: &u64| *ticks > 0)
            .unwrap_or(100)
    })
}

/// Per-thread CPU time of some processes at one moment, from `/proc/<pid>/task/*/schedstat`
/// (on-CPU nanoseconds: the same user + system time as `/proc/<pid>/stat`, without its
/// 10 ms ticks, which would make short phases meaningless).
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    threads: std::collections::HashMap<(u32, u32), u64>,
}

impl CpuSnapshot {
    /// Reads every thread of `pids` now (a process that is gone counts nothing).
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        let mut threads = std::collections::HashMap::new();
        for pid in pids {
            let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Some(tid) = task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse::<u32>().ok())
                else {
                    continue;
                };
                let ns = fs::read_to_string(task.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()));
                if let Some(ns) = ns {
                    threads.insert((*pid, tid), ns);
                }
            }
        }
        CpuSnapshot { threads }
    }

    /// CPU time used between `earlier` and this snapshot: threads born since count from zero;
    /// threads that ended meanwhile are lost (worker threads live as long as their process).
    pub fn since(&self, earlier: &CpuSnapshot) -> Duration {
        let ns: u64 = self
            .threads
            .iter()
            .map(|(thread, now)| {
                now.saturating_sub(earlier.threads.get(thread).copied().unwrap_or(0))
            })
            .sum();
        Duration::from_nanos(ns)
    }
}

/// CPU time the whole machine spent busy so far, all CPUs together (`/proc/stat`: user, nice,
/// system, irq, softirq), to tell how much of it went to processes other than the bench's.
pub fn machine_busy() -> Result<Duration> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    Ok(Duration::from_micros(busy * 1_000_000 / clock_ticks()))
}

/// Resident memory (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .context("no VmRSS in /proc/<pid>/status")
}

/// A child process owned by the bench: killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

/// How to start a [`Proc`].
#[derive(Debug)]
pub struct Spawn<'a> {
    /// A short name for messages ("nats-server", "cim server node-1").
    pub name: String,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// `taskset -c` CPU list to start it on, if any.
    pub cpus: Option<String>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts the process described by `spawn`.
    pub fn spawn(spawn: Spawn<'_>) -> Result<Proc> {
        let mut command = match &spawn.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus]).arg(spawn.program);
                command
            }
            None => Command::new(spawn.program),
        };
        command.args(&spawn.args);
        for (key, value) in &spawn.env {
            command.env(key, value);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spawn.log)
            .with_context(|| format!("opening {}", spawn.log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", spawn.program.display()))?;
        // taskset execs the program in place: the pid is the program's.
        let pid = child.id();
        Ok(Proc {
            name: spawn.name,
            child: Some(child),
            pid,
            log: spawn.log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The short name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the log has a line containing `pattern` and returns that line; fails if the
    /// process exits or `timeout` passes first.
    pub async fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let started = Instant::now();
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|line| line.contains(pattern)) {
                return Ok(line.to_string());
            }
            self.check_alive(started, timeout, pattern)?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `ready` answers true; fails if the process exits or `timeout` passes.
    pub async fn wait_until<F, Fut>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            if ready().await {
                return Ok(());
            }
            self.check_alive(started, timeout, what)?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self, started: Instant, timeout: Duration, what: &str) -> Result<()> {
        let exited = match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(e.to_string()),
            None => Some("killed".to_string()),
        };
        if let Some(status) = exited {
            bail!(
                "{} exited ({status}) before {what:?}; its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        if started.elapsed() > timeout {
            bail!(
                "{} not ready after {timeout:?} (waiting for {what:?}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Pins every thread of the process to `cpus`.
    pub fn pin(&self, cpus: &str) -> Result<()> {
        pin_pid(self.pid, cpus)
    }

    /// Resident memory now, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid)
    }

    /// SIGKILL, then reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Exited already is fine: either way it is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `perf record` attached to processes for the duration of a measured phase (`--perf-dir`).
#[derive(Debug)]
pub struct Profiler {
    child: Option<Child>,
    output: PathBuf,
}

impl Profiler {
    /// Starts sampling `pids` (with call graphs) into `output`; `None` if `perf` is missing.
    /// `CIM_BENCH_PERF_ARGS` replaces `record -F 1999 -g` (for example `stat -e
    /// syscalls:sys_enter_writev` to count system calls instead).
    pub fn start(pids: &[u32], output: PathBuf) -> Option<Profiler> {
        let perf = find_program("perf")?;
        let pids = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mode: Vec<String> = std::env::var("CIM_BENCH_PERF_ARGS")
            .map(|args| args.split_whitespace().map(String::from).collect())
            .unwrap_or_else(|_| ["record", "-F", "1999", "-g"].map(String::from).to_vec());
        let child = Command::new(perf)
            .args(&mode)
            .args(["-p", &pids, "-o"])
            .arg(&output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Profiler {
            child: Some(child),
            output,
        })
    }

    /// Stops sampling (SIGINT, so perf writes its file) and returns the file.
    pub fn stop(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        self.output.clone()
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port free right now (another process could take it before it is used; the
/// systems that can are given port 0 and report the port they bound instead).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether something accepts TCP connections at `addr`.
pub async fn accepts(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).expect("rss") > 0);
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i * i));
        }
        assert!(x > 0);
        let before = CpuSnapshot::take(&[pid]);
        let mut y = 0u64;
        for i in 0..10_000_000u64 {
            y = std::hint::black_box(y.wrapping_add(i ^ x));
        }
        assert!(y > 0);
        assert!(CpuSnapshot::take(&[pid]).since(&before) > Duration::ZERO);
    }

    #[test]
    fn the_open_files_limit_is_read() {
        let (soft, hard) = open_files_limit();
        assert!(soft >= 1 && hard >= soft);
    }
}
