//! Results: one [`Measurement`] per workload case, system and round; a summary with the median
//! per system, the median of the within-round ratios cim / system, and the targets;
//! printed as a table or as one JSON document.
//!
//! Why ratios within a round: the machine is shared and noisy, so the systems run back to back
//! in each round (in rotating order) and are compared with each other there; the median over
//! rounds of those ratios is steadier than a ratio of medians taken minutes apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

/// One system's result for one workload case in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// `W1` ... `W6`.
    pub workload: String,
    /// What exactly ran ("one-to-one, same server").
    pub case: String,
    /// The system's name.
    pub system: String,
    /// 1-based round.
    pub round: usize,
    /// `ok`, `skipped` or `failed`.
    pub status: String,
    /// Why skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The figures, by metric name (see [`METRICS`]).
    pub metrics: BTreeMap<String, f64>,
    /// What a reader should know (backends, limits hit).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Measurement {
    /// An empty successful measurement.
    pub fn new(workload: &str, case: &str, system: &str, round: usize) -> Measurement {
        Measurement {
            workload: workload.into(),
            case: case.into(),
            system: system.into(),
            round,
            status: "ok".into(),
            reason: None,
            metrics: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Sets a metric.
    pub fn set(&mut self, metric: &str, value: f64) -> &mut Self {
        self.metrics.insert(metric.to_string(), value);
        self
    }

    /// A metric's value.
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).copied()
    }
}

/// How a metric reads: its unit and whether more is better.
#[derive(Debug, Clone, Copy)]
pub struct MetricInfo {
    /// The metric's name in the results.
    pub name: &'static str,
    /// Its unit, for the table.
    pub unit: &'static str,
    /// Whether a higher value is better (for "best peer").
    pub higher_is_better: bool,
    /// Whether it appears in the summary table (the JSON has every metric).
    pub summary: bool,
}

/// Every metric the workloads report.
pub const METRICS: &[MetricInfo] = &[
    m("throughput", "msg/s", true, true),
    m("server_cpu_us_per_delivery", "µs", false, true),
    m("server_cpu_util", "cores", false, true),
    m("generator_cpu_util", "cores", false, true),
    m("foreign_cpu_util", "cores", false, true),
    m("deliveries", "", true, false),
    m("sent", "", true, false),
    m("lost", "", false, true),
    m("duplicates", "", false, true),
    m("errors", "", false, true),
    m("others_cpu_us_per_delivery", "µs", false, true),
    m("logins_per_s", "/s", true, true),
    m("logins_per_core_s", "/core·s", true, true),
    m("server_cpu_us_per_login", "µs", false, true),
    m("logins", "", true, false),
    m("failed", "", false, true),
    m("retried", "", false, true),
    m("connections", "", true, true),
    m("rss_per_connection", "B", false, true),
    m("rss_before", "B", false, false),
    m("rss_peak", "B", false, true),
    m("rss_after", "B", false, false),
    m("rate", "msg/s", true, true),
    m("p50_us", "µs", false, true),
    m("p99_us", "µs", false, true),
    m("p999_us", "µs", false, true),
    m("max_us", "µs", false, true),
    m("affected_users", "", false, true),
    m("reconnect_p50_ms", "ms", false, true),
    m("reconnect_p99_ms", "ms", false, true),
    m("reconnect_max_ms", "ms", false, true),
    m("not_reconnected", "", false, true),
    m("acked", "", true, true),
    m("lost_acked", "", false, true),
    m("unacked", "", false, true),
    m("undelivered_to_disconnected", "", false, true),
    m("route_died", "", false, true),
    m("route_rss_peak", "B", false, true),
];

const fn m(name: &'static str, unit: &'static str, higher: bool, summary: bool) -> MetricInfo {
    MetricInfo {
        name,
        unit,
        higher_is_better: higher,
        summary,
    }
}

fn info(metric: &str) -> Option<&'static MetricInfo> {
    METRICS.iter().find(|m| m.name == metric)
}

