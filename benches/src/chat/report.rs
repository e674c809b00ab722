//! The numbers of one run: printed as text, as one Markdown table row, or as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::plan::Workload;

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Latency {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Latency {
    /// From a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The target: users online on two proxies, ...
const TARGET_USERS: usize = 10_000;
/// ... durable messages delivered per second, ...
const TARGET_DELIVERED_PER_S: f64 = 20_000.0;
/// ... with the 99th percentile of send to push under this.
const TARGET_P99_MS: f64 = 50.0;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The system under test.
    pub system: String,
    /// Simulated users.
    pub users: usize,
    /// The traffic.
    pub workload: Workload,
    /// Seconds of timed sending.
    pub duration_s: f64,
    /// The target rate in messages per second; 0 = as fast as the window allows.
    pub rate: f64,
    /// Most sends awaiting acknowledgement at once.
    pub in_flight: usize,
    /// Whether users were created in the store directly (cheap hash) instead of
    /// through `Register`.
    pub seeded: bool,
    /// Registrations per second through the gateway (not when seeded).
    pub registers_per_s: Option<f64>,
    /// Logins per second through the gateway.
    pub logins_per_s: f64,
    /// How the one-to-one pairs were put across proxies.
    pub pairing: String,
    /// One-to-one pairs, and how many of them span two proxies.
    pub pairs: usize,
    /// Pairs whose two users are on different proxies.
    pub cross_proxy_pairs: usize,
    /// Groups and their size.
    pub groups: usize,
    /// Members per group (the last may be smaller).
    pub group_size: usize,
    /// First send attempts.
    pub sent: u64,
    /// Acknowledged sends in the timed window.
    pub acked: u64,
    /// `acked` per second.
    pub acked_per_s: f64,
    /// First pushes received in the timed window.
    pub delivered: u64,
    /// `delivered` per second.
    pub delivered_per_s: f64,
    /// Send to push, first sightings.
    pub latency_ms: Latency,
    /// Send to acknowledgement.
    pub ack_latency_ms: Latency,
    /// Resident memory of the proxy processes before the users connected.
    pub proxy_rss_before_kib: u64,
    /// And after they all logged in.
    pub proxy_rss_after_kib: u64,
    /// `(after - before) / users`.
    pub proxy_kib_per_user: f64,
    /// Acknowledged (message, recipient) pairs the recipient never saw: must be 0.
    pub lost: u64,
    /// Messages stored or shown twice under different sequence numbers: must be 0.
    pub dup: u64,
    /// Pushes of a sequence number the receiver already had (retries are re-pushed on
    /// purpose).
    pub repushes: u64,
    /// Messages a recipient got only from the final `Sync`.
    pub from_sync: u64,
    /// Sends retried with the same client message id.
    pub retries: u64,
    /// Sends that failed for good.
    pub failed: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Failures by status.
    pub errors: BTreeMap<String, u64>,
    /// CPU seconds each process used during the timed window.
    pub cpu_s: BTreeMap<String, f64>,
    /// The command line that produced this run.
    pub command: String,
}

impl Run {
    /// The Markdown table header matching [`Run::row`].
    pub const HEADER: &'static str = "| system | users | workload | rate | logins/s | acked msg/s | delivered msg/s | p50 ms | p99 ms | p99.9 ms | proxy KiB/user | lost | dup |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

    /// One Markdown table row.
    pub fn row(&self) -> String {
        let system = self.system.split(' ').next().unwrap_or_default();
        let rate = if self.rate > 0.0 { format!("{}", self.rate) } else { "max".into() };
        format!(
            "| {system} | {} | {} | {rate} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            self.users,
            serde_json::to_value(self.workload).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            self.logins_per_s,
            self.acked_per_s,
            self.delivered_per_s,
            self.latency_ms.p50,
            self.latency_ms.p99,
            self.latency_ms.p999,
            self.proxy_kib_per_user,
            self.lost,
            self.dup,
        )
    }

    /// One line against the target: 10,000 users online on two proxies, at
    /// least 20,000 durable messages delivered per second, p99 send-to-push under 50 ms,
    /// nothing lost.
    pub fn verdict(&self) -> String {
        let mut missed = Vec::new();
        if self.users < TARGET_USERS {
            missed.push(format!("{} users < {TARGET_USERS}", self.users));
        }
        if !self.system.starts_with("cluster (2 proxies") {
            missed.push("not a two-proxy cluster".to_owned());
        }
        if self.delivered_per_s < TARGET_DELIVERED_PER_S {
            missed.push(format!("{:.0} delivered/s < {TARGET_DELIVERED_PER_S:.0}", self.delivered_per_s));
        }
        if self.latency_ms.p99 >= TARGET_P99_MS {
            missed.push(format!("p99 {:.1} ms >= {TARGET_P99_MS:.0} ms", self.latency_ms.p99));
        }
        if self.lost > 0 || self.dup > 0 {
            missed.push(format!("{} lost, {} duplicated", self.lost, self.dup));
        }
        let measured = format!(
            "{} users, {:.0} delivered msg/s, p99 {:.1} ms, lost {}",
            self.users, self.delivered_per_s, self.latency_ms.p99, self.lost
        );
        if missed.is_empty() {
            format!("target      MET ({measured})")
        } else {
            format!("target      NOT MET: {} ({measured})", missed.join(", "))
        }
    }

    /// A readable summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let a = &self.ack_latency_ms;
        out.push_str(&format!("system      {}\n", self.system));
        out.push_str(&format!(
            "run         {} users, {:?}, {:.0} s, rate {}, in flight {}, seeded {}\n",
            self.users,
            self.workload,
            self.duration_s,
            if self.rate > 0.0 { self.rate.to_string() } else { "max".into() },
            self.in_flight,
            self.seeded
        ));
        if let Some(r) = self.registers_per_s {
            out.push_str(&format!("register    {r:.1}/s\n"));
        }
        out.push_str(&format!("login       {:.1}/s\n", self.logins_per_s));
        out.push_str(&format!(
            "plan        {} pairs ({} across proxies, by {}), {} groups of {}\n",
            self.pairs, self.cross_proxy_pairs, self.pairing, self.groups, self.group_size
        ));
        out.push_str(&format!(
            "messages    sent {}, acked {} ({:.0}/s), delivered {} ({:.0}/s)\n",
            self.sent, self.acked, self.acked_per_s, self.delivered, self.delivered_per_s
        ));
        out.push_str(&format!(
            "latency     send->push p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms ({} samples)\n",
            l.p50, l.p99, l.p999, l.max, l.count
        ));
        out.push_str(&format!(
            "            send->ack  p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms\n",
            a.p50, a.p99, a.p999, a.max
        ));
        out.push_str(&format!(
            "proxy mem   {} KiB -> {} KiB, {:.1} KiB per user\n",
            self.proxy_rss_before_kib, self.proxy_rss_after_kib, self.proxy_kib_per_user
        ));
        out.push_str(&format!(
            "check       lost {}, dup {}; re-pushes {}, recovered by Sync {}, retries {}, failed {}, disconnects {}\n",
            self.lost, self.dup, self.repushes, self.from_sync, self.retries, self.failed, self.disconnects
        ));
        for (what, n) in &self.errors {
            out.push_str(&format!("error       {n} x {what}\n"));
        }
        let cpu: Vec<String> = self.cpu_s.iter().map(|(p, s)| format!("{p} {s:.1}")).collect();
        out.push_str(&format!("cpu s       {}\n", cpu.join(", ")));
        out.push_str(&self.verdict());
        out.push('\n');
        out
    }
}
