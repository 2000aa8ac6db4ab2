//! Progress on stderr while a run goes: one line per phase with its count and rate, updated in
//! place at most every 500 ms on a terminal (every 5 s, one line each, otherwise), and a final
//! line when the phase ends. Results go to stdout; progress never mixes with them.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct Progress {
    terminal: bool,
    quiet: bool,
    prefix: Arc<std::sync::Mutex<String>>,
}

impl Progress {
    /// Progress on stderr; `quiet` prints only notes.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            quiet,
            prefix: Arc::new(std::sync::Mutex::new(String::new())),
        }
    }

    /// Sets what every line starts with (`[W1 cim round 1/3]`).
    pub fn set_prefix(&self, prefix: &str) {
        if let Ok(mut current) = self.prefix.lock() {
            *current = prefix.to_string();
        }
    }

    fn prefix(&self) -> String {
        self.prefix.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Prints a line.
    pub fn note(&self, text: &str) {
        eprintln!("{} {text}", self.prefix());
    }

    /// Starts a phase of `total` steps (0 if unknown) called `name`.
    pub fn phase(&self, name: &str, total: u64) -> Phase {
        let inner = Arc::new(PhaseInner {
            name: name.to_string(),
            prefix: self.prefix(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            finished: AtomicBool::new(false),
            terminal: self.terminal,
        });
        if !self.quiet {
            let weak = Arc::downgrade(&inner);
            let every = if self.terminal {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(5)
            };
            tokio::spawn(print_until_done(weak, every));
        }
        Phase {
            inner,
            quiet: self.quiet,
        }
    }
}

#[derive(Debug)]
struct PhaseInner {
    name: String,
    prefix: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    finished: AtomicBool,
    terminal: bool,
}

impl PhaseInner {
    fn line(&self) -> String {
        let done = self.done.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        let of = if self.total > 0 {
            format!("/{}", self.total)
        } else {
            String::new()
        };
        format!(
            "{} {}: {done}{of} in {elapsed:.1} s ({rate:.0}/s)",
            self.prefix, self.name
        )
    }
}

async fn print_until_done(phase: Weak<PhaseInner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(phase) = phase.upgrade() else {
            return;
        };
        if phase.finished.load(Ordering::Relaxed) {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        if phase.terminal {
            let _ = write!(stderr, "\r\x1b[2K{}", phase.line());
        } else {
            let _ = writeln!(stderr, "{}", phase.line());
        }
        let _ = stderr.flush();
    }
}

/// A phase in progress; cheap to clone and share between tasks.
#[derive(Debug, Clone)]
pub struct Phase {
    inner: Arc<PhaseInner>,
    quiet: bool,
}

impl Phase {
    /// Counts `n` more steps done.
    pub fn add(&self, n: u64) {
        self.inner.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Steps done so far.
    pub fn done(&self) -> u64 {
        self.inner.done.load(Ordering::Relaxed)
    }

    /// Ends the phase with a final line.
    pub fn finish(&self) {
        if self.inner.finished.swap(true, Ordering::Relaxed) || self.quiet {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        if self.inner.terminal {
            let _ = write!(stderr, "\r\x1b[2K");
        }
        let _ = writeln!(stderr, "{}", self.inner.line());
    }
}
