//! Options shared by the commands and the parsers of counts ("10M") and durations ("1ms").
//!
//! Every numeric option is bounded here, while it is parsed, so that no value can size an
//! allocation the machine cannot make or a loop that cannot end: the bounds are in
//! [`crate::limits`], and checks that need more than one option (parallelism against slots,
//! the pool's memory) run there after parsing, before anything starts. Durations have one
//! syntax everywhere ([`parse_duration`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory};
use corestream::{ClusterConfig, LocalCluster, StreamEnvironment};
use corestream_netstack::CreditConfig;

use crate::limits::{self, COUNT_MAX, KEYS_MAX, PARALLELISM_MAX};

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Default parallelism of the job's operators (default: the number of slots); 1 to 128,
    /// the key groups of keyed operators.
    #[arg(long, short = 'p', value_parser = parse_parallelism)]
    pub parallelism: Option<u32>,
    /// Slots of the local cluster (default: one per physical core); 1 to 128 (with
    /// `--processes`, per process, and at most 128 over all processes).
    #[arg(long, value_parser = parse_slots)]
    pub slots: Option<u32>,
    /// 32 KB buffers in the cluster's pool (default: sized from the number of slots); at most
    /// the machine's physical memory.
    #[arg(long, value_parser = parse_network_buffers)]
    pub network_buffers: Option<u32>,
    /// Credit-based flow control, per input channel: buffers each consumer channel owns and
    /// grants up front (default 2, as in Flink).
    #[arg(long, value_parser = parse_exclusive, value_name = "N")]
    pub exclusive_buffers: Option<u32>,
    /// Buffers each consumer's input gate shares among its channels, granted by the
    /// producers' backlog (default 8).
    #[arg(long, value_parser = parse_credit, value_name = "N")]
    pub floating_buffers: Option<u32>,
    /// Finished buffers a producer may queue per channel beyond its open one while it waits
    /// for credit; the backlog it announces is what floating buffers are granted by (default 8).
    #[arg(long, value_parser = parse_credit, value_name = "N")]
    pub max_backlog: Option<u32>,
    /// Longest wait of a record in a partly filled buffer while the producer is busy, e.g.
    /// 1ms, 100us, 0 (flush after every batch). Durations everywhere: a number and a unit
    /// (ns, us, ms, s, m), or a bare 0; at most 1 hour.
    #[arg(long, value_parser = parse_duration)]
    pub buffer_timeout: Option<Duration>,
    /// How long an idle slot polls for work before sleeping, e.g. 1ms (default: sleep at once).
    /// Trades CPU for latency on the first record after a pause.
    #[arg(long, value_parser = parse_duration)]
    pub spin_before_park: Option<Duration>,
    /// Emit a latency marker from each source subtask this often, e.g. 100ms, and report
    /// the markers' latency at each sink per source subtask (default: off).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub latency_markers: Option<Duration>,
    /// How far in event time an input channel may run ahead of the slowest channel of its
    /// task before the task reads it last and its producer waits, e.g. 10s, or `off`
    /// (default 60s). Bounds the windows a fast producer keeps open while a slow one holds the
    /// watermark back.
    #[arg(long, value_parser = parse_watermark_skew, value_name = "DURATION|off")]
    pub max_watermark_skew: Option<WatermarkSkew>,
    /// Where keyed operators keep their state: `heap` (hash tables in memory, the default) or
    /// `lsm` (an LSM store on local disk, for state larger than memory).
    #[arg(long, value_name = "heap|lsm")]
    pub state_backend: Option<corestream::StateBackendKind>,
    /// Directory for the LSM backend's local files, one subdirectory per keyed subtask
    /// (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Memory of one slot's LSM stores, e.g. 256M: half block cache, shared by the slot's
    /// stores; each store flushes its memtables at an eighth (default 256M, at least 8M).
    #[arg(long, value_parser = parse_state_memory, value_name = "SIZE")]
    pub state_memory: Option<usize>,
    /// With `--state-backend lsm`: checkpoints upload only the SST files no earlier checkpoint
    /// holds (`true`, the default), or write every key group in full (`false`).
    #[arg(long, value_name = "true|false")]
    pub incremental_checkpoints: Option<bool>,
    /// TaskManager processes that run the job together on this machine (per-job mode: a
    /// JobManager in this process starts N TaskManager processes of this binary; `run
    /// sum-by-key`, `run wordcount`, `bench network` and `bench latency --query q0`). The job's
    /// `--parallelism` slots are split between them in contiguous ranges; without `-p` there are
    /// N × `--slots` job slots, and `--slots` defaults to an even share of `-p` (1 without it).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_processes)]
    pub processes: u32,
    /// Records per second each source subtask emits at most, e.g. 10k (for tests and demos:
    /// a bounded input then takes seconds, long enough for checkpoints and failures).
    #[arg(long, value_parser = parse_source_rate, value_name = "N")]
    pub source_rate: Option<u64>,
    /// How long the JobManager waits for a silent TaskManager before removing it and failing its
    /// jobs (heartbeats are sent every fifth of it; the data connections between TaskManagers
    /// wait twice as long); for tests of failure detection.
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION", hide = true)]
    pub heartbeat_timeout: Option<Duration>,
    /// The address TaskManager 0 binds its data listener to, and the JobManager its RPC port
    /// (port 0), with `--processes` > 1 (default 127.0.0.1:0 for both); the other TaskManagers
    /// reach both there, so it must be reachable from them.
    #[arg(long, value_parser = parse_data_addr, value_name = "IP:PORT", hide = true)]
    pub tm_bind: Option<SocketAddr>,
    /// The address the other TaskManagers bind their data listeners to (`--processes` > 1;
    /// default 127.0.0.1:0).
    #[arg(long, value_parser = parse_data_addr, value_name = "IP:PORT", hide = true)]
    pub child_bind: Option<SocketAddr>,
    /// Start the TaskManagers other than 0 in this named network namespace, through
    /// `ip netns exec NAME` (`--processes` > 1).
    #[arg(long, value_parser = parse_netns_name, value_name = "NAME", hide = true)]
    pub child_netns: Option<String>,
}

