//! The typed settings of a cluster process: one plain struct per part of the cluster, every
//! field a typed value, `Default` the documented defaults. The key table ([`super::keys`])
//! reads and writes these fields by name; nothing else in the configuration knows their layout.

use std::path::PathBuf;
use std::time::Duration;

use corestream_netstack::transport::NetConfig;
use corestream_netstack::CreditConfig;

use crate::auth::ClusterSecret;
use crate::config::ClusterConfig;

/// Everything a JobManager, TaskManager or client process reads from its configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterSettings {
    pub jobmanager: JobManagerSettings,
    pub rest: RestApiSettings,
    pub taskmanager: TaskManagerSettings,
    /// Heartbeats between the JobManager and its TaskManagers (control plane).
    pub heartbeat: HeartbeatSettings,
    pub restart: RestartSettings,
    /// Defaults of every job's checkpoints (a submission or `run` may override each).
    pub checkpoint: CheckpointSettings,
    pub security: SecuritySettings,
}

/// Where the JobManager's control plane listens and how long jobs wait for slots.
#[derive(Debug, Clone, PartialEq)]
pub struct JobManagerSettings {
    /// Address TaskManagers and clients use to reach the JobManager's control plane.
    pub rpc_address: String,
    pub rpc_port: u16,
    /// Address the control-plane listener binds; `None`: [`Self::rpc_address`].
    pub bind_host: Option<String>,
    /// How long a job waits for the slots it asked for before it fails.
    pub slot_request_timeout: Duration,
}

impl Default for JobManagerSettings {
    fn default() -> Self {
        Self {
            rpc_address: "127.0.0.1".into(),
            rpc_port: 6123,
            bind_host: None,
            slot_request_timeout: Duration::from_secs(5 * 60),
        }
    }
}

impl JobManagerSettings {
    /// The address the control-plane listener binds.
    pub fn bind_host(&self) -> &str {
        self.bind_host.as_deref().unwrap_or(&self.rpc_address)
    }
}

/// The REST API of the JobManager.
#[derive(Debug, Clone, PartialEq)]
pub struct RestApiSettings {
    /// Address clients use to reach the REST API; `None`: `jobmanager.rpc.address`
    /// ([`ClusterSettings::rest_address`]).
    pub address: Option<String>,
    pub port: u16,
    /// Address the REST listener binds.
    pub bind_address: String,
    /// Largest request body the server reads, in bytes.
    pub max_content_length: u64,
}

impl Default for RestApiSettings {
    fn default() -> Self {
        Self { address: None, port: 8081, bind_address: "127.0.0.1".into(), max_content_length: 1 << 20 }
    }
}

/// A TaskManager process: its slots, its data address, its registration with the JobManager.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskManagerSettings {
    /// Slots offered to the JobManager; `None`: one per physical core, resolved by the caller.
    pub number_of_task_slots: Option<u32>,
    /// Address advertised to other TaskManagers for data connections; `None`: the local
    /// address of this TaskManager's connection to the JobManager.
    pub host: Option<String>,
    /// Port of the data listener; 0 lets the kernel choose.
    pub data_port: u16,
    /// Address the data listener binds; `None`: the advertised address ([`Self::host`] or its
    /// default), so the listener is reachable exactly where peers are told to dial.
    pub bind_host: Option<String>,
    /// How long a TaskManager tries to register before it exits.
    pub registration_timeout: Duration,
    /// Wait after the first failed registration attempt; doubles after each failure ...
    pub registration_initial_backoff: Duration,
    /// ... up to this.
    pub registration_max_backoff: Duration,
    pub slot: SlotSettings,
    pub network: NetworkSettings,
}

impl Default for TaskManagerSettings {
    fn default() -> Self {
        Self {
            number_of_task_slots: None,
            host: None,
            data_port: 0,
            bind_host: None,
            registration_timeout: Duration::from_secs(5 * 60),
            registration_initial_backoff: Duration::from_millis(100),
            registration_max_backoff: Duration::from_secs(30),
            slot: SlotSettings::default(),
            network: NetworkSettings::default(),
        }
    }
}

/// The slot threads of a TaskManager (see [`ClusterConfig`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotSettings {
    /// Pin each slot thread to a core.
    pub pin_cores: bool,
    /// Time slice after which a busy task yields to the other tasks of its slot.
    pub preempt_timer: Duration,
    /// How long an idle slot polls before it sleeps in the kernel; zero sleeps at once.
    pub spin_before_park: Duration,
    /// Registered io_uring memory per slot executor, in bytes (counts against RLIMIT_MEMLOCK).
    pub io_memory: u64,
}

