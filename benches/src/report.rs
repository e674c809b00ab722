//! Medians across rounds, ratios, and the Markdown report.

use std::fmt::Write as _;

use crate::load::{Cell, Mode};
use crate::run::{Measurement, Plan};
use crate::System;

/// A median with the range it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// The middle value (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Stat {
    /// The median, min and max of `values`; all zero when there are none.
    pub fn of(values: &[f64]) -> Stat {
        if values.is_empty() {
            return Stat { median: 0.0, min: 0.0, max: 0.0 };
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Stat { median, min: v[0], max: v[n - 1] }
    }
}

/// Every round of one system on one cell, summed up.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The workload.
    pub cell: Cell,
    /// The system.
    pub system: System,
    /// Calls per second over the rounds.
    pub calls_per_sec: Stat,
    /// Median over the rounds of each round's p50, in microseconds.
    pub p50_us: f64,
    /// Median over the rounds of each round's p99, in microseconds.
    pub p99_us: f64,
    /// Median over the rounds of each round's p99.9, in microseconds.
    pub p999_us: f64,
    /// Failed calls over all rounds.
    pub errors: u64,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
}

/// Groups `measurements` by (cell, system), in the order they first appear.
pub fn summarize(measurements: &[Measurement]) -> Vec<Summary> {
    let mut keys: Vec<(Cell, System)> = Vec::new();
    for m in measurements {
        if !keys.contains(&(m.cell, m.system)) {
            keys.push((m.cell, m.system));
        }
    }
    keys.into_iter()
        .map(|(cell, system)| {
            let ms: Vec<&Measurement> =
                measurements.iter().filter(|m| m.cell == cell && m.system == system).collect();
            let of = |f: &dyn Fn(&Measurement) -> f64| Stat::of(&ms.iter().map(|m| f(m)).collect::<Vec<_>>());
            Summary {
                cell,
                system,
                calls_per_sec: of(&|m| m.sample.calls_per_sec()),
                p50_us: of(&|m| m.sample.latency_us(0.5)).median,
                p99_us: of(&|m| m.sample.latency_us(0.99)).median,
                p999_us: of(&|m| m.sample.latency_us(0.999)).median,
                errors: ms.iter().map(|m| m.sample.errors).sum(),
                first_error: ms.iter().find_map(|m| m.sample.first_error.clone()),
            }
        })
        .collect()
}

/// Where and how a report was made.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The command line that reproduces the run.
    pub command: String,
    /// When it ran.
    pub date: String,
    /// CPUs the machine has.
    pub cores: usize,
    /// `/proc/loadavg` before the run.
    pub load_before: String,
    /// `/proc/loadavg` after the run.
    pub load_after: String,
}

impl Meta {
    /// A meta for a run of `command` starting now; `load_after` is filled in later.
    pub fn now(command: &str) -> Meta {
        Meta {
            command: command.to_owned(),
            date: crate::run::today(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_before: crate::run::load_average(),
            load_after: String::new(),
        }
    }
}

/// The systems rpc-core is compared with, in table order.
const BASELINES: [System; 4] = [System::Tonic, System::Tarpc, System::BarePool, System::Raw];

/// The whole report: pipelined table, ratios, blocking round trips, failures.
pub fn markdown(meta: &Meta, plan: &Plan, summaries: &[Summary]) -> String {
    let mut s = String::new();
    let t = &plan.timing;
    let _ = writeln!(s, "- Command: `{}`", meta.command);
    let _ = writeln!(s, "- Date: {}; machine: {} cores, shared by client and server", meta.date, meta.cores);
    let _ =
        writeln!(s, "- Load average (1, 5, 15 min) before: {}; after: {}", meta.load_before, meta.load_after);
    let _ = writeln!(
        s,
        "- Each measurement: {:.1} s warm-up, {:.1} s counted; {} round(s), systems interleaved \
         within each cell. calls/s: median of the rounds (min–max). Latency: median of the \
         rounds' percentiles, µs.",
        t.warmup.as_secs_f64(),
        t.measure.as_secs_f64(),
        plan.rounds
    );

    let pipelined: Vec<&Summary> = summaries.iter().filter(|s| s.cell.mode == Mode::Pipelined).collect();
    if !pipelined.is_empty() {
        s.push_str("\n### Throughput and latency, calls pipelined\n\n");
        s.push_str("| payload | in flight | conns | system | calls/s (min–max) | p50 µs | p99 µs | p999 µs | errors |\n");
        s.push_str("|---:|---:|---:|---|---:|---:|---:|---:|---:|\n");
        for x in &pipelined {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size(x.cell.payload),
                x.cell.in_flight,
                x.cell.connections,
                x.system,
                rate(x),
                us(x.p50_us),
                us(x.p99_us),
                us(x.p999_us),
                x.errors
            );
        }
        ratios(&mut s, &pipelined);
    }