/// A target of the issue, checked on cim's figures.
#[derive(Debug, Clone, Copy)]
struct Target {
    workload: &'static str,
    /// The case's name; ending in `*`, a prefix of it.
    case: &'static str,
    metric: &'static str,
    rule: Rule,
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    /// cim's median ≤ the bound.
    AtMost(f64),
    /// cim's median ≥ the bound.
    AtLeast(f64),
    /// The median ratio cim / `system` ≥ the factor.
    RatioAtLeast(&'static str, f64),
    /// The median over rounds of cim / (best peer of the round) ≤ 1.
    NoWorseThanBestPeer,
}

const TARGETS: &[Target] = &[
    t(
        "W1",
        "one-to-one, same server",
        "throughput",
        Rule::RatioAtLeast("relay", 0.6),
    ),
    t(
        "W1",
        "one-to-one, same server",
        "server_cpu_us_per_delivery",
        Rule::AtMost(1.5),
    ),
    t(
        "W2",
        "group of 100",
        "server_cpu_us_per_delivery",
        Rule::AtMost(0.3),
    ),
    t(
        "W2",
        "group of 1000",
        "server_cpu_us_per_delivery",
        Rule::AtMost(0.7),
    ),
    t(
        "W3",
        "login storm",
        "logins_per_core_s",
        Rule::AtLeast(25_000.0),
    ),
    t(
        "W3",
        "login storm (resume tokens)",
        "logins_per_core_s",
        Rule::AtLeast(20_000.0),
    ),
    t(
        "W3",
        "login storm (app tokens, first logins)",
        "logins_per_core_s",
        Rule::AtLeast(20_000.0),
    ),
    t("W3", "login storm*", "failed", Rule::AtMost(0.0)),
    t("W3", "login storm*", "retried", Rule::AtMost(0.0)),
    t("W4", "idle*", "rss_per_connection", Rule::AtMost(2048.0)),
    t("W5", "*", "p99_us", Rule::NoWorseThanBestPeer),
    t("W6", "failover*", "reconnect_p99_ms", Rule::AtMost(5000.0)),
    t("W6", "failover*", "lost_acked", Rule::AtMost(0.0)),
];

const fn t(workload: &'static str, case: &'static str, metric: &'static str, rule: Rule) -> Target {
    Target {
        workload,
        case,
        metric,
        rule,
    }
}

/// Whether a target's `pattern` (exact, or a prefix ending in `*`) names `case`.
fn case_matches(pattern: &str, case: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => case.starts_with(prefix),
        None => case == pattern,
    }
}

/// The peers "best peer" compares with (the relay is the upper bound, not a peer).
const PEERS: [&str; 3] = ["nats", "mosquitto", "redis"];

/// One line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryRow {
    /// Workload.
    pub workload: String,
    /// Case.
    pub case: String,
    /// Metric.
    pub metric: String,
    /// Unit.
    pub unit: String,
    /// System.
    pub system: String,
    /// Median over the rounds that succeeded (`None`: none did).
    pub median: Option<f64>,
    /// Every round's value.
    pub values: Vec<f64>,
    /// Median over rounds of cim's value / this system's, in the same round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_cim_over_system: Option<f64>,
    /// The target, on cim's row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Whether cim meets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
    /// Skipped / failed reasons of this system in this case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The median of `values` (`None` if empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Builds the summary from every measurement.
pub fn summarize(runs: &[Measurement]) -> Vec<SummaryRow> {
    let mut cases: Vec<(String, String)> = Vec::new();
    for run in runs {
        let key = (run.workload.clone(), run.case.clone());
        if !cases.contains(&key) {
            cases.push(key);
        }
    }
    let mut rows = Vec::new();
    for (workload, case) in cases {
        let in_case: Vec<&Measurement> = runs
            .iter()
            .filter(|r| r.workload == workload && r.case == case)
            .collect();
        let mut systems: Vec<String> = Vec::new();
        for run in &in_case {
            if !systems.contains(&run.system) {
                systems.push(run.system.clone());
            }
        }
        systems.sort_by_key(|s| (s != "cim", s.clone()));
        let metrics: BTreeSet<&str> = in_case
            .iter()
            .flat_map(|r| r.metrics.keys().map(String::as_str))
            .collect();
        let ordered = METRICS
            .iter()
            .filter(|m| m.summary && metrics.contains(m.name));
        for metric in ordered {
            for system in &systems {
                rows.push(row(&workload, &case, metric, system, &in_case));
            }
        }
        // Systems that produced nothing at all: one line saying why.
        for system in &systems {
            let ok = in_case
                .iter()
                .any(|r| &r.system == system && r.status == "ok");
            if !ok && let Some(run) = in_case.iter().find(|r| &r.system == system) {
                rows.push(SummaryRow {
                    workload: workload.clone(),
                    case: case.clone(),
                    metric: "-".into(),
                    unit: String::new(),
                    system: system.clone(),
                    median: None,
                    values: Vec::new(),
                    ratio_cim_over_system: None,
                    target: None,
                    met: None,
                    status: Some(format!(
                        "{}: {}",
                        run.status,
                        run.reason.clone().unwrap_or_default()
                    )),
                });
            }
        }
    }
    rows
}

