//! Running the suite: as libtest tests (one named test per case) or into a [`Report`].

use std::any::Any;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use libtest_mimic::{Arguments, Trial};
use rand::Rng;

use crate::case::{Case, Harness, Subject};
use crate::report::{CaseResult, Outcome, Report};
use crate::suite::{CaseContext, Maker, Suite};
use crate::{account_store, load_balancer, message_store, meta_store, session_store};

/// How long one case may run before it fails as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

type Job = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A case bound to a backend, ready to run.
struct Planned {
    subject: String,
    case: &'static str,
    claimed: bool,
    job: Job,
}

/// A namespace no other run or case uses: `cimtest_<random>_<n>`.
fn fresh_namespace(run: &str, n: usize) -> String {
    format!("cimtest_{run}_{n}")
}

async fn plan_subject<T: ?Sized + Subject>(
    suite: &Suite,
    run: &str,
    label: String,
    maker: &Maker<T>,
    cases: Vec<Case<T>>,
    planned: &mut Vec<Planned>,
) {
    let probe_ctx = CaseContext {
        namespace: fresh_namespace(run, planned.len()),
        ttl: suite.ttl,
    };
    let caps = match maker(probe_ctx).await {
        Ok(store) => store.caps(),
        Err(e) => {
            let why = format!("the factory could not build a store: {e}");
            planned.push(Planned {
                subject: label,
                case: "factory_builds_a_store",
                claimed: true,
                job: Arc::new(move || {
                    let why = why.clone();
                    Box::pin(async move { panic!("{why}") })
                }),
            });
            return;
        }
    };
    for case in cases {
        let ctx = CaseContext {
            namespace: fresh_namespace(run, planned.len() + 1),
            ttl: suite.ttl,
        };
        let harness = Harness::new(ctx, maker.clone());
        let run_case = case.run;
        planned.push(Planned {
            subject: label.clone(),
            case: case.name,
            claimed: (case.requires)(&caps),
            job: Arc::new(move || run_case(harness.clone())),
        });
    }
}

async fn plan(suite: &Suite) -> Vec<Planned> {
    let run: String = {
        let mut rng = rand::rng();
        (0..8)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect()
    };
    let mut planned = Vec::new();
    if let Some(maker) = &suite.meta {
        let label = <dyn cim_core::MetaStore as Subject>::NAME.to_string();
        plan_subject(suite, &run, label, maker, meta_store::cases(), &mut planned).await;
    }
    if let Some(maker) = &suite.sessions {
        let label = <dyn cim_core::SessionStore as Subject>::NAME.to_string();
        plan_subject(
            suite,
            &run,
            label,
            maker,
            session_store::cases(),
            &mut planned,
        )
        .await;
    }
    if let Some(maker) = &suite.accounts {
        let label = <dyn cim_core::AccountStore as Subject>::NAME.to_string();
        plan_subject(
            suite,
            &run,
            label,
            maker,
            account_store::cases(),
            &mut planned,
        )
        .await;
    }
    if let Some(maker) = &suite.messages {
        let label = <dyn cim_core::MessageStore as Subject>::NAME.to_string();
        plan_subject(
            suite,
            &run,
            label,
            maker,
            message_store::cases(),
            &mut planned,
        )
        .await;
    }
    for (strategy, maker) in &suite.balancers {
        let label = format!(
            "{}[{strategy}]",
            <dyn cim_core::LoadBalancer as Subject>::NAME
        );
        plan_subject(
            suite,
            &run,
            label,
            maker,
            load_balancer::cases(),
            &mut planned,
        )
        .await;
    }
    planned
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text.to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "the case panicked".to_string()
    }
}

/// Turns a finished case task into an outcome.
fn outcome_of(result: Result<(), tokio::task::JoinError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Passed,
        Err(join_error) => match join_error.try_into_panic() {
            Ok(payload) => Outcome::Failed(panic_text(payload)),
            Err(e) => Outcome::Failed(format!("the case's task was cancelled: {e}")),
        },
    }
}

fn hung() -> Outcome {
    Outcome::Failed(format!(
        "the case did not finish within {} s (a hang)",
        CASE_TIMEOUT.as_secs()
    ))
}

/// Runs one case on the current runtime, in its own task so that a panic fails only the case.
async fn run_job(job: &Job) -> Outcome {
    match tokio::time::timeout(CASE_TIMEOUT, tokio::spawn(job())).await {
        Ok(result) => outcome_of(result),
        Err(_) => hung(),
    }
}

/// Runs one case on a runtime of its own, watched from this thread: a case that never yields
/// starves the runtime's timers, so the deadline is kept outside it.
fn run_job_blocking(job: &Job) -> Outcome {
    let rt = match case_runtime() {
        Ok(rt) => rt,
        Err(e) => return Outcome::Failed(format!("cannot start a runtime: {e}")),
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let task = rt.spawn(job());
    rt.spawn(async move {
        let _ = done_tx.send(task.await);
    });
    let outcome = match done_rx.recv_timeout(CASE_TIMEOUT) {
        Ok(result) => outcome_of(result),
        Err(_) => hung(),
    };
    // A hung case may have left a task spinning on a worker; dropping the runtime would wait
    // for it forever.
    rt.shutdown_background();
    outcome
}

fn case_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

impl Suite {
    /// Runs the suite as a test binary: one libtest test per case, named
    /// `<suite>::<trait>::<case>`, accepting the usual libtest arguments (filters,
    /// `--test-threads`, `--list`...). Cases the backend does not claim are listed as ignored,
    /// marked `[not-claimed]`. Call it from the `main` of a `harness = false` test target; to run
    /// several suites in one binary, use [`run_as_tests`](crate::run_as_tests).
    pub fn run_as_tests(self) -> ExitCode {
        run_as_tests([self])
    }

    /// Runs every claimed case, one at a time, on the current runtime and returns the report
    /// (how `cim conformance` prints its table).
    pub async fn run(self) -> Report {
        let planned = plan(&self).await;
        let mut report = Report {
            suite: self.name.clone(),
            results: Vec::with_capacity(planned.len()),
        };
        for p in planned {
            let outcome = if p.claimed {
                run_job(&p.job).await
            } else {
                Outcome::NotClaimed
            };
            report.results.push(CaseResult {
                subject: p.subject,
                case: p.case,
                outcome,
            });
        }
        report
    }
}

/// Runs several suites as one test binary (see [`Suite::run_as_tests`]).
pub fn run_as_tests(suites: impl IntoIterator<Item = Suite>) -> ExitCode {
    let args = Arguments::from_args();
    let rt = match case_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut trials = Vec::new();
    for suite in suites {
        let planned = rt.block_on(plan(&suite));
        trials.extend(planned.into_iter().map(|p| trial(&suite.name, p)));
    }
    drop(rt);
    libtest_mimic::run(&args, trials).exit_code()
}

fn trial(suite: &str, p: Planned) -> Trial {
    let name = format!("{suite}::{}::{}", p.subject, p.case);
    let claimed = p.claimed;
    let job = p.job;
    let trial = Trial::test(name, move || {
        if !claimed {
            return Err("not claimed by the backend's capabilities".into());
        }
        let outcome = run_job_blocking(&job);
        match outcome {
            Outcome::Passed => Ok(()),
            Outcome::Failed(why) => Err(why.into()),
            Outcome::NotClaimed => Err("not claimed".into()),
        }
    });
    if claimed {
        trial
    } else {
        trial.with_kind("not-claimed").with_ignored_flag(true)
    }
}