impl Common {
    /// Refuses `--tm-bind`, `--child-bind` and `--child-netns` unless the job runs on more than
    /// one TaskManager process, and a fixed `--child-bind` port for more than one of them.
    pub fn check_placement(&self) -> Result<(), String> {
        let given: Vec<&str> = [
            ("--tm-bind", self.tm_bind.is_some()),
            ("--child-bind", self.child_bind.is_some()),
            ("--child-netns", self.child_netns.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if !given.is_empty() && self.processes < 2 {
            return Err(format!(
                "{}: only for a job across TaskManager processes; give --processes 2 or more (it is {})",
                given.join(", "),
                self.processes
            ));
        }
        if let Some(addr) = self.child_bind.filter(|a| a.port() != 0 && self.processes > 2) {
            return Err(format!(
                "--child-bind {addr} has a fixed port, which only one of the {} TaskManagers that --processes {} \
                 starts can bind; give port 0",
                self.processes - 1,
                self.processes
            ));
        }
        Ok(())
    }

    /// Exits with status 2, like clap on any other invalid option, if [`Self::check_placement`]
    /// refuses the options.
    pub fn require_valid_placement(&self) {
        if let Err(message) = self.check_placement() {
            crate::Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message).exit();
        }
    }

    /// Starts a cluster with enough slots for the requested parallelism.
    pub fn cluster(&self) -> anyhow::Result<LocalCluster> {
        LocalCluster::start(self.cluster_config()?).context("cannot start the local cluster")
    }

    /// The settings of the local cluster: enough slots for the requested parallelism.
    pub fn cluster_config(&self) -> anyhow::Result<ClusterConfig> {
        self.require_valid_placement();
        if self.processes > 1 {
            anyhow::bail!(
                "--processes {} is supported only by `corestream run sum-by-key`, `corestream run wordcount`, \
                 `corestream bench network` and `corestream bench latency --query q0`; this command runs in one process",
                self.processes
            );
        }
        let slots = match (self.slots, self.parallelism) {
            (Some(s), Some(p)) if p > s => {
                anyhow::bail!("--parallelism {p} needs at least {p} slots but --slots is {s}")
            }
            (Some(s), _) => Some(s),
            (None, Some(p)) => Some(p),
            (None, None) => None,
        };
        Ok(ClusterConfig {
            slots,
            network_buffers: self.network_buffers,
            credit: self.credit(),
            spin_before_park: self.spin_before_park,
            ..ClusterConfig::default()
        })
    }

    /// The flow-control settings: the defaults with the options given.
    pub fn credit(&self) -> CreditConfig {
        let default = CreditConfig::default();
        CreditConfig {
            exclusive_per_channel: self.exclusive_buffers.unwrap_or(default.exclusive_per_channel),
            floating_per_gate: self.floating_buffers.unwrap_or(default.floating_per_gate),
            max_backlog_per_channel: self.max_backlog.unwrap_or(default.max_backlog_per_channel),
        }
    }

    pub fn environment(&self, cluster: &LocalCluster) -> StreamEnvironment {
        let mut env = cluster.environment();
        if let Some(p) = self.parallelism {
            env.set_parallelism(p);
        }
        if let Some(t) = self.buffer_timeout {
            env.set_buffer_timeout(t);
        }
        if let Some(interval) = self.latency_markers {
            env.set_latency_tracking_interval(interval);
        }
        if let Some(WatermarkSkew(skew)) = self.max_watermark_skew {
            env.set_max_watermark_skew(skew);
        }
        if let Some(kind) = self.state_backend {
            env.set_state_backend(kind);
        }
        let default = corestream::LsmConfig::default();
        env.set_lsm_config(corestream::LsmConfig {
            local_dir: self.state_dir.clone().or(default.local_dir),
            memory_per_slot: self.state_memory.unwrap_or(default.memory_per_slot),
            incremental: self.incremental_checkpoints.unwrap_or(default.incremental),
        });
        env.set_source_rate(self.source_rate);
        env
    }
}

/// `--state-memory`: a size of at least 8 MiB and at most 1 TiB, e.g. 64M, 1G.
pub fn parse_state_memory(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix("ib")).map_or(t.to_string(), |p| format!("{p}B"));
    match corestream_bench::transport::parse_bytes(&t) {
        Ok(bytes) if (corestream::MIN_LSM_MEMORY_PER_SLOT as u64..=1 << 40).contains(&bytes) => Ok(bytes as usize),
        _ => Err(format!("'{s}' is not a memory size between 8M and 1T (examples: 64M, 256M, 1G)")),
    }
}