fn row(
    workload: &str,
    case: &str,
    metric: &MetricInfo,
    system: &str,
    runs: &[&Measurement],
) -> SummaryRow {
    let values_of = |system: &str| -> BTreeMap<usize, f64> {
        runs.iter()
            .filter(|r| r.system == system && r.status == "ok")
            .filter_map(|r| r.get(metric.name).map(|v| (r.round, v)))
            .collect()
    };
    let mine = values_of(system);
    let values: Vec<f64> = mine.values().copied().collect();
    let ratio = (system != "cim")
        .then(|| {
            let cim = values_of("cim");
            let ratios: Vec<f64> = mine
                .iter()
                .filter_map(|(round, v)| cim.get(round).map(|c| (c, v)))
                .filter(|(_, v)| **v != 0.0)
                .map(|(c, v)| c / v)
                .collect();
            median(&ratios)
        })
        .flatten();
    let mut target = None;
    let mut met = None;
    if system == "cim"
        && let Some(goal) = TARGETS.iter().find(|t| {
            t.workload == workload && case_matches(t.case, case) && t.metric == metric.name
        })
    {
        let cim_median = median(&values);
        let (text, ok) = match goal.rule {
            Rule::AtMost(bound) => (
                format!("≤ {}", format_value(bound, metric.unit)),
                cim_median.map(|v| v <= bound),
            ),
            Rule::AtLeast(bound) => (
                format!("≥ {}", format_value(bound, metric.unit)),
                cim_median.map(|v| v >= bound),
            ),
            Rule::RatioAtLeast(other, factor) => {
                let other_values = values_of(other);
                let ratios: Vec<f64> = mine
                    .iter()
                    .filter_map(|(round, v)| other_values.get(round).map(|o| v / o))
                    .collect();
                (
                    format!("≥ {factor}× {other}"),
                    median(&ratios).map(|r| r >= factor),
                )
            }
            Rule::NoWorseThanBestPeer => {
                let peer_values: Vec<BTreeMap<usize, f64>> =
                    PEERS.iter().map(|p| values_of(p)).collect();
                let ratios: Vec<f64> = mine
                    .iter()
                    .filter_map(|(round, v)| {
                        let best = peer_values
                            .iter()
                            .filter_map(|values| values.get(round).copied())
                            .reduce(|a, b| {
                                if metric.higher_is_better {
                                    a.max(b)
                                } else {
                                    a.min(b)
                                }
                            })?;
                        Some(v / best)
                    })
                    .collect();
                let ok = median(&ratios).map(|r| {
                    if metric.higher_is_better {
                        r >= 1.0
                    } else {
                        r <= 1.0
                    }
                });
                ("≤ best peer".to_string(), ok)
            }
        };
        target = Some(text);
        met = ok;
    }
    SummaryRow {
        workload: workload.into(),
        case: case.into(),
        metric: metric.name.into(),
        unit: metric.unit.into(),
        system: system.into(),
        median: median(&values),
        values,
        ratio_cim_over_system: ratio,
        target,
        met,
        status: None,
    }
}

