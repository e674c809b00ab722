//! `rpcbench abuse` with tiny numbers: every scenario runs against its own
//! server process, and the victim gets calls through in each.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn abuse_reports_a_row_per_scenario_with_victim_calls() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("abuse.csv");
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_rpcbench"))
        .args(["abuse", "--rate", "100", "--warmup", "0.2", "--duration", "1", "--timeout", "1"])
        .args(["--no-read-conns", "2", "--no-read-calls", "100", "--big-kib", "64", "--burst", "10"])
        .args(["--idle", "100", "--drip", "100", "--csv"])
        .arg(&csv)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    let scenarios = ["baseline", "no-read", "burst", "idle", "drip"];
    let csv = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(lines.len(), scenarios.len(), "{csv}");
    for (line, scenario) in lines.iter().zip(scenarios) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], scenario, "{line}");
        let completed: u64 = fields[4].parse().unwrap();
        assert!(completed > 0, "{scenario}: the victim completed no call: {line}");
        assert!(stdout.contains(&format!("\n| {scenario} ")), "{scenario} missing from:\n{stdout}");
    }
}