    let blocking: Vec<&Summary> = summaries.iter().filter(|s| s.cell.mode == Mode::Blocking).collect();
    if !blocking.is_empty() {
        s.push_str("\n### Single blocking caller: round trip, 1 in flight, 1 connection\n\n");
        s.push_str(
            "| payload | system | p50 µs | p99 µs | p999 µs | calls/s (min–max) | p50 ÷ bare-pool p50 |\n",
        );
        s.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
        for x in &blocking {
            let bare = find(&blocking, x.cell, System::BarePool).map(|b| b.p50_us);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                size(x.cell.payload),
                x.system,
                us(x.p50_us),
                us(x.p99_us),
                us(x.p999_us),
                rate(x),
                ratio(Some(x.p50_us), bare)
            );
        }
    }

    let failed: Vec<&Summary> = summaries.iter().filter(|s| s.errors > 0).collect();
    if !failed.is_empty() {
        s.push_str("\n### Failures\n\n");
        for x in failed {
            let _ = writeln!(
                s,
                "- {} at {} x{} in flight x{} conns ({:?}): {} failed; first: {}",
                x.system,
                size(x.cell.payload),
                x.cell.in_flight,
                x.cell.connections,
                x.cell.mode,
                x.errors,
                x.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    s
}

/// The table of rpc-core's calls/s and p99 relative to each baseline.
fn ratios(s: &mut String, rows: &[&Summary]) {
    let ours: Vec<&&Summary> = rows
        .iter()
        .filter(|x| matches!(x.system, System::RpcCore | System::RpcCoreInline | System::RpcCoreAsync))
        .collect();
    if ours.is_empty() {
        return;
    }
    s.push_str("\n### rpc-core relative to the others (ratio of medians)\n\n");
    s.push_str("calls/s ratios above 1 and p99 ratios below 1 favour rpc-core.\n\n");
    s.push_str("| payload | in flight | conns | rpc-core variant |");
    for b in BASELINES {
        let _ = write!(s, " calls/s ÷ {b} |");
    }
    s.push_str(" p99 ÷ tonic | p99 ÷ tarpc |\n|---:|---:|---:|---|");
    s.push_str(&"---:|".repeat(BASELINES.len() + 2));
    s.push('\n');
    for x in ours {
        let _ = write!(
            s,
            "| {} | {} | {} | {} |",
            size(x.cell.payload),
            x.cell.in_flight,
            x.cell.connections,
            x.system
        );
        for b in BASELINES {
            let theirs = find(rows, x.cell, b).map(|y| y.calls_per_sec.median);
            let _ = write!(s, " {} |", ratio(Some(x.calls_per_sec.median), theirs));
        }
        for b in [System::Tonic, System::Tarpc] {
            let theirs = find(rows, x.cell, b).map(|y| y.p99_us);
            let _ = write!(s, " {} |", ratio(Some(x.p99_us), theirs));
        }
        s.push('\n');
    }
}

fn find<'a>(rows: &[&'a Summary], cell: Cell, system: System) -> Option<&'a Summary> {
    rows.iter().find(|y| y.cell == cell && y.system == system).copied()
}

/// One line per measurement, for anyone who wants the raw numbers.
pub fn csv(measurements: &[Measurement]) -> String {
    let mut s = String::from(
        "round,system,payload,in_flight,connections,mode,calls,seconds,calls_per_sec,p50_us,p99_us,p999_us,errors\n",
    );
    for m in measurements {
        let x = &m.sample;
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:?},{},{:.3},{:.0},{:.2},{:.2},{:.2},{}",
            m.round,
            m.system,
            m.cell.payload,
            m.cell.in_flight,
            m.cell.connections,
            m.cell.mode,
            x.calls,
            x.measured.as_secs_f64(),
            x.calls_per_sec(),
            x.latency_us(0.5),
            x.latency_us(0.99),
            x.latency_us(0.999),
            x.errors
        );
    }
    s
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

fn rate(x: &Summary) -> String {
    let c = x.calls_per_sec;
    format!("{} ({}–{})", thousands(c.median), thousands(c.min), thousands(c.max))
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(Stat::of(&[3.0, 1.0, 2.0]), Stat { median: 2.0, min: 1.0, max: 3.0 });
        assert_eq!(Stat::of(&[4.0, 1.0]).median, 2.5);
        assert_eq!(Stat::of(&[]).median, 0.0);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(64), "64 B");
        assert_eq!(us(8.123), "8.12");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50x");
        assert_eq!(ratio(Some(3.0), None), "–");
    }
}
