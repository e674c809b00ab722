//! One row per scenario, the verdict against the targets, the Markdown table
//! and the CSV.
//!
//! The targets: under every attack the victim's p99 stays under 100 ms and
//! under three times its baseline p99, the victim completes at least 99% of
//! its calls, and the server's peak resident memory stays under the baseline
//! scenario's peak plus 256 MiB.

use std::fmt::Write as _;

use super::victim::Outcome;
use super::{Plan, Scenario};

/// Largest victim p99 that passes, in milliseconds.
pub const MAX_P99_MS: f64 = 100.0;
/// Largest victim p99 that passes, as a multiple of the baseline's.
pub const MAX_P99_VS_BASELINE: f64 = 3.0;
/// Smallest share of the victim's calls that must complete.
pub const MIN_COMPLETED: f64 = 0.99;
/// Most the server's peak memory may exceed the baseline's, in KiB.
pub const MAX_EXTRA_RSS_KIB: u64 = 256 * 1024;

/// What one scenario found.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario.
    pub scenario: Scenario,
    /// What the victim went through.
    pub victim: Outcome,
    /// The server's resident memory once it listened, before the attack, in KiB.
    pub rss_before_kib: u64,
    /// The server's peak resident memory (`VmHWM`) at the end of the window, in KiB.
    pub rss_peak_kib: u64,
    /// The server's resident memory at the end of the window, attack still on, in KiB.
    pub rss_end_kib: u64,
    /// How the attacker ended.
    pub attacker: String,
}

/// A row held against the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The targets the row missed, in words; empty when it passed.
    pub missed: Vec<String>,
}

impl Verdict {
    /// Whether every target held.
    pub fn passed(&self) -> bool {
        self.missed.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.passed() {
            f.write_str("PASS")
        } else {
            write!(f, "FAIL: {}", self.missed.join("; "))
        }
    }
}

/// Holds `row` against the targets, using the `baseline` scenario's row
/// when there is one (else the row's own memory before the attack).
pub fn verdict(row: &Row, baseline: Option<&Row>) -> Verdict {
    let mut missed = Vec::new();
    let p99 = row.victim.latency_ms(0.99);
    if p99 >= MAX_P99_MS {
        missed.push(format!("p99 {} ≥ {MAX_P99_MS} ms", ms(p99)));
    }
    if let Some(base) = baseline.filter(|b| b.scenario != row.scenario) {
        let limit = base.victim.latency_ms(0.99) * MAX_P99_VS_BASELINE;
        if p99 >= limit {
            missed.push(format!("p99 {} ≥ {MAX_P99_VS_BASELINE}x baseline ({})", ms(p99), ms(limit)));
        }
    }
    let v = &row.victim;
    if (v.completed as f64) < v.expected as f64 * MIN_COMPLETED {
        missed.push(format!("{} of {} calls completed", v.completed, v.expected));
    }
    let base_rss = baseline.map_or(row.rss_before_kib, |b| b.rss_peak_kib);
    if row.rss_peak_kib >= base_rss + MAX_EXTRA_RSS_KIB {
        missed.push(format!("peak RSS +{} MiB over baseline", (row.rss_peak_kib - base_rss) / 1024));
    }
    Verdict { missed }
}

/// The baseline row, if the run had one.
fn baseline(rows: &[Row]) -> Option<&Row> {
    rows.iter().find(|r| r.scenario == Scenario::Baseline)
}

pub use crate::report::Meta;

/// The report: how it was run, the table, and each row's first error.
pub fn markdown(meta: &Meta, plan: &Plan, rows: &[Row]) -> String {
    let mut s = String::new();
    let server = &plan.server;
    let config = server.config();
    let _ = writeln!(s, "- Command: `{}`", meta.command);
    let _ = writeln!(
        s,
        "- Date: {}; machine: {} cores, shared by server, attacker and victim",
        meta.date, meta.cores
    );
    let _ =
        writeln!(s, "- Load average (1, 5, 15 min) before: {}; after: {}", meta.load_before, meta.load_after);
    let _ = writeln!(
        s,
        "- Server: `rpcbench abuse-server`, `server::Config::default()` with {} workers and {} heavy \
         workers, a fresh process per scenario; `Burn` declared heavy: {}.",
        config.workers,
        config.heavy_workers,
        if server.burn_heavy { "yes" } else { "no" }
    );
    let _ = writeln!(
        s,
        "- Victim: {} `Echo` calls/s over one `Channel`, {:.1} s warm-up then {:.1} s counted, {:.1} s \
         deadline. Latency from when each call was due to its answer or failure, failures included \
         (ms). Late start: the longest a call started after it was due, because the victim's own \
         thread was held up; it is part of the latency.",
        plan.rate,
        plan.warmup.as_secs_f64(),
        plan.measure.as_secs_f64(),
        plan.timeout.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "- Server memory (MiB): VmRSS before the attack, VmHWM (peak) and VmRSS at the end of the \
         window, attack still on."
    );
    let _ = writeln!(
        s,
        "- Targets: p99 < {MAX_P99_MS} ms and < {MAX_P99_VS_BASELINE}x the baseline's; ≥ {}% of calls \
         completed; peak RSS < baseline peak + {} MiB.",
        MIN_COMPLETED * 100.0,
        MAX_EXTRA_RSS_KIB / 1024
    );
    s.push_str(
        "\n| scenario | p50 ms | p99 ms | max ms | late start ms | calls ok / expected | errors | RSS before \
         | peak | end | attacker | verdict |\n|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---|\n",
    );
    let base = baseline(rows);
    for row in rows {
        let v = &row.victim;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
            label(row.scenario, plan),
            ms(v.latency_ms(0.5)),
            ms(v.latency_ms(0.99)),
            ms(v.max_ms()),
            ms(v.max_start_lag.as_secs_f64() * 1000.0),
            v.completed,
            v.expected,
            v.errors_summary(),
            mib(row.rss_before_kib),
            mib(row.rss_peak_kib),
            mib(row.rss_end_kib),
            row.attacker.replace('|', "/"),
            verdict(row, base)
        );
    }
    let failures: Vec<&Row> = rows.iter().filter(|r| r.victim.first_error.is_some()).collect();
    if !failures.is_empty() {
        s.push_str("\nFirst victim error per scenario:\n\n");
        for row in failures {
            let _ =
                writeln!(s, "- {}: {}", row.scenario, row.victim.first_error.as_deref().unwrap_or_default());
        }
    }
    s
}

