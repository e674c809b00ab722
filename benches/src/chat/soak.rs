//! The soak's measurements: every cluster process's resident memory, threads and open
//! descriptors (from `/proc`), and what the backends hold for the cluster, sampled at a
//! fixed interval while the traffic runs; then, over the samples after the warm-up, the
//! slope of each against the messages acknowledged so far (least squares), compared
//! with a limit per 100,000 messages.
//!
//! Something that leaks per message, per call or per login grows in proportion to the
//! traffic however long the run, while caches and pools level off during the warm-up:
//! a slope per message separates the two without knowing what the level should be.
//!
//! The backends are shared with anything else running on the machine, so where a
//! backend can say what belongs to this cluster (MariaDB connections to its database,
//! Redis keys under its prefix, ZooKeeper watches under its root) that is what counts;
//! the server-wide figures are reported beside them, and only Redis's memory of those
//! is held to a limit.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context as _;
use mysql::prelude::Queryable as _;

/// What one sample measured, by metric, in that metric's unit.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the traffic started.
    pub at_s: f64,
    /// Messages acknowledged since the traffic started.
    pub messages: u64,
    /// Each metric's value.
    pub values: BTreeMap<Metric, f64>,
}

/// One thing measured over time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Metric {
    /// The process (`chat-service-1`, ...) or backend (`mariadb`, ...).
    pub owner: String,
    /// What is measured, with its unit (`RSS MiB`, `threads`, ...).
    pub what: &'static str,
    /// Whether its growth is held to a limit, and which.
    pub limit: Limit,
}

/// Which limit a metric's growth is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Limit {
    /// MiB per 100,000 messages.
    Memory,
    /// Count per 100,000 messages.
    Count,
    /// Reported only: a server-wide figure that other users of the backend move.
    None,
}

/// The resident memory metric's name.
pub const RSS: &str = "RSS MiB";
const THREADS: &str = "threads";
const FDS: &str = "open fds";

/// Takes samples of the cluster's processes and backends.
pub struct Probe {
    /// Each process's name and pid.
    processes: Vec<(String, u32)>,
    /// A connection to the MariaDB server (no database selected, so it is not counted
    /// as one of the cluster's).
    mysql: Option<mysql::Conn>,
    /// The cluster's database.
    database: String,
    /// A connection to Redis.
    redis: Option<redis::Connection>,
    /// The cluster's presence key prefix.
    redis_prefix: String,
    /// ZooKeeper's address, for four-letter words.
    zk: String,
    /// The cluster's ZooKeeper root.
    zk_root: String,
}

/// Where the probe finds the backends and what in them is the cluster's.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Each process's name and pid.
    pub processes: Vec<(String, u32)>,
    /// `mysql://USER:PASSWORD@HOST:PORT` of the server.
    pub mysql_server: String,
    /// The cluster's database on it.
    pub database: String,
    /// `redis://HOST:PORT/`.
    pub redis: String,
    /// The cluster's presence key prefix.
    pub redis_prefix: String,
    /// ZooKeeper's connect string (its first host is asked).
    pub zk: String,
    /// The cluster's root znode.
    pub zk_root: String,
}

