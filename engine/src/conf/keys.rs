//! The table of configuration keys: for each its name, type and bounds, the field of
//! [`ClusterSettings`] it sets, its description and Flink's name for it. The loader checks
//! every key against this table, the reference (`docs/CONFIGURATION.md`) is rendered from it,
//! and the defaults it shows are read from `ClusterSettings::default()`, so none of the three
//! can disagree.

use std::path::PathBuf;
use std::time::Duration;

use super::settings::{ClusterSettings, RestartStrategyType};
use super::value::{check_host, format_duration, format_size, parse_duration, parse_size};
use crate::auth::ClusterSecret;
use crate::checkpoint::CheckpointMode;

/// Reads and writes one field of the settings.
pub(crate) struct At<T: 'static> {
    pub get: fn(&ClusterSettings) -> &T,
    pub get_mut: fn(&mut ClusterSettings) -> &mut T,
}

macro_rules! at {
    ($($f:ident).+) => {
        At { get: |s| &s.$($f).+, get_mut: |s| &mut s.$($f).+ }
    };
}

/// A key's type, bounds and field. Optional fields (`Opt*`) are unset by leaving the key out;
/// `unset` says what an unset field means.
pub(crate) enum Kind {
    Duration { at: At<Duration>, min: Duration, max: Duration },
    Size { at: At<u64>, min: u64, max: u64 },
    Count { at: At<u32>, min: u32, max: u32 },
    OptCount { at: At<Option<u32>>, min: u32, max: u32, unset: &'static str },
    Float { at: At<f64>, min: f64, min_exclusive: bool, max: f64 },
    Bool { at: At<bool> },
    Port { at: At<u16> },
    Host { at: At<String> },
    OptHost { at: At<Option<String>>, unset: &'static str },
    Strategy { at: At<Option<RestartStrategyType>> },
    OptPath { at: At<Option<PathBuf>> },
    Secret { at: At<Option<ClusterSecret>> },
    OptDuration { at: At<Option<Duration>>, min: Duration, max: Duration, unset: &'static str },
    Mode { at: At<CheckpointMode> },
}

/// Flink's key for the same setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flink {
    /// Flink has a key of the same name and meaning.
    Same,
    /// Flink's key of this name is the nearest equivalent.
    Named(&'static str),
    /// Flink has no such setting.
    Absent,
}

/// One configuration key.
pub(crate) struct KeySpec {
    pub name: &'static str,
    pub section: &'static str,
    pub kind: Kind,
    pub flink: Flink,
    pub description: &'static str,
}

/// A value as given: typed by TOML, or text (environment variables and overrides), which
/// each kind reads its own way.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Given {
    Text(String),
    Str(String),
    /// `None`: an integer beyond the range of `i64`.
    Int(Option<i64>),
    Float(f64),
    Bool(bool),
    /// A TOML value no key takes (array, date-time); the name of its type.
    Other(&'static str),
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const DAY: Duration = Duration::from_secs(86_400);
const KIB: u64 = 1 << 10;
const GIB: u64 = 1 << 30;
const CREDIT_MAX: u32 = 1024;

const JM: &str = "JobManager";
const REST: &str = "REST API";
const TM: &str = "TaskManager";
const NET: &str = "Data plane (network buffers and connections between TaskManagers)";
const HB: &str = "Heartbeats (JobManager and TaskManagers)";
const RS: &str = "Restart strategies";
const SEC: &str = "Security";
const CK: &str = "Checkpoints";

/// Every key, in the order of the reference.
pub(crate) static KEYS: &[KeySpec] = &[
    KeySpec {
        name: "jobmanager.rpc.address",
        section: JM,
        kind: Kind::Host { at: at!(jobmanager.rpc_address) },
        flink: Flink::Same,
        description: "Address of the JobManager's control plane: TaskManagers register there. Also the default of \
                      `rest.address` and `jobmanager.bind-host`.",
    },
    KeySpec {
        name: "jobmanager.rpc.port",
        section: JM,
        kind: Kind::Port { at: at!(jobmanager.rpc_port) },
        flink: Flink::Same,
        description: "Port of the JobManager's control plane. 0 lets the kernel choose (tests); a TaskManager \
                      needs a real port to dial.",
    },
    KeySpec {
        name: "jobmanager.bind-host",
        section: JM,
        kind: Kind::OptHost { at: at!(jobmanager.bind_host), unset: "same as `jobmanager.rpc.address`" },
        flink: Flink::Same,
        description: "Local address the control-plane listener binds, e.g. `0.0.0.0` when `jobmanager.rpc.address` \
                      is a name that resolves to no local interface (NAT, containers). Flink's default is \
                      `0.0.0.0`; corestream binds only the advertised address unless told otherwise.",
    },
    KeySpec {
        name: "slot.request.timeout",
        section: JM,
        kind: Kind::Duration { at: at!(jobmanager.slot_request_timeout), min: ms(10), max: DAY },
        flink: Flink::Same,
        description: "How long a job waits for the slots it needs (at submission and at every restart) before \
                      it fails.",
    },
    KeySpec {
        name: "rest.address",
        section: REST,
        kind: Kind::OptHost { at: at!(rest.address), unset: "same as `jobmanager.rpc.address`" },
        flink: Flink::Same,
        description: "Address clients use to reach the REST API (what the JobManager reports as its URL).",
    },
    KeySpec {
        name: "rest.port",
        section: REST,
        kind: Kind::Port { at: at!(rest.port) },
        flink: Flink::Same,
        description: "Port of the REST API; 0 lets the kernel choose.",
    },
    KeySpec {
        name: "rest.bind-address",
        section: REST,
        kind: Kind::Host { at: at!(rest.bind_address) },
        flink: Flink::Same,
        description: "Local address the REST listener binds. The default serves this machine only; set \
                      `0.0.0.0` to serve every interface (mutations still need the cluster secret, reads do \
                      not).",
    },
    KeySpec {
        name: "rest.server.max-content-length",
        section: REST,
        kind: Kind::Size { at: at!(rest.max_content_length), min: KIB, max: GIB },
        flink: Flink::Same,
        description: "Largest request body the REST server reads; a larger one is refused with 413. Flink's \
                      default is 100 MiB because it accepts uploaded jars; corestream's requests are small JSON \
                      documents.",
    },
    KeySpec {
        name: "taskmanager.numberOfTaskSlots",
        section: TM,
        kind: Kind::OptCount {
            at: at!(taskmanager.number_of_task_slots),
            min: 1,
            max: 1024,
            unset: "one per physical core",
        },
        flink: Flink::Same,
        description: "Slots this TaskManager offers; each is a thread pinned to a core. `--slots` sets it on the \
                      command line. Flink's default is 1.",
    },
    KeySpec {
        name: "taskmanager.host",
        section: TM,
        kind: Kind::OptHost {
            at: at!(taskmanager.host),
            unset: "the local address of the connection to the JobManager",
        },
        flink: Flink::Same,
        description: "Address this TaskManager advertises to the others for data connections. The default is \
                      the interface that reaches the JobManager, which is right unless the TaskManagers reach \
                      each other through another network or through NAT.",
    },
    KeySpec {
        name: "taskmanager.data.port",
        section: TM,
        kind: Kind::Port { at: at!(taskmanager.data_port) },
        flink: Flink::Same,
        description: "Port of the data listener (connections from other TaskManagers); 0 lets the kernel choose \
                      and the TaskManager reports the port it got when it registers.",
    },
    KeySpec {
        name: "taskmanager.bind-host",
        section: TM,
        kind: Kind::OptHost { at: at!(taskmanager.bind_host), unset: "the advertised address (`taskmanager.host`)" },
        flink: Flink::Same,
        description: "Local address the data listener binds. Peers only ever dial the advertised address, so \
                      binding exactly that one exposes nothing else (a TaskManager of a cluster on 127.0.0.1 \
                      stays on loopback). Set `0.0.0.0` when the advertised address is not a local one (NAT, \
                      containers). Flink binds `0.0.0.0` by default.",
    },
    KeySpec {
        name: "taskmanager.registration.timeout",
        section: TM,
        kind: Kind::Duration { at: at!(taskmanager.registration_timeout), min: ms(100), max: DAY },
        flink: Flink::Same,
        description: "How long a TaskManager keeps trying to reach and register with the JobManager before it \
                      exits with an error (at start and after losing the JobManager).",
    },
    KeySpec {
        name: "taskmanager.registration.initial-backoff",
        section: TM,
        kind: Kind::Duration { at: at!(taskmanager.registration_initial_backoff), min: ms(1), max: secs(60) },
        flink: Flink::Named("cluster.registration.initial-timeout"),
        description: "Wait after the first failed attempt to reach the JobManager; it doubles after each further \
                      failure up to `taskmanager.registration.max-backoff`.",
    },
    KeySpec {
        name: "taskmanager.registration.max-backoff",
        section: TM,
        kind: Kind::Duration { at: at!(taskmanager.registration_max_backoff), min: ms(1), max: secs(3600) },
        flink: Flink::Named("cluster.registration.max-timeout"),
        description: "Longest wait between two attempts to reach the JobManager.",
    },
    KeySpec {
        name: "taskmanager.slot.pin-cores",
        section: TM,
        kind: Kind::Bool { at: at!(taskmanager.slot.pin_cores) },
        flink: Flink::Absent,
        description: "Pin each slot thread to its own core (thread per core). Turn off only for debugging or on \
                      a machine shared with other busy processes.",
    },
    KeySpec {
        name: "taskmanager.slot.preempt-timer",
        section: TM,
        kind: Kind::Duration { at: at!(taskmanager.slot.preempt_timer), min: Duration::from_micros(1), max: secs(1) },
        flink: Flink::Absent,
        description: "Time slice after which a busy task yields to the other tasks of its slot.",
    },
    KeySpec {
        name: "taskmanager.slot.spin-before-park",
        section: TM,
        kind: Kind::Duration { at: at!(taskmanager.slot.spin_before_park), min: Duration::ZERO, max: secs(1) },
        flink: Flink::Absent,
        description: "How long an idle slot keeps polling for work before it sleeps in the kernel. 0 sleeps at \
                      once and leaves the core to others; a latency-sensitive deployment with a core per slot \
                      trades that core for a faster first record after a pause.",
    },
    KeySpec {
        name: "taskmanager.slot.io-memory",
        section: TM,
        kind: Kind::Size { at: at!(taskmanager.slot.io_memory), min: 64 * KIB, max: GIB },
        flink: Flink::Absent,
        description: "io_uring memory registered per slot executor; counts against `RLIMIT_MEMLOCK` (`ulimit -l`).",
    },
    KeySpec {
        name: "taskmanager.network.numberOfBuffers",
        section: NET,
        kind: Kind::OptCount {
            at: at!(taskmanager.network.number_of_buffers),
            min: 1,
            max: 1 << 25,
            unset: "auto: three all-to-all exchanges at full parallelism, at least 2048",
        },
        flink: Flink::Named("taskmanager.memory.network.fraction/min/max"),
        description: "32 KB buffers in the TaskManager's pool, shared by all its jobs; a job reserves what it \
                      needs before it starts. Untouched buffers cost address space, not memory. Flink \
                      deprecated this key and sizes its pool as a fraction of memory.",
    },
    KeySpec {
        name: "taskmanager.network.memory.buffers-per-channel",
        section: NET,
        kind: Kind::Count { at: at!(taskmanager.network.buffers_per_channel), min: 1, max: CREDIT_MAX },
        flink: Flink::Same,
        description: "Exclusive buffers (initial credit) of every input channel. At least 1, or a channel could \
                      stall forever.",
    },
    KeySpec {
        name: "taskmanager.network.memory.floating-buffers-per-gate",
        section: NET,
        kind: Kind::Count { at: at!(taskmanager.network.floating_buffers_per_gate), min: 0, max: CREDIT_MAX },
        flink: Flink::Same,
        description: "Buffers shared by the channels of an input gate, granted to channels that announce a \
                      backlog.",
    },
    KeySpec {
        name: "taskmanager.network.memory.max-buffers-per-channel",
        section: NET,
        kind: Kind::Count { at: at!(taskmanager.network.max_buffers_per_channel), min: 0, max: CREDIT_MAX },
        flink: Flink::Same,
        description: "Finished buffers a producer may queue per output channel before its task stops taking \
                      input (backpressure), not counting the buffer being filled. Unlike Flink's (default 10, \
                      which counts every buffer of the subpartition and may be exceeded by a record spanning \
                      buffers or a flat map), this limit is never exceeded: records never span buffers and \
                      a chain's output beyond it is parked. The default of 8 lets the floating buffers, granted \
                      by backlog, be used; 2 kept a remote channel's credit window near 4 buffers (0.55 GB/s \
                      against 1.45–1.68 GB/s with 8).",
    },
    KeySpec {
        name: "taskmanager.network.heartbeat.interval",
        section: NET,
        kind: Kind::Duration { at: at!(taskmanager.network.heartbeat_interval), min: ms(1), max: secs(3600) },
        flink: Flink::Absent,
        description: "A data connection on which this side sent nothing for this long sends a heartbeat.",
    },
    KeySpec {
        name: "taskmanager.network.heartbeat.timeout",
        section: NET,
        kind: Kind::Duration { at: at!(taskmanager.network.heartbeat_timeout), min: ms(1), max: DAY },
        flink: Flink::Absent,
        description: "A peer from which nothing arrived for this long is declared dead and the jobs using the \
                      connection fail; also the socket's `TCP_USER_TIMEOUT`. Must exceed \
                      `taskmanager.network.heartbeat.interval`.",
    },
    KeySpec {
        name: "taskmanager.network.connect.attempts",
        section: NET,
        kind: Kind::Count { at: at!(taskmanager.network.connect_attempts), min: 1, max: 1000 },
        flink: Flink::Named("taskmanager.network.retries"),
        description: "Attempts to open a data connection to another TaskManager before the job fails.",
    },
    KeySpec {
        name: "taskmanager.network.connect.initial-backoff",
        section: NET,
        kind: Kind::Duration { at: at!(taskmanager.network.connect_initial_backoff), min: ms(1), max: secs(60) },
        flink: Flink::Named("taskmanager.network.request-backoff.initial"),
        description: "Wait after the first failed connection attempt; it doubles after each further failure up to \
                      `taskmanager.network.connect.max-backoff`.",
    },
    KeySpec {
        name: "taskmanager.network.connect.max-backoff",
        section: NET,
        kind: Kind::Duration { at: at!(taskmanager.network.connect_max_backoff), min: ms(1), max: secs(3600) },
        flink: Flink::Named("taskmanager.network.request-backoff.max"),
        description: "Longest wait between two connection attempts.",
    },
    KeySpec {
        name: "taskmanager.network.accept-timeout",
        section: NET,
        kind: Kind::Duration { at: at!(taskmanager.network.accept_timeout), min: ms(1), max: secs(3600) },
        flink: Flink::Absent,
        description: "How long a TaskManager waits for a peer that should dial it (of two TaskManagers, the one \
                      with the lower index dials) before the job fails.",
    },
    KeySpec {
        name: "taskmanager.network.open-timeout",
        section: NET,
        kind: Kind::Duration { at: at!(taskmanager.network.open_timeout), min: ms(1), max: secs(3600) },
        flink: Flink::Absent,
        description: "How long a job's channels on a shared data connection wait for the peer TaskManager to \
                      deploy the same job before the job fails there.",
    },
    KeySpec {
        name: "heartbeat.interval",
        section: HB,
        kind: Kind::Duration { at: at!(heartbeat.interval), min: ms(10), max: secs(3600) },
        flink: Flink::Same,
        description: "How often the JobManager and each TaskManager send each other a heartbeat.",
    },
    KeySpec {
        name: "heartbeat.timeout",
        section: HB,
        kind: Kind::Duration { at: at!(heartbeat.timeout), min: ms(10), max: DAY },
        flink: Flink::Same,
        description: "A TaskManager (or JobManager) not heard from for this long is declared lost: its slots are \
                      released and the jobs that ran there fail over. Must exceed `heartbeat.interval`.",
    },
    KeySpec {
        name: "restart-strategy.type",
        section: RS,
        kind: Kind::Strategy { at: at!(restart.strategy) },
        flink: Flink::Same,
        description: "What happens to a job whose task failed: `none` (the job fails; Flink's aliases `off` and \
                      `disable` are accepted), `fixed-delay`, `exponential-delay` or `failure-rate` (also \
                      written `fixeddelay`, `exponentialdelay`, `failurerate`). A failure that no retry can help \
                      (an invalid job) is never restarted. Unset, as in Flink: `exponential-delay` for a job with \
                      checkpoints (it restarts from its latest checkpoint), `none` for a job without (a restart \
                      would start it over). A submission may choose another (`--restart-strategy`).",
    },
    KeySpec {
        name: "restart-strategy.fixed-delay.attempts",
        section: RS,
        kind: Kind::Count { at: at!(restart.fixed_delay.attempts), min: 0, max: i32::MAX as u32 },
        flink: Flink::Same,
        description: "`fixed-delay`: restarts over the job's whole life before it fails for good.",
    },
    KeySpec {
        name: "restart-strategy.fixed-delay.delay",
        section: RS,
        kind: Kind::Duration { at: at!(restart.fixed_delay.delay), min: Duration::ZERO, max: DAY },
        flink: Flink::Same,
        description: "`fixed-delay`: wait between a failure and the restart.",
    },
    KeySpec {
        name: "restart-strategy.exponential-delay.initial-backoff",
        section: RS,
        kind: Kind::Duration { at: at!(restart.exponential_delay.initial_backoff), min: ms(1), max: DAY },
        flink: Flink::Same,
        description: "`exponential-delay`: wait before the first restart, and again after a reset.",
    },
    KeySpec {
        name: "restart-strategy.exponential-delay.max-backoff",
        section: RS,
        kind: Kind::Duration { at: at!(restart.exponential_delay.max_backoff), min: ms(1), max: DAY },
        flink: Flink::Same,
        description: "`exponential-delay`: longest wait before a restart, jitter included.",
    },
    KeySpec {
        name: "restart-strategy.exponential-delay.backoff-multiplier",
        section: RS,
        kind: Kind::Float {
            at: at!(restart.exponential_delay.backoff_multiplier),
            min: 1.0,
            min_exclusive: true,
            max: 1000.0,
        },
        flink: Flink::Same,
        description: "`exponential-delay`: the wait before restart n is `initial-backoff` × multiplierⁿ⁻¹ (capped \
                      at `max-backoff`).",
    },
    KeySpec {
        name: "restart-strategy.exponential-delay.reset-backoff-threshold",
        section: RS,
        kind: Kind::Duration {
            at: at!(restart.exponential_delay.reset_backoff_threshold),
            min: ms(1),
            max: Duration::from_secs(365 * 86_400),
        },
        flink: Flink::Same,
        description: "`exponential-delay`: a failure this long after the last restart was due starts again at \
                      `initial-backoff` with a fresh count of attempts.",
    },
    KeySpec {
        name: "restart-strategy.exponential-delay.jitter-factor",
        section: RS,
        kind: Kind::Float {
            at: at!(restart.exponential_delay.jitter_factor),
            min: 0.0,
            min_exclusive: false,
            max: 1.0,
        },
        flink: Flink::Same,
        description: "`exponential-delay`: each wait varies at random by up to ± this fraction of it, so jobs \
                      that failed together do not restart together.",
    },
    KeySpec {
        name: "restart-strategy.exponential-delay.attempts-before-reset-backoff",
        section: RS,
        kind: Kind::OptCount {
            at: at!(restart.exponential_delay.attempts_before_reset_backoff),
            min: 1,
            max: i32::MAX as u32,
            unset: "unbounded",
        },
        flink: Flink::Same,
        description: "`exponential-delay`: restarts allowed between two resets (see `reset-backoff-threshold`); \
                      one more failure fails the job for good.",
    },
    KeySpec {
        name: "restart-strategy.failure-rate.max-failures-per-interval",
        section: RS,
        kind: Kind::Count { at: at!(restart.failure_rate.max_failures_per_interval), min: 1, max: 10_000 },
        flink: Flink::Same,
        description: "`failure-rate`: more failures than this within `failure-rate-interval` fail the job for \
                      good.",
    },
    KeySpec {
        name: "restart-strategy.failure-rate.failure-rate-interval",
        section: RS,
        kind: Kind::Duration {
            at: at!(restart.failure_rate.failure_rate_interval),
            min: ms(1),
            max: Duration::from_secs(365 * 86_400),
        },
        flink: Flink::Same,
        description: "`failure-rate`: the window in which failures are counted.",
    },
    KeySpec {
        name: "restart-strategy.failure-rate.delay",
        section: RS,
        kind: Kind::Duration { at: at!(restart.failure_rate.delay), min: Duration::ZERO, max: DAY },
        flink: Flink::Same,
        description: "`failure-rate`: wait between a failure and the restart.",
    },
    KeySpec {
        name: "security.auth.enabled",
        section: SEC,
        kind: Kind::Bool { at: at!(security.auth_enabled) },
        flink: Flink::Absent,
        description: "Require the cluster secret: TaskManagers prove it to the JobManager and to each other \
                      (HMAC-SHA256 over both sides' nonces), and REST requests that change something send \
                      `Authorization: Bearer <secret>`. With it on, a JobManager or TaskManager refuses to \
                      start without a secret. Turning it off lets anyone who reaches the ports submit and cancel \
                      jobs and join the cluster.",
    },
    KeySpec {
        name: "security.cluster.secret",
        section: SEC,
        kind: Kind::Secret { at: at!(security.cluster_secret) },
        flink: Flink::Absent,
        description: "The cluster's shared secret, inline: visible ASCII without blanks, at most 4096 bytes (16 or \
                      more random characters, e.g. `openssl rand -hex 32`). Never printed or logged. Prefer \
                      `security.cluster.secret-file` or the environment variable \
                      `CORESTREAM_CONF_SECURITY_CLUSTER_SECRET` to keeping it in a configuration file.",
    },
    KeySpec {
        name: "security.cluster.secret-file",
        section: SEC,
        kind: Kind::OptPath { at: at!(security.cluster_secret_file) },
        flink: Flink::Absent,
        description: "A file holding the shared secret (one trailing newline is removed; a relative path is \
                      relative to the process's working directory). A file every user may read is accepted \
                      with a warning. Set this or `security.cluster.secret`, not both.",
    },
    KeySpec {
        name: "execution.checkpointing.interval",
        section: CK,
        kind: Kind::OptDuration { at: at!(checkpoint.interval), min: ms(10), max: DAY, unset: "no checkpoints" },
        flink: Flink::Same,
        description: "Time between the starts of two periodic checkpoints of a job. Unset: jobs take no \
                      checkpoints (and a failed job restarts from its beginning).",
    },
    KeySpec {
        name: "execution.checkpointing.timeout",
        section: CK,
        kind: Kind::Duration { at: at!(checkpoint.timeout), min: ms(10), max: DAY },
        flink: Flink::Same,
        description: "A checkpoint not complete after this long is aborted and counts as a failed checkpoint.",
    },
    KeySpec {
        name: "execution.checkpointing.min-pause",
        section: CK,
        kind: Kind::Duration { at: at!(checkpoint.min_pause), min: Duration::ZERO, max: DAY },
        flink: Flink::Same,
        description: "Least time between the completion of a checkpoint and the trigger of the next.",
    },
    KeySpec {
        name: "execution.checkpointing.max-concurrent-checkpoints",
        section: CK,
        kind: Kind::Count { at: at!(checkpoint.max_concurrent), min: 1, max: 64 },
        flink: Flink::Same,
        description: "Checkpoints in progress at once, at most.",
    },
    KeySpec {
        name: "execution.checkpointing.tolerable-failed-checkpoints",
        section: CK,
        kind: Kind::Count { at: at!(checkpoint.tolerable_failures), min: 0, max: i32::MAX as u32 },
        flink: Flink::Same,
        description: "Consecutive failed checkpoints (declined, expired, or not written) a job survives; one \
                      more fails the job, which then restarts by its restart strategy.",
    },
    KeySpec {
        name: "execution.checkpointing.num-retained",
        section: CK,
        kind: Kind::Count { at: at!(checkpoint.retained), min: 1, max: 1000 },
        flink: Flink::Same,
        description: "Completed checkpoints kept in the checkpoint directory; older ones are deleted. The \
                      newest is never deleted.",
    },
    KeySpec {
        name: "execution.checkpointing.mode",
        section: CK,
        kind: Kind::Mode { at: at!(checkpoint.mode) },
        flink: Flink::Same,
        description: "`exactly-once` (barriers aligned, or unaligned) or `at-least-once` (barriers only \
                      counted: nothing waits, and records may be replayed twice after a failure).",
    },
    KeySpec {
        name: "execution.checkpointing.unaligned.enabled",
        section: CK,
        kind: Kind::Bool { at: at!(checkpoint.unaligned) },
        flink: Flink::Same,
        description: "Exactly-once only: barriers overtake in-flight data, which is stored with the \
                      checkpoint, so checkpoints complete quickly under backpressure.",
    },
    KeySpec {
        name: "execution.checkpointing.aligned-checkpoint-timeout",
        section: CK,
        kind: Kind::Duration { at: at!(checkpoint.aligned_timeout), min: Duration::ZERO, max: DAY },
        flink: Flink::Same,
        description: "With unaligned checkpoints: start each checkpoint aligned and switch to unaligned once \
                      alignment has taken this long; zero starts unaligned.",
    },
    KeySpec {
        name: "execution.checkpointing.dir",
        section: CK,
        kind: Kind::OptPath { at: at!(checkpoint.dir) },
        flink: Flink::Same,
        description: "Directory of a job's checkpoints, shared by every machine of the cluster (one job per \
                      directory). Required when checkpoints are on.",
    },
    KeySpec {
        name: "execution.checkpointing.savepoint-dir",
        section: CK,
        kind: Kind::OptPath { at: at!(checkpoint.savepoint_dir) },
        flink: Flink::Same,
        description: "Where savepoints go when their trigger names no directory (each in a directory \
                      savepoint-<job>-<random> of its own).",
    },
];

/// The key of this name.
pub(crate) fn find(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// The environment variable that sets a key: `CORESTREAM_CONF_` and the key upper-cased, with
/// `.` and `-` as `_`.
pub fn env_var_name(key: &str) -> String {
    let tail: String = key.chars().map(|c| if c == '.' || c == '-' { '_' } else { c.to_ascii_uppercase() }).collect();
    format!("{}{tail}", super::ENV_PREFIX)
}

fn range<T: std::fmt::Display>(min: T, max: T) -> String {
    format!("from {min} to {max}")
}

fn integer(given: &Given, expected: &str) -> Result<i64, String> {
    match given {
        Given::Int(Some(n)) => Ok(*n),
        Given::Text(t) => t.trim().parse::<i64>().map_err(|_| expected.to_string()),
        Given::Str(_) => Err(format!("{expected} (a number, without quotes)")),
        _ => Err(expected.to_string()),
    }
}

fn text<'g>(given: &'g Given, expected: &str) -> Result<&'g str, String> {
    match given {
        Given::Text(t) | Given::Str(t) => Ok(t),
        _ => Err(format!("{expected} (in quotes)")),
    }
}

impl Kind {
    /// Whether the key's value must never be shown.
    pub(crate) fn is_secret(&self) -> bool {
        matches!(self, Kind::Secret { .. })
    }

    /// Sets the field from a value, or says what was expected.
    pub(crate) fn assign(&self, key: &str, s: &mut ClusterSettings, given: &Given) -> Result<(), String> {
        match self {
            Kind::Duration { at, min, max } => *(at.get_mut)(s) = bounded_duration(given, *min, *max)?,
            Kind::Size { at, min, max } => {
                let expected = format!("a size {}", range(format_size(*min), format_size(*max)));
                let b = match given {
                    Given::Int(Some(n)) => {
                        return Err(format!("a size with a unit: write e.g. \"{n} b\" or \"{n} KiB\""))
                    }
                    _ => parse_size(text(given, &expected)?)?,
                };
                if b < *min || b > *max {
                    return Err(expected);
                }
                *(at.get_mut)(s) = b;
            }
            Kind::Count { at, min, max } => *(at.get_mut)(s) = count(given, *min, *max)?,
            Kind::OptCount { at, min, max, .. } => *(at.get_mut)(s) = Some(count(given, *min, *max)?),
            Kind::Float { at, min, min_exclusive, max } => {
                let low = if *min_exclusive { format!("greater than {min}") } else { format!("from {min}") };
                let expected = format!("a number {low} to {max}");
                let v = match given {
                    Given::Float(f) => *f,
                    Given::Int(Some(n)) => *n as f64,
                    Given::Text(t) => t.trim().parse::<f64>().map_err(|_| expected.clone())?,
                    Given::Str(_) => return Err(format!("{expected} (without quotes)")),
                    _ => return Err(expected),
                };
                let above_min = if *min_exclusive { v > *min } else { v >= *min };
                if !v.is_finite() || !above_min || v > *max {
                    return Err(expected);
                }
                *(at.get_mut)(s) = v;
            }
            Kind::Bool { at } => {
                *(at.get_mut)(s) = match given {
                    Given::Bool(b) => *b,
                    Given::Text(t) if t.trim().eq_ignore_ascii_case("true") => true,
                    Given::Text(t) if t.trim().eq_ignore_ascii_case("false") => false,
                    Given::Str(_) => return Err("true or false (without quotes)".into()),
                    _ => return Err("true or false".into()),
                }
            }
            Kind::Port { at } => *(at.get_mut)(s) = count(given, 0, u16::MAX as u32)? as u16,
            Kind::Host { at } => {
                let h = text(given, "a host name or IP address")?;
                check_host(h)?;
                *(at.get_mut)(s) = h.to_string();
            }
            Kind::OptHost { at, .. } => {
                let h = text(given, "a host name or IP address")?;
                check_host(h)?;
                *(at.get_mut)(s) = Some(h.to_string());
            }
            Kind::Strategy { at } => {
                let names: Vec<&str> = RestartStrategyType::NAMES.iter().map(|(n, _)| *n).collect();
                let expected = format!("one of {}", names.join(", "));
                let t = text(given, &expected)?;
                *(at.get_mut)(s) = Some(RestartStrategyType::parse(t).ok_or(expected)?);
            }
            Kind::OptPath { at } => {
                let p = text(given, "a file path")?;
                if p.is_empty() {
                    return Err("a file path (not empty)".into());
                }
                *(at.get_mut)(s) = Some(PathBuf::from(p));
            }
            Kind::OptDuration { at, min, max, .. } => *(at.get_mut)(s) = Some(bounded_duration(given, *min, *max)?),
            Kind::Mode { at } => {
                let expected = "`exactly-once` or `at-least-once`";
                let t = text(given, expected)?;
                *(at.get_mut)(s) = CheckpointMode::parse(t).ok_or(expected)?;
            }
            Kind::Secret { at } => {
                let t = text(given, "the secret as a string")?;
                let secret = ClusterSecret::new(t, key).map_err(|e| match e {
                    crate::auth::AuthError::InvalidSecret { reason, .. } => {
                        format!("a valid secret, but the value {reason}")
                    }
                    other => other.to_string(),
                })?;
                *(at.get_mut)(s) = Some(secret);
            }
        }
        Ok(())
    }

    /// The field's value as its key would be written (without TOML quotes); an unset optional
    /// field gives `None`.
    pub(crate) fn render(&self, s: &ClusterSettings) -> Option<String> {
        Some(match self {
            Kind::Duration { at, .. } => format_duration(*(at.get)(s)),
            Kind::Size { at, .. } => format_size(*(at.get)(s)),
            Kind::Count { at, .. } => (at.get)(s).to_string(),
            Kind::OptCount { at, .. } => (at.get)(s).as_ref()?.to_string(),
            Kind::Float { at, .. } => (at.get)(s).to_string(),
            Kind::Bool { at } => (at.get)(s).to_string(),
            Kind::Port { at } => (at.get)(s).to_string(),
            Kind::Host { at } => (at.get)(s).clone(),
            Kind::OptHost { at, .. } => (at.get)(s).clone()?,
            Kind::Strategy { at } => (at.get)(s).as_ref()?.name().to_string(),
            Kind::OptPath { at } => (at.get)(s).as_ref()?.display().to_string(),
            Kind::OptDuration { at, .. } => format_duration((*(at.get)(s))?),
            Kind::Mode { at } => (at.get)(s).to_string(),
            Kind::Secret { at } => {
                (at.get)(s).as_ref()?;
                "(set, not shown)".to_string()
            }
        })
    }

    /// What an unset optional field means.
    pub(crate) fn unset(&self) -> &'static str {
        match self {
            Kind::OptCount { unset, .. } | Kind::OptHost { unset, .. } | Kind::OptDuration { unset, .. } => unset,
            Kind::Strategy { .. } => "`none`, or `exponential-delay` for a job with checkpoints",
            _ => "not set",
        }
    }

    /// The type and bounds, for the reference.
    pub(crate) fn type_doc(&self) -> String {
        match self {
            Kind::Duration { min, max, .. } => {
                format!("duration, {} to {}", format_duration(*min), format_duration(*max))
            }
            Kind::Size { min, max, .. } => format!("size, {} to {}", format_size(*min), format_size(*max)),
            Kind::Count { min, max, .. } | Kind::OptCount { min, max, .. } => format!("integer, {min} to {max}"),
            Kind::Float { min, min_exclusive: true, max, .. } => format!("number, > {min} to {max}"),
            Kind::Float { min, max, .. } => format!("number, {min} to {max}"),
            Kind::Bool { .. } => "boolean".into(),
            Kind::Port { .. } => "port, 0 to 65535".into(),
            Kind::Host { .. } | Kind::OptHost { .. } => "host name or IP address".into(),
            Kind::Strategy { .. } => "`none`, `fixed-delay`, `exponential-delay` or `failure-rate`".into(),
            Kind::OptPath { .. } => "file path".into(),
            Kind::Secret { .. } => "string (secret)".into(),
            Kind::OptDuration { min, max, .. } => {
                format!("duration, {} to {}", format_duration(*min), format_duration(*max))
            }
            Kind::Mode { .. } => "`exactly-once` or `at-least-once`".into(),
        }
    }
}

fn bounded_duration(given: &Given, min: Duration, max: Duration) -> Result<Duration, String> {
    let expected = format!("a duration {}", range(format_duration(min), format_duration(max)));
    let d = match given {
        Given::Int(Some(n)) => return Err(format!("a duration with a unit: write e.g. \"{n} s\" or \"{n} ms\"")),
        _ => parse_duration(text(given, &expected)?)?,
    };
    if d < min || d > max {
        return Err(expected);
    }
    Ok(d)
}

fn count(given: &Given, min: u32, max: u32) -> Result<u32, String> {
    let expected = format!("an integer {}", range(min, max));
    let n = integer(given, &expected)?;
    u32::try_from(n).ok().filter(|n| (min..=max).contains(n)).ok_or(expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_environment_variables_are_unique() {
        let names: HashSet<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KEYS.len());
        let vars: HashSet<String> = KEYS.iter().map(|k| env_var_name(k.name)).collect();
        assert_eq!(vars.len(), KEYS.len(), "two keys share an environment variable");
        assert_eq!(env_var_name("taskmanager.numberOfTaskSlots"), "CORESTREAM_CONF_TASKMANAGER_NUMBEROFTASKSLOTS");
        assert_eq!(env_var_name("rest.server.max-content-length"), "CORESTREAM_CONF_REST_SERVER_MAX_CONTENT_LENGTH");
    }

    #[test]
    fn every_default_is_within_its_bounds_and_reads_back() {
        for key in KEYS {
            let defaults = ClusterSettings::default();
            let Some(shown) = key.kind.render(&defaults) else { continue };
            if key.kind.is_secret() {
                continue;
            }
            let mut s = ClusterSettings::default();
            key.kind.assign(key.name, &mut s, &Given::Text(shown.clone())).unwrap_or_else(|e| {
                panic!("default of {} ({shown}) does not read back: {e}", key.name);
            });
            assert_eq!(s, defaults, "{}: reading back {shown} changed the settings", key.name);
        }
    }

    #[test]
    fn every_key_sets_its_own_field() {
        for key in KEYS {
            let before = ClusterSettings::default();
            let mut after = before.clone();
            let value = match &key.kind {
                Kind::Duration { max, .. } => format_duration(*max),
                Kind::Size { max, .. } => format_size(*max),
                Kind::Count { min, max, .. } | Kind::OptCount { min, max, .. } => {
                    let default = key.kind.render(&before);
                    if default.as_deref() == Some(&max.to_string()) { min } else { max }.to_string()
                }
                Kind::Float { max, .. } => max.to_string(),
                Kind::Bool { at } => (!(at.get)(&before)).to_string(),
                Kind::Port { .. } => "1".into(),
                Kind::Host { .. } | Kind::OptHost { .. } => "10.1.2.3".into(),
                Kind::Strategy { .. } => "failure-rate".into(),
                Kind::OptPath { .. } => "/etc/corestream/secret".into(),
                Kind::Secret { .. } => "0123456789abcdef".into(),
                Kind::OptDuration { max, .. } => format_duration(*max),
                Kind::Mode { .. } => "at-least-once".into(),
            };
            key.kind.assign(key.name, &mut after, &Given::Text(value.clone())).unwrap();
            assert_ne!(before, after, "{} = {value} changed nothing", key.name);
            let changed = KEYS.iter().filter(|k| k.kind.render(&before) != k.kind.render(&after)).count();
            assert_eq!(changed, 1, "{} = {value} changed {changed} keys", key.name);
        }
    }
}