impl Default for SlotSettings {
    fn default() -> Self {
        let local = ClusterConfig::default();
        Self {
            pin_cores: local.pin_slots,
            preempt_timer: local.preempt_timer,
            spin_before_park: local.spin_before_park.unwrap_or(Duration::ZERO),
            io_memory: local.io_memory_bytes as u64,
        }
    }
}

/// The data plane of a TaskManager: its buffer pool, credit, and connections to other
/// TaskManagers.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSettings {
    /// 32 KB buffers in the pool; `None`: sized from the slots ([`crate::config::auto_network_buffers`]).
    pub number_of_buffers: Option<u32>,
    /// Exclusive buffers per input channel (initial credit).
    pub buffers_per_channel: u32,
    /// Floating buffers per input gate.
    pub floating_buffers_per_gate: u32,
    /// Finished buffers a producer may queue per channel before it stops taking input.
    pub max_buffers_per_channel: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub connect_attempts: u32,
    pub connect_initial_backoff: Duration,
    pub connect_max_backoff: Duration,
    pub accept_timeout: Duration,
    pub open_timeout: Duration,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        let credit = CreditConfig::default();
        let net = NetConfig::default();
        Self {
            number_of_buffers: None,
            buffers_per_channel: credit.exclusive_per_channel,
            floating_buffers_per_gate: credit.floating_per_gate,
            max_buffers_per_channel: credit.max_backlog_per_channel,
            heartbeat_interval: net.heartbeat_interval,
            heartbeat_timeout: net.heartbeat_timeout,
            connect_attempts: net.connect_attempts,
            connect_initial_backoff: net.connect_backoff_initial,
            connect_max_backoff: net.connect_backoff_max,
            accept_timeout: net.accept_timeout,
            open_timeout: net.open_timeout,
        }
    }
}

impl NetworkSettings {
    /// The credit settings of every exchange.
    pub fn credit(&self) -> CreditConfig {
        CreditConfig {
            exclusive_per_channel: self.buffers_per_channel,
            floating_per_gate: self.floating_buffers_per_gate,
            max_backlog_per_channel: self.max_buffers_per_channel,
        }
    }

    /// The settings of the connections between TaskManagers.
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            connect_attempts: self.connect_attempts,
            connect_backoff_initial: self.connect_initial_backoff,
            connect_backoff_max: self.connect_max_backoff,
            accept_timeout: self.accept_timeout,
            open_timeout: self.open_timeout,
        }
    }
}

/// Heartbeats between the JobManager and its TaskManagers.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatSettings {
    pub interval: Duration,
    /// A peer not heard from for this long is declared dead.
    pub timeout: Duration,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10), timeout: Duration::from_secs(50) }
    }
}

/// Which restart strategy a failed job gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartStrategyType {
    /// A failed job stays failed.
    #[default]
    None,
    FixedDelay,
    ExponentialDelay,
    FailureRate,
}

impl RestartStrategyType {
    /// Canonical names, then Flink's aliases; compared without regard to case.
    pub(crate) const NAMES: &'static [(&'static str, RestartStrategyType)] = &[
        ("none", Self::None),
        ("fixed-delay", Self::FixedDelay),
        ("exponential-delay", Self::ExponentialDelay),
        ("failure-rate", Self::FailureRate),
        ("off", Self::None),
        ("disable", Self::None),
        ("fixeddelay", Self::FixedDelay),
        ("exponentialdelay", Self::ExponentialDelay),
        ("failurerate", Self::FailureRate),
    ];

    /// The canonical name (`restart-strategy.type`'s value).
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::FixedDelay => "fixed-delay",
            Self::ExponentialDelay => "exponential-delay",
            Self::FailureRate => "failure-rate",
        }
    }

    /// Reads a name or one of Flink's aliases (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        let lower = text.trim().to_ascii_lowercase();
        Self::NAMES.iter().find(|(n, _)| *n == lower).map(|(_, t)| *t)
    }
}

/// `execution.checkpointing.*`: how jobs take checkpoints, with Flink's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointSettings {
    /// Time between the starts of two periodic checkpoints; `None`: no checkpoints.
    pub interval: Option<Duration>,
    /// A checkpoint not complete after this long is aborted.
    pub timeout: Duration,
    /// Least time from the completion of one checkpoint to the trigger of the next.
    pub min_pause: Duration,
    pub max_concurrent: u32,
    /// Consecutive failed checkpoints a job survives; one more fails it.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept; older ones are deleted.
    pub retained: u32,
    pub mode: crate::checkpoint::CheckpointMode,
    pub unaligned: bool,
    /// With `unaligned`: checkpoints start aligned and switch to unaligned after this long
    /// (zero: unaligned from the start).
    pub aligned_timeout: Duration,
    /// Where checkpoints are written (shared by every machine of a cluster).
    pub dir: Option<PathBuf>,
    /// Where a savepoint goes when its trigger names no directory.
    pub savepoint_dir: Option<PathBuf>,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: 0,
            retained: 1,
            mode: crate::checkpoint::CheckpointMode::ExactlyOnce,
            unaligned: false,
            aligned_timeout: Duration::ZERO,
            dir: None,
            savepoint_dir: None,
        }
    }
}