impl Probe {
    /// A probe of `targets`. A backend that cannot be reached now is left out of every
    /// sample (with a warning), not retried.
    pub fn new(targets: Targets) -> Probe {
        let mysql = mysql::Opts::from_url(&targets.mysql_server)
            .map_err(anyhow::Error::from)
            .and_then(|opts| Ok(mysql::Conn::new(opts)?))
            .map_err(|e| eprintln!("chatbench: soak: MariaDB not sampled: {e}"))
            .ok();
        let redis = redis::Client::open(targets.redis.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .map_err(|e| eprintln!("chatbench: soak: Redis not sampled: {e}"))
            .ok();
        let zk = targets.zk.split(',').next().unwrap_or_default().to_owned();
        Probe {
            processes: targets.processes,
            mysql,
            database: targets.database,
            redis,
            redis_prefix: targets.redis_prefix,
            zk,
            zk_root: targets.zk_root,
        }
    }

    /// Measures everything now. A process that is gone, or a backend that stopped
    /// answering, is missing from the sample.
    pub fn sample(&mut self, at_s: f64, messages: u64) -> Sample {
        let mut values = BTreeMap::new();
        let mut put = |owner: &str, what: &'static str, limit: Limit, value: Option<f64>| {
            if let Some(value) = value {
                values.insert(Metric { owner: owner.to_owned(), what, limit }, value);
            }
        };
        for (name, pid) in &self.processes {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
            let field = |key: &str| -> Option<f64> {
                let line = status.as_deref()?.lines().find(|l| l.starts_with(key))?;
                line.split_whitespace().nth(1)?.parse().ok()
            };
            put(name, RSS, Limit::Memory, field("VmRSS:").map(|kib| kib / 1024.0));
            put(name, THREADS, Limit::Count, field("Threads:"));
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as f64);
            put(name, FDS, Limit::Count, fds);
        }
        if let Some(conn) = &mut self.mysql {
            let global: Option<(String, String)> =
                conn.query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'").ok().flatten();
            put("mariadb", "connections, server-wide", Limit::None, global.and_then(|(_, n)| n.parse().ok()));
            let ours: Option<u64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ?",
                    (&self.database,),
                )
                .ok()
                .flatten();
            put("mariadb", "connections to the cluster's database", Limit::Count, ours.map(|n| n as f64));
        }
        if let Some(conn) = &mut self.redis {
            let info: Option<String> = redis::cmd("INFO").arg("memory").query(conn).ok();
            let used = info.as_deref().and_then(|info| info_field(info, "used_memory"));
            put("redis", "used_memory MiB, server-wide", Limit::Memory, used.map(|b| b / (1024.0 * 1024.0)));
            put(
                "redis",
                "keys under the cluster's prefix",
                Limit::Count,
                count_keys(conn, &self.redis_prefix),
            );
        }
        if let Some(mntr) = four_letter_word(&self.zk, "mntr") {
            put("zookeeper", "znodes, server-wide", Limit::None, info_field(&mntr, "zk_znode_count"));
            put("zookeeper", "watches, server-wide", Limit::None, info_field(&mntr, "zk_watch_count"));
            put(
                "zookeeper",
                "ephemerals, server-wide",
                Limit::None,
                info_field(&mntr, "zk_ephemerals_count"),
            );
        }
        if let Some(wchp) = four_letter_word(&self.zk, "wchp") {
            put(
                "zookeeper",
                "watches under the cluster's root",
                Limit::Count,
                Some(watches_under(&wchp, &self.zk_root)),
            );
        }
        Sample { at_s, messages, values }
    }
}

/// The number after `key` and a `:` or a tab in a `key:value` or `key\tvalue` listing
/// (Redis `INFO`, ZooKeeper `mntr`).
fn info_field(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        rest.strip_prefix(':').or_else(|| rest.strip_prefix('\t'))?.trim().parse().ok()
    })
}

/// How many keys start with `prefix` (`SCAN`, so Redis is never blocked for long).
fn count_keys(conn: &mut redis::Connection, prefix: &str) -> Option<f64> {
    let pattern = format!("{prefix}*");
    let mut cursor = 0u64;
    let mut n = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .ok()?;
        n += keys.len();
        if next == 0 {
            return Some(n as f64);
        }
        cursor = next;
    }
}

/// ZooKeeper's answer to a four-letter word, or `None` when it cannot be asked or the
/// word is not enabled (`4lw.commands.whitelist`).
fn four_letter_word(addr: &str, word: &str) -> Option<String> {
    let addr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    (!answer.contains("is not executed")).then_some(answer)
}