/// `--max-watermark-skew`: a positive duration, or `off` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkSkew(pub Option<Duration>);

pub fn parse_watermark_skew(s: &str) -> Result<WatermarkSkew, String> {
    if s.trim() == "off" {
        return Ok(WatermarkSkew(None));
    }
    parse_positive_duration(s)
        .map(|d| WatermarkSkew(Some(d)))
        .map_err(|e| format!("{e}; or 'off' to never hold a channel back"))
}

/// A count with an optional k/M/G suffix (powers of 1000) or a power-of-ten exponent, and `_`
/// separators: `10M`, `1_000`, `1e6`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let not_a_count = || format!("'{s}' is not a count (examples: 1000, 10k, 10M, 1e6)");
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000),
        Some('g' | 'G') => (&t[..t.len() - 1], 1_000_000_000),
        _ => match t.split_once(['e', 'E']) {
            Some((mantissa, exp)) => {
                let exp: u32 = exp.parse().map_err(|_| not_a_count())?;
                (mantissa, 10u64.checked_pow(exp).ok_or_else(|| format!("'{s}' is too large"))?)
            }
            None => (t.as_str(), 1),
        },
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.is_empty() {
        return Err(not_a_count());
    }
    let n: u64 = digits.parse().map_err(|_| format!("'{s}' is too large"))?;
    n.checked_mul(mult).ok_or_else(|| format!("'{s}' is too large"))
}

/// A count from 1 to `max`; `unit` names what is counted in the error ("keys", "slots").
pub fn parse_bounded(s: &str, unit: &str, max: u64) -> Result<u64, String> {
    match parse_count(s)? {
        0 => Err(format!("'{s}' must be between 1 and {max} {unit}").trim_end().to_string()),
        n if n > max => Err(format!("'{s}' is more than the limit of {max} {unit}")),
        n => Ok(n),
    }
}