/// A value with its unit, readable.
pub fn format_value(value: f64, unit: &str) -> String {
    let number = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else if value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    let number = group_thousands(&number);
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

fn group_thousands(number: &str) -> String {
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (number, None),
    };
    let (sign, digits) = match int.strip_prefix('-') {
        Some(digits) => ("-", digits),
        None => ("", int),
    };
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

/// The summary as a text table: one line per workload case and metric, one column per system
/// (a peer's cell also shows the median ratio cim / that peer), then cim's target. Systems that
/// did not run a case are listed below the table with the reason.
pub fn table(rows: &[SummaryRow]) -> String {
    let mut systems: Vec<String> = Vec::new();
    for row in rows {
        if !systems.contains(&row.system) {
            systems.push(row.system.clone());
        }
    }
    systems.sort_by_key(|s| (s != "cim", s != "relay", s.clone()));
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for row in rows.iter().filter(|r| r.status.is_none()) {
        let key = (row.workload.clone(), row.case.clone(), row.metric.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut header: Vec<String> = ["workload", "case", "metric"].map(String::from).to_vec();
    header.extend(systems.iter().cloned());
    header.extend(["cim target", "met"].map(String::from));
    let mut lines: Vec<Vec<String>> = Vec::new();
    for (workload, case, metric) in &keys {
        let mut line = vec![workload.clone(), case.clone(), metric.clone()];
        let mut target = (String::new(), String::new());
        for system in &systems {
            let row = rows.iter().find(|r| {
                r.status.is_none()
                    && &r.workload == workload
                    && &r.case == case
                    && &r.metric == metric
                    && &r.system == system
            });
            let cell = match row {
                None => String::new(),
                Some(row) => {
                    if let Some(goal) = &row.target {
                        target = (
                            goal.clone(),
                            match row.met {
                                Some(true) => "met".into(),
                                Some(false) => "MISSED".into(),
                                None => "?".into(),
                            },
                        );
                    }
                    let value = row
                        .median
                        .map(|v| format_value(v, &row.unit))
                        .unwrap_or_else(|| "-".into());
                    match row.ratio_cim_over_system {
                        Some(ratio) => format!("{value} [{ratio:.2}]"),
                        None => value,
                    }
                }
            };
            line.push(cell);
        }
        line.push(target.0);
        line.push(target.1);
        lines.push(line);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for line in &lines {
        for (i, cell) in line.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let numeric = |i: usize| i >= 3 && i < 3 + systems.len();
    let render = |out: &mut String, cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if numeric(i) {
                let _ = write!(text, "{pad}{cell}  ");
            } else {
                let _ = write!(text, "{cell}{pad}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let mut out = String::new();
    render(&mut out, &header);
    render(
        &mut out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    let mut previous: Option<(&String, &String)> = None;
    for (line, key) in lines.iter().zip(&keys) {
        if previous.is_some_and(|p| p != (&key.0, &key.1)) {
            out.push('\n');
        }
        previous = Some((&key.0, &key.1));
        render(&mut out, line);
    }
    out.push_str("\n[x]: median over rounds of cim / that system, measured in the same round\n");
    let not_run: Vec<&SummaryRow> = rows.iter().filter(|r| r.status.is_some()).collect();
    if !not_run.is_empty() {
        out.push_str("\nnot measured:\n");
        for row in not_run {
            let _ = writeln!(
                out,
                "  {} {} / {}: {}",
                row.workload,
                row.case,
                row.system,
                row.status
                    .clone()
                    .unwrap_or_default()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
    out
}

/// A metric's unit, for callers that format single values.
pub fn unit(metric: &str) -> &'static str {
    info(metric).map(|i| i.unit).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(system: &str, round: usize, throughput: f64) -> Measurement {
        let mut m = Measurement::new("W1", "one-to-one, same server", system, round);
        m.set("throughput", throughput);
        m
    }

    #[test]
    fn ratios_are_taken_within_rounds_then_the_median() {
        let runs = vec![
            run("cim", 1, 60.0),
            run("relay", 1, 100.0),
            run("cim", 2, 30.0),
            run("relay", 2, 40.0),
            run("cim", 3, 70.0),
            run("relay", 3, 100.0),
        ];
        let rows = summarize(&runs);
        let relay = rows
            .iter()
            .find(|r| r.system == "relay" && r.metric == "throughput")
            .expect("relay row");
        assert_eq!(relay.ratio_cim_over_system, Some(0.7));
        let cim = rows
            .iter()
            .find(|r| r.system == "cim" && r.metric == "throughput")
            .expect("cim row");
        assert_eq!(cim.median, Some(60.0));
        assert_eq!(cim.met, Some(true), "median ratio 0.7 ≥ 0.6");
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(1234567.0, "msg/s"), "1,234,567 msg/s");
        assert_eq!(format_value(0.25, "µs"), "0.250 µs");
        assert_eq!(format_value(0.0, ""), "0");
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
    }
}