/// The watches `wchp` lists on paths at or under `root`: each path is a line of its own
/// followed by one indented line per session watching it.
fn watches_under(wchp: &str, root: &str) -> f64 {
    let mut ours = false;
    let mut n = 0usize;
    for line in wchp.lines() {
        if line.starts_with(char::is_whitespace) {
            n += usize::from(ours && !line.trim().is_empty());
        } else {
            ours = line == root || line.starts_with(&format!("{root}/"));
        }
    }
    n as f64
}

/// One metric over the run after the warm-up.
#[derive(Debug, Clone)]
pub struct Trend {
    /// The metric.
    pub metric: Metric,
    /// Its value at the first sample after the warm-up, and at the last.
    pub first: f64,
    /// See `first`.
    pub last: f64,
    /// Least-squares growth per 100,000 acknowledged messages.
    pub per_100k: f64,
    /// Above its limit.
    pub failed: bool,
}

/// Limits on growth per 100,000 messages after the warm-up.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For memory, in MiB.
    pub memory_mib: f64,
    /// For counts (threads, descriptors, connections, keys, watches).
    pub count: f64,
}

/// The trend of every metric over `samples` (those after the warm-up).
///
/// # Errors
///
/// When there are fewer than three samples or no message was acknowledged between the
/// first and the last: no slope can be fitted.
pub fn trends(samples: &[Sample], limits: Limits) -> anyhow::Result<Vec<Trend>> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        anyhow::bail!("no samples after the warm-up; run longer or sample more often")
    };
    anyhow::ensure!(samples.len() >= 3, "only {} samples after the warm-up; run longer", samples.len());
    anyhow::ensure!(last.messages > first.messages, "no message was acknowledged after the warm-up");
    let mut out = Vec::new();
    for metric in last.values.keys() {
        let points: Vec<(f64, f64)> =
            samples.iter().filter_map(|s| Some((s.messages as f64, *s.values.get(metric)?))).collect();
        let (Some(&(_, v0)), Some(&(_, v1))) = (points.first(), points.last()) else { continue };
        let Some(slope) = slope(&points) else { continue };
        let per_100k = slope * 100_000.0;
        let failed = match metric.limit {
            Limit::Memory => per_100k > limits.memory_mib,
            Limit::Count => per_100k > limits.count,
            Limit::None => false,
        };
        out.push(Trend { metric: metric.clone(), first: v0, last: v1, per_100k, failed });
    }
    Ok(out)
}

/// The least-squares slope of `y` against `x`; `None` for fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The processes' trends as a Markdown table: one row per process with RSS, threads
/// and descriptors.
pub fn process_table(trends: &[Trend]) -> String {
    let mut rows: BTreeMap<&str, [Option<&Trend>; 3]> = BTreeMap::new();
    for t in trends {
        let column = match t.metric.what {
            RSS => 0,
            THREADS => 1,
            FDS => 2,
            _ => continue,
        };
        rows.entry(&t.metric.owner).or_default()[column] = Some(t);
    }
    let mut out = String::from(
        "| process | RSS MiB after warm-up -> end | RSS MiB per 100k msgs | threads | threads per 100k | open fds | fds per 100k |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (owner, [rss, threads, fds]) in rows {
        let cell = |t: Option<&Trend>, digits: usize| match t {
            Some(t) => (
                format!("{:.digits$} -> {:.digits$}", t.first, t.last),
                format!("{:+.2}{}", t.per_100k, if t.failed { " **over**" } else { "" }),
            ),
            None => ("-".into(), "-".into()),
        };
        let (r, rs) = cell(rss, 1);
        let (th, ths) = cell(threads, 0);
        let (f, fs) = cell(fds, 0);
        out.push_str(&format!("| {owner} | {r} | {rs} | {th} | {ths} | {f} | {fs} |\n"));
    }
    out
}