/// `--parallelism`: 1 to [`PARALLELISM_MAX`].
pub fn parse_parallelism(s: &str) -> Result<u32, String> {
    parse_bounded(s, "subtasks", PARALLELISM_MAX as u64)
        .map(|n| n as u32)
        .map_err(|e| format!("{e} (the key groups a keyed operator is split into)"))
}

/// `--slots`: 1 to [`PARALLELISM_MAX`].
pub fn parse_slots(s: &str) -> Result<u32, String> {
    parse_bounded(s, "slots", PARALLELISM_MAX as u64)
        .map(|n| n as u32)
        .map_err(|e| format!("{e} (no job can use more slots than its parallelism)"))
}

/// `--network-buffers`: 1 to as many 32 KB buffers as the machine has physical memory.
pub fn parse_network_buffers(s: &str) -> Result<u32, String> {
    let max = limits::network_buffers_max();
    parse_bounded(s, "buffers", u64::from(max)).map(|n| n as u32).map_err(|e| {
        format!("{e}: {} buffers of 32 KB fill the machine's {} of memory", max, limits::gib(limits::memory_bytes()))
    })
}

/// A number of keys, 1 to [`KEYS_MAX`] (references and keyed state hold one entry per key).
pub fn parse_keys(s: &str) -> Result<u64, String> {
    parse_bounded(s, "keys", KEYS_MAX)
}

/// Most buffers one credit option may name (each is 32 KB per channel or gate).
pub const CREDIT_MAX: u32 = 1024;

/// A number of buffers for `--floating-buffers` or `--max-backlog`: 0 to [`CREDIT_MAX`].
pub fn parse_credit(s: &str) -> Result<u32, String> {
    match parse_count(s)? {
        n if n <= u64::from(CREDIT_MAX) => Ok(n as u32),
        _ => Err(format!("'{s}' buffers is more than the limit of {CREDIT_MAX}")),
    }
}

/// `--exclusive-buffers`: 1 to [`CREDIT_MAX`]; a channel without exclusive credit could stall
/// forever.
pub fn parse_exclusive(s: &str) -> Result<u32, String> {
    match parse_credit(s)? {
        0 => Err(format!("'{s}': every channel needs at least 1 exclusive buffer, or it could stall forever")),
        n => Ok(n),
    }
}

/// A number of events or records, 1 to [`COUNT_MAX`].
pub fn parse_positive_count(s: &str) -> Result<u64, String> {
    parse_bounded(s, "events or records", COUNT_MAX)
}

/// Most TaskManager processes `--processes` starts on one machine.
pub const PROCESSES_MAX: u32 = 64;

/// Records per second per source subtask: at least 1, at most a billion.
pub fn parse_source_rate(s: &str) -> Result<u64, String> {
    match parse_count(s)? {
        0 => Err("a source rate must be at least 1 record per second".into()),
        n if n > 1_000_000_000 => Err(format!("{s} is above the limit of 1G records per second")),
        n => Ok(n),
    }
}

pub fn parse_processes(s: &str) -> Result<u32, String> {
    match parse_count(s)? {
        n if (1..=PROCESSES_MAX as u64).contains(&n) => Ok(n as u32),
        _ => Err(format!(
            "'{s}' is not a number of TaskManager processes: give 1 (one process, the default) up to {PROCESSES_MAX}"
        )),
    }
}

/// A data address to bind and tell the other TaskManagers: an IP address and a port (0 picks
/// a free one), not the unspecified address, which no peer can dial.
pub fn parse_data_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an IP:PORT address (examples: 10.0.0.1:0, [fd00::1]:7000)"))?;
    if addr.ip().is_unspecified() {
        return Err(format!(
            "'{s}' is the unspecified address, which the other TaskManagers cannot dial; give this host's address on \
             their network"
        ));
    }
    Ok(addr)
}

