//! [`Report`]: the outcome of a suite run, as a table.

use std::collections::BTreeMap;
use std::fmt;

/// How one case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// An assertion failed, the case panicked or timed out; the text says which and why.
    Failed(String),
    /// The backend's capabilities do not claim what the case tests, so it was not run.
    NotClaimed,
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The trait (or strategy) tested: `meta_store`, `load_balancer[round_robin]`...
    pub subject: String,
    /// The case's name.
    pub case: &'static str,
    /// How it ended.
    pub outcome: Outcome,
}

/// The results of a whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The suite's name (the backend tested).
    pub suite: String,
    /// Every case, in the order run.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// True when no case failed.
    pub fn passed(&self) -> bool {
        !self
            .results
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    /// Counts per subject: (passed, failed, not claimed).
    pub fn counts(&self) -> BTreeMap<&str, (usize, usize, usize)> {
        let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for result in &self.results {
            let entry = counts.entry(result.subject.as_str()).or_default();
            match result.outcome {
                Outcome::Passed => entry.0 += 1,
                Outcome::Failed(_) => entry.1 += 1,
                Outcome::NotClaimed => entry.2 += 1,
            }
        }
        counts
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.counts();
        let width = counts.keys().map(|k| k.len()).max().unwrap_or(5).max(5);
        writeln!(f, "conformance of {}", self.suite)?;
        writeln!(
            f,
            "{:<width$}  {:>6}  {:>6}  {:>11}",
            "trait", "passed", "failed", "not claimed"
        )?;
        for (subject, (passed, failed, not_claimed)) in &counts {
            writeln!(
                f,
                "{subject:<width$}  {passed:>6}  {failed:>6}  {not_claimed:>11}"
            )?;
        }
        let failures: Vec<_> = self
            .results
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Failed(why) => Some((r, why)),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            writeln!(f, "\nfailed:")?;
            for (result, why) in failures {
                writeln!(f, "  {}::{}: {}", result.subject, result.case, why)?;
            }
        }
        Ok(())
    }
}