/// The backends' trends as a Markdown table.
pub fn backend_table(trends: &[Trend]) -> String {
    let mut out = String::from(
        "| backend | what | after warm-up -> end | per 100k msgs | limit |\n|---|---|---:|---:|---|\n",
    );
    for t in trends.iter().filter(|t| !matches!(t.metric.what, RSS | THREADS | FDS)) {
        let limit = match t.metric.limit {
            Limit::Memory => "memory",
            Limit::Count => "count",
            Limit::None => "reported only",
        };
        out.push_str(&format!(
            "| {} | {} | {:.1} -> {:.1} | {:+.2}{} | {limit} |\n",
            t.metric.owner,
            t.metric.what,
            t.first,
            t.last,
            t.per_100k,
            if t.failed { " **over**" } else { "" }
        ));
    }
    out
}

/// Every sample as CSV: seconds, messages, then one column per metric.
pub fn csv(samples: &[Sample]) -> String {
    let metrics: Vec<&Metric> = samples
        .iter()
        .flat_map(|s| s.values.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = String::from("seconds,messages");
    for m in &metrics {
        out.push_str(&format!(",{} {}", m.owner, m.what.replace(',', "")));
    }
    out.push('\n');
    for s in samples {
        out.push_str(&format!("{:.0},{}", s.at_s, s.messages));
        for m in &metrics {
            match s.values.get(*m) {
                Some(v) => out.push_str(&format!(",{v}")),
                None => out.push(','),
            }
        }
        out.push('\n');
    }
    out
}

/// Reads what `targets` needs from a started cluster's state directory.
///
/// # Errors
///
/// When the state file cannot be read.
pub fn cluster_targets(
    state_dir: &std::path::Path,
    processes: Vec<(String, u32)>,
    mysql_server: &str,
    database: &str,
    redis: &str,
) -> anyhow::Result<Targets> {
    let state = chatroom::cluster::read_state(state_dir).context("cannot read the cluster's state")?;
    Ok(Targets {
        processes,
        mysql_server: mysql_server.to_owned(),
        database: database.to_owned(),
        redis: redis.to_owned(),
        redis_prefix: state.redis_prefix,
        zk: state.zk,
        zk_root: state.zk_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
        let flat = slope(&[(0.0, 10.0), (1.0, 11.0), (2.0, 9.0), (3.0, 10.0)]).unwrap();
        assert!(flat.abs() < 0.5, "{flat}");
    }

    #[test]
    fn fields_and_watches_are_parsed() {
        assert_eq!(
            info_field("# Memory\r\nused_memory:1048576\r\nused_memory_human:1M\r\n", "used_memory"),
            Some(1_048_576.0)
        );
        assert_eq!(info_field("zk_version\t3.8\nzk_znode_count\t42\n", "zk_znode_count"), Some(42.0));
        let wchp = "/r/a\n\t0x1\n\t0x2\n/other\n\t0x3\n/r\n\t0x4\n/rx\n\t0x5\n";
        assert_eq!(watches_under(wchp, "/r"), 3.0);
    }

    #[test]
    fn growth_over_the_limit_fails_and_flat_passes() {
        let metric = |what| Metric { owner: "p".into(), what, limit: Limit::Memory };
        let samples: Vec<Sample> = (0..5u64)
            .map(|i| Sample {
                at_s: i as f64,
                messages: i * 100_000,
                values: BTreeMap::from([(metric("grows"), 10.0 + 2.0 * i as f64), (metric("flat"), 10.0)]),
            })
            .collect();
        let t = trends(&samples, Limits { memory_mib: 1.0, count: 1.0 }).unwrap();
        let by = |what| t.iter().find(|t| t.metric.what == what).unwrap();
        assert!(by("grows").failed && (by("grows").per_100k - 2.0).abs() < 1e-9);
        assert!(!by("flat").failed);
        assert!(trends(&samples[..2], Limits { memory_mib: 1.0, count: 1.0 }).is_err());
    }
}