/// The name of a network namespace under /run/netns: not empty, no '/', not an option.
pub fn parse_netns_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the network namespace name is empty".into());
    }
    if s.contains('/') || s.starts_with('-') || s == "." || s == ".." || s.chars().any(char::is_control) {
        return Err(format!(
            "'{}' is not a network namespace name: a name of /run/netns has no '/', does not start with '-' and is not \
             '.' or '..'",
            s.escape_debug()
        ));
    }
    Ok(s.to_string())
}

/// A duration above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("duration '{s}' must be more than 0")),
        d => Ok(d),
    }
}

/// A duration: a number with unit ns, us, ms, s or m; a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (examples: 500us, 1ms, 2s)"))?;
    let nanos = match unit {
        "ns" => value,
        "us" | "µs" => value * 1e3,
        "ms" => value * 1e6,
        "s" => value * 1e9,
        "m" | "min" => value * 60e9,
        "" => return Err(format!("'{s}' needs a unit: ns, us, ms, s or m")),
        other => return Err(format!("'{s}' has an unknown unit '{other}' (use ns, us, ms, s or m)")),
    };
    if !nanos.is_finite() || !(0.0..=3.6e12).contains(&nanos) {
        return Err(format!("'{s}' is out of range (at most 1 hour)"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(parse_count("10M"), Ok(10_000_000));
        assert_eq!(parse_count("1_000"), Ok(1000));
        assert_eq!(parse_count("3k"), Ok(3000));
        assert!(parse_count("ten").unwrap_err().contains("not a count"));
        assert!(parse_slots("0").is_err());
        assert_eq!(parse_processes("2"), Ok(2));
        assert!(parse_processes("0").unwrap_err().contains("TaskManager processes"));
        assert!(parse_processes("65").is_err());
        assert_eq!(parse_count("1e6"), Ok(1_000_000));
        assert!(parse_count("1e15").is_ok());
        assert!(parse_count("1e20").unwrap_err().contains("too large"));
        assert!(parse_count("-1").unwrap_err().contains("not a count"));
        assert!(parse_count("+1").unwrap_err().contains("not a count"));
        assert!(parse_keys("1e15").unwrap_err().contains("limit of 100000000"));
        assert!(parse_keys("18446744073709551615").unwrap_err().contains("limit"));
        assert!(parse_positive_count("18446744073709551615").unwrap_err().contains("limit"));
        assert!(parse_parallelism("10000").unwrap_err().contains("limit of 128"));
        assert_eq!(parse_parallelism("128"), Ok(128));
        assert!(parse_network_buffers("4294967295").unwrap_err().contains("memory"));
    }

    #[test]
    fn watermark_skew_is_a_positive_duration_or_off() {
        assert_eq!(parse_watermark_skew("10s"), Ok(WatermarkSkew(Some(Duration::from_secs(10)))));
        assert_eq!(parse_watermark_skew("off"), Ok(WatermarkSkew(None)));
        let e = parse_watermark_skew("0").unwrap_err();
        assert!(e.contains("more than 0") && e.contains("'off'"), "{e}");
        assert!(parse_watermark_skew("soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn credit_options() {
        assert_eq!(parse_credit("0"), Ok(0));
        assert_eq!(parse_credit("1024"), Ok(1024));
        assert!(parse_credit("1025").unwrap_err().contains("limit of 1024"));
        assert!(parse_credit("many").unwrap_err().contains("not a count"));
        assert_eq!(parse_exclusive("4"), Ok(4));
        assert!(parse_exclusive("0").unwrap_err().contains("at least 1 exclusive buffer"));
    }

    #[test]
    fn placement_options() {
        assert_eq!(parse_data_addr("10.231.4.1:0"), Ok("10.231.4.1:0".parse().unwrap()));
        assert!(parse_data_addr("10.231.4.1").unwrap_err().contains("not an IP:PORT"));
        assert!(parse_data_addr("0.0.0.0:0").unwrap_err().contains("unspecified"));
        assert!(parse_data_addr("[::]:7000").unwrap_err().contains("unspecified"));
        assert_eq!(parse_netns_name("cs-b-7"), Ok("cs-b-7".to_string()));
        for bad in ["", "a/b", "-x", "..", "a\nb"] {
            assert!(parse_netns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5 parsecs").is_err());
    }
}
