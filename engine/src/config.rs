//! Cluster and job configuration with the defaults a user gets without asking.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use std::sync::Arc;

use corestream_netstack::transport::NetConfig;
use corestream_netstack::CreditConfig;

use crate::graph::execution::SlotSplit;
use thiserror::Error;

/// How bounded jobs are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeMode {
    /// Keyed aggregations emit every update (Flink STREAMING).
    #[default]
    Streaming,
    /// Keyed aggregations emit one final result per key when the input ends (Flink BATCH).
    Batch,
}

/// Settings of a local cluster (one TaskManager with its slots, and the JobManager).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of slots; `None` means one per physical core (found with hwloc).
    pub slots: Option<u32>,
    /// 32 KB buffers in the TaskManager's pool, shared by all jobs; `None` sizes the pool for
    /// three all-to-all exchanges at full parallelism ([`auto_network_buffers`]). Untouched
    /// buffers cost address space, not memory.
    pub network_buffers: Option<u32>,
    pub credit: CreditConfig,
    /// Registered io_uring memory per slot executor (counts against RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// Time slice after which a busy task yields to the other tasks of its slot.
    pub preempt_timer: Duration,
    /// Pin each slot to a core (disable only for debugging).
    pub pin_slots: bool,
    /// How long an idle slot keeps polling for work before it sleeps in the kernel. `None`
    /// (the default) sleeps at once and leaves the core to others; a latency-sensitive
    /// deployment with a core per slot trades that CPU for not paying the kernel's wake-up on
    /// the first record after a pause.
    pub spin_before_park: Option<Duration>,
    /// The bound data listener of a TaskManager of the cluster runtime (the address other
    /// TaskManagers dial). A cluster with one runs a network executor that takes over (a
    /// duplicate of) it and keeps one connection per peer TaskManager; without one the cluster
    /// is embedded: a JobManager and one TaskManager in this process.
    pub data_listener: Option<Arc<std::net::TcpListener>>,
    /// Heartbeats, timeouts and connection retries of the connections between TaskManagers.
    pub net: NetConfig,
    /// Slot `i` is pinned to the core hwloc lists at `core_offset + i` (modulo the cores), so
    /// several TaskManager processes on one machine can be given different cores.
    pub core_offset: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            slots: None,
            network_buffers: None,
            credit: CreditConfig::default(),
            io_memory_bytes: 512 * 1024,
            preempt_timer: Duration::from_millis(1),
            pin_slots: true,
            spin_before_park: None,
            data_listener: None,
            net: NetConfig::default(),
            core_offset: 0,
        }
    }
}

/// Where this TaskManager process stands among the processes that run one job together.
///
/// Every process builds the same plan over `total_slots` job slots; the slots are split into
/// contiguous ranges ([`owner_of_slot`](crate::graph::execution::owner_of_slot)) and each
/// process deploys the tasks of its own range. A process may own no slot when `count` exceeds
/// `total_slots`. The deployment step adds the data listener and the transport's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// This TaskManager's index, `0..count`.
    pub index: u32,
    /// Number of TaskManager processes running the job.
    pub count: u32,
    /// Job slots over all processes; the default parallelism in distributed mode.
    pub total_slots: u32,
    /// Data address of every TaskManager, by index (this one's included).
    pub peers: Vec<SocketAddr>,
    /// Which job slots each TaskManager runs.
    pub split: SlotSplit,
}

/// A [`Distribution`] that cannot describe a set of processes; the message names the field.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DistributionError {
    #[error("distribution.count is 0: a job runs on at least one TaskManager")]
    NoTaskManagers,
    #[error("distribution.index {index} is out of range: TaskManagers are numbered 0..{count} (distribution.count)")]
    IndexOutOfRange { index: u32, count: u32 },
    #[error(
        "distribution.peers has {peers} address(es) but distribution.count is {count}: give the data address \
         of every TaskManager, this one's included"
    )]
    PeerCount { peers: usize, count: u32 },
    #[error(
        "distribution.split covers {split_slots} job slot(s) over {split_count} TaskManager(s), but the \
         distribution has {total} slot(s) over {count}"
    )]
    SplitMismatch { split_slots: u32, split_count: u32, total: u32, count: u32 },
}

impl Distribution {
    /// A validated distribution.
    pub fn new(index: u32, count: u32, total_slots: u32, peers: Vec<SocketAddr>) -> Result<Self, DistributionError> {
        if count == 0 {
            return Err(DistributionError::NoTaskManagers);
        }
        Self::with_split(index, SlotSplit::even(total_slots, count), peers)
    }

    /// A validated distribution whose TaskManagers run the job slots `split` gives them.
    pub fn with_split(index: u32, split: SlotSplit, peers: Vec<SocketAddr>) -> Result<Self, DistributionError> {
        let d = Self { index, count: split.count(), total_slots: split.total(), peers, split };
        d.validate()?;
        Ok(d)
    }

    /// Checks that the fields describe one TaskManager among `count`, each with an address.
    pub fn validate(&self) -> Result<(), DistributionError> {
        if self.count == 0 {
            return Err(DistributionError::NoTaskManagers);
        }
        if self.index >= self.count {
            return Err(DistributionError::IndexOutOfRange { index: self.index, count: self.count });
        }
        if self.peers.len() != self.count as usize {
            return Err(DistributionError::PeerCount { peers: self.peers.len(), count: self.count });
        }
        if self.split.count() != self.count || self.split.total() != self.total_slots {
            return Err(DistributionError::SplitMismatch {
                split_slots: self.split.total(),
                split_count: self.split.count(),
                total: self.total_slots,
                count: self.count,
            });
        }
        Ok(())
    }

    /// The job slots this TaskManager owns (possibly none).
    pub fn local_slots(&self) -> Range<u32> {
        self.split.local(self.index)
    }
}

