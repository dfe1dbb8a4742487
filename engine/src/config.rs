//! Cluster and job configuration with the defaults a user gets without asking.

use std::time::Duration;

use corestream_netstack::CreditConfig;

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
        }
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
        Ok(())
    }
}