/// The scenario's name in the table; the burst's says whether `Burn` was
/// declared heavy, since that decides where the burst waits.
fn label(scenario: Scenario, plan: &Plan) -> String {
    match scenario {
        Scenario::Burst if plan.server.burn_heavy => "burst (Burn heavy)".to_owned(),
        Scenario::Burst => "burst (Burn not heavy)".to_owned(),
        _ => scenario.name().to_owned(),
    }
}

/// One line per scenario, for spreadsheets.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "scenario,p50_ms,p99_ms,max_ms,completed,expected,errors,max_start_lag_ms,rss_before_kib,rss_peak_kib,\
         rss_end_kib,verdict,attacker\n",
    );
    let base = baseline(rows);
    for row in rows {
        let v = &row.victim;
        let _ = writeln!(
            s,
            "{},{:.3},{:.3},{:.3},{},{},{},{:.3},{},{},{},{},{}",
            row.scenario,
            v.latency_ms(0.5),
            v.latency_ms(0.99),
            v.max_ms(),
            v.completed,
            v.expected,
            v.error_count(),
            v.max_start_lag.as_secs_f64() * 1000.0,
            row.rss_before_kib,
            row.rss_peak_kib,
            row.rss_end_kib,
            quoted(&verdict(row, base).to_string()),
            quoted(&row.attacker)
        );
    }
    s
}

/// A CSV field in double quotes.
fn quoted(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

/// Milliseconds with three significant digits or so.
fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// KiB as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    fn row(scenario: Scenario, p99_ms: u64, completed: u64, peak_mib: u64) -> Row {
        let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        latency.record(p99_ms * 1000).unwrap();
        let victim = Outcome {
            expected: 100,
            completed,
            errors: Default::default(),
            first_error: None,
            latency,
            max_start_lag: std::time::Duration::ZERO,
        };
        Row {
            scenario,
            victim,
            rss_before_kib: 10 * 1024,
            rss_peak_kib: peak_mib * 1024,
            rss_end_kib: 12 * 1024,
            attacker: "1 open | at the end".to_owned(),
        }
    }

    #[test]
    fn rows_are_held_against_the_targets() {
        let base = row(Scenario::Baseline, 2, 100, 20);
        assert!(verdict(&base, Some(&base)).passed());
        assert!(verdict(&row(Scenario::Idle, 5, 100, 200), Some(&base)).passed());
        let v = verdict(&row(Scenario::Burst, 7, 100, 20), Some(&base));
        assert_eq!(v.missed.len(), 1, "{v}");
        assert!(v.missed[0].contains("3x baseline"), "{v}");
        let v = verdict(&row(Scenario::NoRead, 150, 90, 400), Some(&base));
        assert_eq!(v.missed.len(), 4, "{v}");
        assert!(v.to_string().starts_with("FAIL: p99 150 ≥ 100 ms"), "{v}");
    }

    #[test]
    fn the_table_has_a_row_per_scenario_and_the_csv_a_line() {
        let rows = [row(Scenario::Baseline, 2, 100, 20), row(Scenario::Drip, 2, 100, 20)];
        let meta = Meta::now("rpcbench abuse");
        let table = markdown(&meta, &Plan::default(), &rows);
        assert!(
            table.contains("| baseline | 2.00 | 2.00 | 2.00 | 0.00 | 100 / 100 | 0 | 10.0 | 20.0 | 12.0 |")
        );
        assert!(table.contains("| drip |") && table.contains("1 open / at the end"), "{table}");
        let csv = csv(&rows);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(2).unwrap().starts_with("drip,2.000,"), "{csv}");
    }
}