/// Pool size chosen when none is configured: enough for three all-to-all exchanges with every
/// slot on both sides (each needs p·(p·(1 + backlog + exclusive)) + p·(overdraft + floating)
/// buffers), and never fewer than 2048.
pub fn auto_network_buffers(slots: u32, credit: &CreditConfig) -> u32 {
    let p = slots as u64;
    let per_channel = (1 + credit.max_backlog_per_channel + credit.exclusive_per_channel) as u64;
    let per_task = crate::graph::execution::OVERDRAFT_BUFFERS_PER_TASK as u64 + credit.floating_per_gate as u64;
    let exchange = p * p * per_channel + p * per_task;
    (3 * exchange).clamp(2048, u32::MAX as u64) as u32
}

/// The default [`ExecutionConfig::max_watermark_skew`].
pub const DEFAULT_MAX_WATERMARK_SKEW: Duration = Duration::from_secs(60);

/// Settings of one job.
#[derive(Debug, Clone)]
pub struct ExecutionConfig {
    /// Default parallelism of operators; `None` means the number of slots.
    pub parallelism: Option<u32>,
    /// Number of key groups of keyed operators.
    pub max_parallelism: u32,
    /// Longest time a record may wait in a partly filled buffer while the producer is busy.
    /// Zero flushes after every batch. An idle producer flushes at once regardless.
    pub buffer_timeout: Duration,
    /// Records a source emits per step, and the unit in which chains pass records.
    pub batch_size: usize,
    pub runtime_mode: RuntimeMode,
    /// How often periodic watermark generators emit (Flink's `autoWatermarkInterval`).
    pub auto_watermark_interval: Duration,
    /// How often each source subtask emits a latency marker (Flink's
    /// `latencyTrackingInterval`); `None` (the default) emits none. Sinks record each marker's
    /// age in a histogram per source subtask, reported in the job result.
    pub latency_tracking_interval: Option<Duration>,
    /// How far in event time an input channel may run ahead of the slowest one before the
    /// task reads it only when nothing else is there (its producer then runs out of credit and
    /// waits); `None` never holds a channel back. It bounds the windows and timers that one
    /// fast producer keeps open while a slow one holds the watermark back, as Flink's
    /// watermark alignment does at the sources (opt-in there). The default is 60 s.
    pub max_watermark_skew: Option<Duration>,
    /// Where keyed operators keep their state. The job chooses it, never an operator.
    pub state_backend: corestream_state::StateBackendKind,
    /// The LSM backend's local directory and memory per slot (used when `state_backend` is
    /// `Lsm`).
    pub lsm: corestream_state::LsmConfig,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            parallelism: None,
            max_parallelism: corestream_state::DEFAULT_MAX_PARALLELISM,
            buffer_timeout: Duration::from_millis(1),
            batch_size: 1024,
            runtime_mode: RuntimeMode::Streaming,
            auto_watermark_interval: Duration::from_millis(200),
            latency_tracking_interval: None,
            max_watermark_skew: Some(DEFAULT_MAX_WATERMARK_SKEW),
            state_backend: corestream_state::StateBackendKind::default(),
            lsm: corestream_state::LsmConfig::default(),
        }
    }
}

impl ExecutionConfig {
    /// Checks settings that no plan can fix; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.latency_tracking_interval.is_some_and(|d| d.is_zero()) {
            return Err("latency_tracking_interval (set_latency_tracking_interval, --latency-markers) must be \
                        positive; leave it unset to emit no latency markers"
                .into());
        }
        if self.state_backend == corestream_state::StateBackendKind::Lsm {
            if let Some(dir) = &self.lsm.local_dir {
                if !dir.is_dir() {
                    return Err(format!(
                        "the LSM state backend's local directory (lsm.local_dir, --state-dir) {} is not a \
                         directory; create it or choose another",
                        dir.display()
                    ));
                }
            }
            if self.lsm.memory_per_slot < MIN_LSM_MEMORY_PER_SLOT {
                return Err(format!(
                    "the LSM state backend's memory per slot (lsm.memory_per_slot, --state-memory) is {} bytes; \
                     it needs at least {} (8 MiB)",
                    self.lsm.memory_per_slot, MIN_LSM_MEMORY_PER_SLOT
                ));
            }
        }
        Ok(())
    }
}

/// The least memory per slot the LSM state backend accepts.
pub const MIN_LSM_MEMORY_PER_SLOT: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 40_000 + i))).collect()
    }

    #[test]
    fn distribution_validation_names_the_field() {
        assert!(Distribution::new(1, 2, 4, peers(2)).is_ok());
        assert!(Distribution::new(2, 3, 1, peers(3)).is_ok(), "a TaskManager may own no slot");
        assert_eq!(Distribution::new(0, 0, 4, peers(0)), Err(DistributionError::NoTaskManagers));
        let e = Distribution::new(2, 2, 4, peers(2)).unwrap_err();
        assert_eq!(e, DistributionError::IndexOutOfRange { index: 2, count: 2 });
        assert!(e.to_string().contains("distribution.index"));
        let e = Distribution::new(0, 2, 4, peers(1)).unwrap_err();
        assert_eq!(e, DistributionError::PeerCount { peers: 1, count: 2 });
        assert!(e.to_string().contains("distribution.peers"));
    }

    #[test]
    fn local_slots_follow_the_split() {
        assert_eq!(Distribution::new(0, 2, 3, peers(2)).unwrap().local_slots(), 0..2);
        assert_eq!(Distribution::new(1, 2, 3, peers(2)).unwrap().local_slots(), 2..3);
        assert!(Distribution::new(1, 2, 1, peers(2)).unwrap().local_slots().is_empty());
    }
}