impl CheckpointSettings {
    /// How the tasks handle barriers under these settings.
    pub fn barrier_options(&self) -> crate::checkpoint::BarrierOptions {
        let exactly_once = self.mode == crate::checkpoint::CheckpointMode::ExactlyOnce;
        crate::checkpoint::BarrierOptions {
            mode: self.mode,
            unaligned: exactly_once && self.unaligned,
            aligned_timeout: (exactly_once && self.unaligned && !self.aligned_timeout.is_zero())
                .then_some(self.aligned_timeout),
            savepoint: false,
        }
    }
}

/// `restart-strategy.*`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestartSettings {
    /// `None`: `none` for a job without checkpoints, `exponential-delay` for one with (Flink's
    /// defaults).
    pub strategy: Option<RestartStrategyType>,
    pub fixed_delay: FixedDelaySettings,
    pub exponential_delay: ExponentialDelaySettings,
    pub failure_rate: FailureRateSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FixedDelaySettings {
    /// Restarts before the job fails for good (over the job's whole life).
    pub attempts: u32,
    pub delay: Duration,
}

impl Default for FixedDelaySettings {
    fn default() -> Self {
        Self { attempts: 1, delay: Duration::from_secs(1) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExponentialDelaySettings {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    /// A job that ran this long since its last restart starts again at the initial backoff.
    pub reset_backoff_threshold: Duration,
    /// The delay varies by up to ± this fraction of the backoff.
    pub jitter_factor: f64,
    /// Restarts allowed before a reset; `None`: unbounded.
    pub attempts_before_reset_backoff: Option<u32>,
}

impl Default for ExponentialDelaySettings {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            backoff_multiplier: 1.5,
            reset_backoff_threshold: Duration::from_secs(3600),
            jitter_factor: 0.1,
            attempts_before_reset_backoff: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailureRateSettings {
    /// More failures than this within [`Self::failure_rate_interval`] fail the job for good.
    pub max_failures_per_interval: u32,
    pub failure_rate_interval: Duration,
    pub delay: Duration,
}

impl Default for FailureRateSettings {
    fn default() -> Self {
        Self {
            max_failures_per_interval: 1,
            failure_rate_interval: Duration::from_secs(60),
            delay: Duration::from_secs(1),
        }
    }
}

/// Authentication between the processes of a cluster and of the REST API's mutations.
#[derive(Debug, Clone, PartialEq)]
pub struct SecuritySettings {
    pub auth_enabled: bool,
    /// The shared secret given inline (its `Debug` is redacted).
    pub cluster_secret: Option<ClusterSecret>,
    /// A file holding the shared secret, read by [`ClusterSecret::from_settings`].
    pub cluster_secret_file: Option<PathBuf>,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self { auth_enabled: true, cluster_secret: None, cluster_secret_file: None }
    }
}

impl ClusterSettings {
    /// The address clients use for the REST API (`rest.address`, else `jobmanager.rpc.address`).
    pub fn rest_address(&self) -> &str {
        self.rest.address.as_deref().unwrap_or(&self.jobmanager.rpc_address)
    }

    /// A local cluster configured like this TaskManager: slots (given or `physical_cores`),
    /// pool, credit, slot threads and data connections. The caller adds the distribution and
    /// data listener.
    pub fn cluster_config(&self, physical_cores: u32) -> ClusterConfig {
        let tm = &self.taskmanager;
        ClusterConfig {
            slots: Some(tm.number_of_task_slots.unwrap_or(physical_cores.max(1))),
            network_buffers: tm.network.number_of_buffers,
            credit: tm.network.credit(),
            io_memory_bytes: usize::try_from(tm.slot.io_memory).unwrap_or(usize::MAX),
            preempt_timer: tm.slot.preempt_timer,
            pin_slots: tm.slot.pin_cores,
            spin_before_park: (!tm.slot.spin_before_park.is_zero()).then_some(tm.slot.spin_before_park),
            net: tm.network.net_config(),
            ..ClusterConfig::default()
        }
    }
}
