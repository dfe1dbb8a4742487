//! A job's checkpoint statistics over all its attempts, as the REST API shows them
//! (`GET /v1/jobs/{id}/checkpoints` and `.../details/{checkpointid}`).
//!
//! Each attempt has a coordinator of its own, whose [`CheckpointStats`] start from zero; the job
//! master publishes them after every checkpoint event, and [`JobCheckpointStats`] merges them
//! with those of the job's ended attempts (ids are never reused across attempts: a restarted
//! job numbers its checkpoints after every one in its directory). It also keeps what the
//! coordinator forgets: min/avg/max over every completed checkpoint (each counted once, when a
//! publication first shows it completed; completions come in ascending ids) and the restores.
//! Everything is bounded: the history by [`HISTORY_LEN`], the retained list by the
//! coordinator's `retained`. The views are pure functions of this state and the plan's vertices
//! (and, for `.../checkpoints/config`, of the job's resolved checkpointing).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::api::{
    CheckpointConfigInfo, CheckpointCountsInfo, CheckpointDetails, CheckpointInfo, CheckpointStatusInfo,
    CheckpointSummaryInfo, CheckpointType, CheckpointingStatistics, LatestCheckpoints, MinAvgMax,
    RestoredCheckpointInfo, RetainedCheckpointInfo, SubtaskCheckpointInfo, SubtaskCheckpointStatus,
    VertexCheckpointInfo,
};
use crate::checkpoint::coordinator::{
    AbortReason, CheckpointCounts, CheckpointStats, CheckpointStatus, CheckpointSummary, IgnoredAcks, TaskAckStats,
    HISTORY_LEN,
};
use crate::checkpoint::metadata::checkpoint_dir_name;
use crate::checkpoint::request::JobCheckpointing;
use crate::checkpoint::{CheckpointId, CheckpointMode, TaskId};
use crate::runtime::cluster::VertexSummary;

/// A job's checkpoint statistics, as its entry in the dispatcher's table keeps them.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobCheckpointStats {
    /// The ended attempts merged with the current one; `None` before the first publication.
    current: Option<CheckpointStats>,
    /// The ended attempts merged, as of the end of the last one.
    earlier: Option<CheckpointStats>,
    summary: Summary,
    /// The newest completed checkpoint counted in `summary`.
    summarized_up_to: Option<CheckpointId>,
    restores: u64,
    restored: Option<RestoredCheckpointInfo>,
}

impl JobCheckpointStats {
    /// The current attempt's coordinator published `attempt`.
    pub(crate) fn publish(&mut self, attempt: CheckpointStats) {
        let merged = match &self.earlier {
            Some(earlier) => merge(earlier, attempt),
            None => attempt,
        };
        let mut completed: Vec<&CheckpointSummary> = merged
            .history
            .iter()
            .chain(merged.latest_completed.iter())
            .filter(|s| s.status == CheckpointStatus::Completed && self.summarized_up_to.is_none_or(|u| s.id > u))
            .collect();
        completed.sort_by_key(|s| s.id);
        completed.dedup_by_key(|s| s.id);
        for s in completed {
            self.summary.add(s);
            self.summarized_up_to = Some(s.id);
        }
        self.current = Some(merged);
    }

    /// The current attempt ended (after its last publication). A checkpoint still in progress
    /// then (its metadata was being written) is shown failed: this job's view never learns
    /// whether the write finished (`corestream checkpoints list DIR` does).
    pub(crate) fn end_attempt(&mut self) {
        let Some(mut stats) = self.current.take() else { return };
        for s in stats.history.iter_mut().filter(|s| s.status == CheckpointStatus::InProgress) {
            s.status = CheckpointStatus::Failed;
            s.failure = Some(AbortReason::Stopped);
            if stats.latest_failed.as_ref().is_none_or(|f| f.id < s.id) {
                stats.latest_failed = Some(s.clone());
            }
        }
        stats.counts.failed += stats.counts.in_progress;
        stats.counts.in_progress = 0;
        self.earlier = Some(stats.clone());
        self.current = Some(stats);
    }

    /// An attempt starts from checkpoint `id` of the checkpoint directory `dir`.
    pub(crate) fn restored(&mut self, id: CheckpointId, dir: &Path, at_ms: u64) {
        self.restores += 1;
        self.restored = Some(RestoredCheckpointInfo {
            id,
            restore_timestamp: at_ms,
            external_path: dir.join(checkpoint_dir_name(id)).display().to_string(),
        });
    }

    /// `GET /v1/jobs/{id}/checkpoints` over a plan with `vertices`.
    pub(crate) fn view(&self, vertices: &[VertexSummary]) -> CheckpointingStatistics {
        let latest_restored = self.restored.clone();
        let Some(c) = &self.current else {
            return CheckpointingStatistics {
                counts: CheckpointCountsInfo { restored: self.restores, ..Default::default() },
                latest: LatestCheckpoints { restored: latest_restored, ..Default::default() },
                ..Default::default()
            };
        };
        CheckpointingStatistics {
            counts: CheckpointCountsInfo {
                restored: self.restores,
                total: c.counts.triggered,
                in_progress: c.counts.in_progress,
                completed: c.counts.completed,
                failed: c.counts.failed,
            },
            summary: self.summary.view(),
            latest: LatestCheckpoints {
                completed: c.latest_completed.as_ref().map(|s| info(s, vertices)),
                failed: c.latest_failed.as_ref().map(|s| info(s, vertices)),
                restored: latest_restored,
            },
            history: c.history.iter().map(|s| info(s, vertices)).collect(),
            retained: c
                .retained
                .iter()
                .map(|r| RetainedCheckpointInfo {
                    id: r.id,
                    trigger_timestamp: r.trigger_ms,
                    end_timestamp: r.completed_ms,
                    checkpointed_size_bytes: r.state_bytes,
                })
                .collect(),
        }
    }

    /// `GET /v1/jobs/{id}/checkpoints/details/{id}`: `None` when neither the history nor the
    /// latest completed and failed hold checkpoint `id`.
    pub(crate) fn details(&self, id: CheckpointId, vertices: &[VertexSummary]) -> Option<CheckpointDetails> {
        let c = self.current.as_ref()?;
        let s = c.history.iter().chain(c.latest_completed.iter()).chain(c.latest_failed.iter()).find(|s| s.id == id)?;
        Some(CheckpointDetails { checkpoint: info(s, vertices), subtasks: subtasks(s, vertices) })
    }

    /// The oldest and the newest id the history holds, for messages.
    pub(crate) fn history_ids(&self) -> (Option<CheckpointId>, Option<CheckpointId>) {
        let ids = self.current.iter().flat_map(|c| c.history.iter().map(|s| s.id));
        (ids.clone().min(), ids.max())
    }
}

/// `GET /v1/jobs/{id}/checkpoints/config` of a job that runs with `c`.
pub(crate) fn config_view(c: &JobCheckpointing) -> CheckpointConfigInfo {
    let restore = c.restore.clone();
    let Some(s) = c.settings.as_ref().filter(|s| s.interval.is_some()) else {
        return CheckpointConfigInfo {
            enabled: false,
            mode: None,
            interval_ms: None,
            timeout_ms: None,
            min_pause_ms: None,
            max_concurrent: None,
            tolerable_failed_checkpoints: None,
            retained: None,
            unaligned_checkpoints: None,
            aligned_checkpoint_timeout_ms: None,
            directory: None,
            restore,
        };
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    CheckpointConfigInfo {
        enabled: true,
        mode: Some(
            match s.mode {
                CheckpointMode::ExactlyOnce => "exactly_once",
                CheckpointMode::AtLeastOnce => "at_least_once",
            }
            .to_string(),
        ),
        interval_ms: s.interval.map(ms),
        timeout_ms: Some(ms(s.timeout)),
        min_pause_ms: Some(ms(s.min_pause)),
        max_concurrent: Some(s.max_concurrent),
        tolerable_failed_checkpoints: Some(s.tolerable_failures),
        retained: Some(s.retained),
        unaligned_checkpoints: Some(s.unaligned),
        aligned_checkpoint_timeout_ms: Some(ms(s.aligned_timeout)),
        directory: c.dir.as_ref().map(|d| d.display().to_string()),
        restore,
    }
}

/// `attempt`'s statistics after those of the attempts before it.
fn merge(earlier: &CheckpointStats, attempt: CheckpointStats) -> CheckpointStats {
    let newest = |a: Option<CheckpointSummary>, b: &Option<CheckpointSummary>| match (a, b) {
        (Some(a), Some(b)) if b.id > a.id => Some(b.clone()),
        (None, b) => b.clone(),
        (a, _) => a,
    };
    let mut history = attempt.history;
    for s in &earlier.history {
        if !history.iter().any(|h| h.id == s.id) {
            history.push(s.clone());
        }
    }
    history.sort_by_key(|s| Reverse(s.id));
    history.truncate(HISTORY_LEN);
    let (e, a) = (&earlier.counts, &attempt.counts);
    let (ei, ai) = (&earlier.ignored_acks, &attempt.ignored_acks);
    CheckpointStats {
        counts: CheckpointCounts {
            triggered: e.triggered + a.triggered,
            in_progress: a.in_progress,
            completed: e.completed + a.completed,
            failed: e.failed + a.failed,
        },
        latest_completed: newest(attempt.latest_completed, &earlier.latest_completed),
        latest_failed: newest(attempt.latest_failed, &earlier.latest_failed),
        history,
        ignored_acks: IgnoredAcks {
            duplicate: ei.duplicate + ai.duplicate,
            unknown_task: ei.unknown_task + ai.unknown_task,
            late: ei.late + ai.late,
            unknown_checkpoint: ei.unknown_checkpoint + ai.unknown_checkpoint,
        },
        consecutive_failures: attempt.consecutive_failures,
        retained: attempt.retained,
        stopped: attempt.stopped,
    }
}

/// Min, sum and max of one figure.
#[derive(Debug, Clone, Copy, Default)]
struct Figure {
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Figure {
    fn add(&mut self, value: u64) {
        self.min = if self.count == 0 { value } else { self.min.min(value) };
        self.max = self.max.max(value);
        self.sum += u128::from(value);
        self.count += 1;
    }

    fn view(&self) -> MinAvgMax {
        let avg =
            if self.count == 0 { 0 } else { u64::try_from(self.sum / u128::from(self.count)).unwrap_or(u64::MAX) };
        MinAvgMax { min: self.min, avg, max: self.max }
    }
}

/// The figures of every completed checkpoint.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    completed: u64,
    duration: Figure,
    checkpointed: Figure,
    state: Figure,
    persisted: Figure,
    cpu: Figure,
}

impl Summary {
    fn add(&mut self, s: &CheckpointSummary) {
        self.completed += 1;
        self.duration.add(s.duration_ms);
        self.checkpointed.add(s.state_bytes + s.uploaded_bytes);
        self.state.add(state_bytes(&s.tasks));
        self.persisted.add(s.channel_bytes);
        self.cpu.add(s.cpu_us);
    }

    fn view(&self) -> CheckpointSummaryInfo {
        CheckpointSummaryInfo {
            completed: self.completed,
            end_to_end_duration_ms: self.duration.view(),
            checkpointed_size_bytes: self.checkpointed.view(),
            state_size_bytes: self.state.view(),
            persisted_data_bytes: self.persisted.view(),
            cpu_time_us: self.cpu.view(),
        }
    }
}

fn state_bytes<'a>(acks: impl IntoIterator<Item = &'a TaskAckStats>) -> u64 {
    acks.into_iter().map(|a| a.metrics.state_bytes + a.metrics.shared_bytes).sum()
}

fn status(s: CheckpointStatus) -> CheckpointStatusInfo {
    match s {
        CheckpointStatus::InProgress => CheckpointStatusInfo::InProgress,
        CheckpointStatus::Completed => CheckpointStatusInfo::Completed,
        CheckpointStatus::Failed => CheckpointStatusInfo::Failed,
    }
}

/// The vertices a checkpoint covers: the plan's, and any other an acknowledgement names
/// (`(index, name, parallelism)`).
fn vertex_list(s: &CheckpointSummary, vertices: &[VertexSummary]) -> Vec<(u32, String, u32)> {
    let mut list: BTreeMap<u32, (String, u32)> =
        vertices.iter().enumerate().map(|(i, v)| (i as u32, (v.name.clone(), v.parallelism))).collect();
    for a in &s.tasks {
        let entry = list.entry(a.task.vertex).or_insert_with(|| (format!("vertex {}", a.task.vertex), 0));
        if !vertices.iter().enumerate().any(|(i, _)| i as u32 == a.task.vertex) {
            entry.1 = entry.1.max(a.task.subtask + 1);
        }
    }
    list.into_iter().map(|(i, (name, parallelism))| (i, name, parallelism)).collect()
}

fn info(s: &CheckpointSummary, vertices: &[VertexSummary]) -> CheckpointInfo {
    let tasks = vertex_list(s, vertices)
        .into_iter()
        .map(|(id, name, parallelism)| {
            let acks: Vec<&TaskAckStats> = s.tasks.iter().filter(|a| a.task.vertex == id).collect();
            let latest_ack_timestamp = acks.iter().map(|a| a.ack_ms).max();
            let max = |f: fn(&TaskAckStats) -> u64| acks.iter().map(|a| f(a)).max().unwrap_or(0);
            VertexCheckpointInfo {
                id,
                name,
                num_subtasks: parallelism,
                num_acknowledged_subtasks: acks.len() as u32,
                latest_ack_timestamp,
                end_to_end_duration_ms: latest_ack_timestamp.map_or(0, |t| t.saturating_sub(s.trigger_ms)),
                checkpointed_size_bytes: acks.iter().map(|a| a.file_bytes + a.metrics.uploaded_bytes).sum(),
                state_size_bytes: state_bytes(acks.iter().copied()),
                persisted_data_bytes: acks.iter().map(|a| a.metrics.channel_bytes).sum(),
                alignment_duration_ms: max(|a| a.metrics.alignment_ms),
                sync_duration_ms: max(|a| a.metrics.sync_ms),
                async_duration_ms: max(|a| a.metrics.async_ms),
                cpu_time_us: acks.iter().map(|a| a.metrics.cpu_us).sum(),
            }
        })
        .collect();
    CheckpointInfo {
        id: s.id,
        status: status(s.status),
        checkpoint_type: match (s.savepoint, s.unaligned) {
            (true, _) => CheckpointType::Savepoint,
            (false, true) => CheckpointType::UnalignedCheckpoint,
            (false, false) => CheckpointType::Checkpoint,
        },
        manual: s.manual,
        trigger_timestamp: s.trigger_ms,
        latest_ack_timestamp: s.latest_ack_ms,
        end_timestamp: s.end_ms,
        end_to_end_duration_ms: s.duration_ms,
        checkpointed_size_bytes: s.state_bytes + s.uploaded_bytes,
        state_size_bytes: state_bytes(&s.tasks),
        persisted_data_bytes: s.channel_bytes,
        alignment_duration_ms: s.alignment_ms_max,
        sync_duration_ms: s.sync_ms_max,
        async_duration_ms: s.async_ms_max,
        cpu_time_us: s.cpu_us,
        num_subtasks: s.tasks_total,
        num_acknowledged_subtasks: s.tasks_acknowledged,
        failure_message: s.failure.as_ref().map(ToString::to_string),
        tasks,
    }
}

fn subtasks(s: &CheckpointSummary, vertices: &[VertexSummary]) -> Vec<SubtaskCheckpointInfo> {
    let mut all: BTreeMap<TaskId, Option<&TaskAckStats>> = BTreeMap::new();
    for (vertex, _, parallelism) in vertex_list(s, vertices) {
        for subtask in 0..parallelism {
            all.insert(TaskId { vertex, subtask }, None);
        }
    }
    for a in &s.tasks {
        all.insert(a.task, Some(a));
    }
    all.into_iter()
        .map(|(task, ack)| match ack {
            Some(a) => SubtaskCheckpointInfo {
                vertex: task.vertex,
                subtask: task.subtask,
                status: SubtaskCheckpointStatus::Completed,
                ack_timestamp: Some(a.ack_ms),
                end_to_end_duration_ms: Some(a.ack_ms.saturating_sub(s.trigger_ms)),
                checkpointed_size_bytes: a.file_bytes + a.metrics.uploaded_bytes,
                state_size_bytes: a.metrics.state_bytes + a.metrics.shared_bytes,
                persisted_data_bytes: a.metrics.channel_bytes,
                alignment_duration_ms: a.metrics.alignment_ms,
                sync_duration_ms: a.metrics.sync_ms,
                async_duration_ms: a.metrics.async_ms,
                cpu_time_us: a.metrics.cpu_us,
                unaligned: a.metrics.unaligned,
            },
            None => SubtaskCheckpointInfo {
                vertex: task.vertex,
                subtask: task.subtask,
                status: SubtaskCheckpointStatus::PendingOrFailed,
                ack_timestamp: None,
                end_to_end_duration_ms: None,
                checkpointed_size_bytes: 0,
                state_size_bytes: 0,
                persisted_data_bytes: 0,
                alignment_duration_ms: 0,
                sync_duration_ms: 0,
                async_duration_ms: 0,
                cpu_time_us: 0,
                unaligned: false,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::coordinator::CompletedCheckpoint;
    use crate::checkpoint::TaskCheckpointMetrics;

    const T0: u64 = 1_700_000_000_000;

    fn vertices() -> Vec<VertexSummary> {
        vec![
            VertexSummary {
                name: "Source: generator".into(),
                parallelism: 2,
                max_parallelism: 128,
                nodes: vec![0],
                uids: vec!["#Source: generator".into()],
                source: true,
            },
            VertexSummary {
                name: "Keyed Reduce -> Sink".into(),
                parallelism: 1,
                max_parallelism: 128,
                nodes: vec![1, 2],
                uids: vec!["#Keyed Reduce".into(), "#Sink".into()],
                source: false,
            },
        ]
    }

    fn ack(vertex: u32, subtask: u32, ack_ms: u64, bytes: u64) -> TaskAckStats {
        TaskAckStats {
            task: TaskId { vertex, subtask },
            ack_ms,
            file_bytes: bytes + 100,
            metrics: TaskCheckpointMetrics {
                alignment_ms: vertex as u64 * 3,
                sync_ms: 1 + subtask as u64,
                async_ms: 4,
                state_bytes: bytes,
                channel_bytes: vertex as u64 * 10,
                unaligned: vertex == 1,
                cpu_us: 100 + subtask as u64,
                uploaded_bytes: 0,
                shared_bytes: 0,
            },
        }
    }

    /// Checkpoint `id` triggered at `T0 + id * 1000`; completed ones have every task's ack.
    fn summary(id: CheckpointId, status: CheckpointStatus) -> CheckpointSummary {
        let trigger_ms = T0 + id * 1000;
        let tasks = match status {
            CheckpointStatus::Completed => {
                vec![ack(0, 0, trigger_ms + 5, 10), ack(0, 1, trigger_ms + 7, 20), ack(1, 0, trigger_ms + 20, 30)]
            }
            _ => vec![ack(0, 1, trigger_ms + 7, 20)],
        };
        let done = status != CheckpointStatus::InProgress;
        CheckpointSummary {
            id,
            status,
            manual: id.is_multiple_of(2),
            savepoint: false,
            trigger_ms,
            latest_ack_ms: tasks.iter().map(|a| a.ack_ms).max(),
            end_ms: done.then_some(trigger_ms + 20 + id),
            duration_ms: 20 + id,
            tasks_total: 3,
            tasks_acknowledged: tasks.len() as u32,
            state_bytes: tasks.iter().map(|a| a.file_bytes).sum(),
            uploaded_bytes: 0,
            shared_bytes: 0,
            channel_bytes: tasks.iter().map(|a| a.metrics.channel_bytes).sum(),
            alignment_ms_max: tasks.iter().map(|a| a.metrics.alignment_ms).max().unwrap_or(0),
            sync_ms_max: 2,
            async_ms_max: 4,
            cpu_us: tasks.iter().map(|a| a.metrics.cpu_us).sum(),
            unaligned: tasks.iter().any(|a| a.metrics.unaligned),
            failure: (status == CheckpointStatus::Failed).then_some(AbortReason::Expired { after_ms: 600 }),
            tasks,
        }
    }

    /// An attempt's statistics over `history` (newest first after sorting).
    fn stats(history: Vec<CheckpointSummary>) -> CheckpointStats {
        let count = |st| history.iter().filter(|s| s.status == st).count() as u64;
        let latest = |st| history.iter().filter(|s| s.status == st).max_by_key(|s| s.id).cloned();
        let mut sorted = history.clone();
        sorted.sort_by_key(|s| Reverse(s.id));
        CheckpointStats {
            counts: CheckpointCounts {
                triggered: history.len() as u64,
                in_progress: count(CheckpointStatus::InProgress),
                completed: count(CheckpointStatus::Completed),
                failed: count(CheckpointStatus::Failed),
            },
            latest_completed: latest(CheckpointStatus::Completed),
            latest_failed: latest(CheckpointStatus::Failed),
            retained: latest(CheckpointStatus::Completed)
                .map(|s| CompletedCheckpoint {
                    id: s.id,
                    trigger_ms: s.trigger_ms,
                    completed_ms: s.end_ms.unwrap(),
                    state_bytes: s.state_bytes,
                })
                .into_iter()
                .collect(),
            history: sorted,
            ignored_acks: IgnoredAcks { late: 1, ..Default::default() },
            consecutive_failures: 0,
            stopped: false,
        }
    }

    use CheckpointStatus::{Completed, Failed, InProgress};

    #[test]
    fn a_job_without_checkpoints_has_zero_counts() {
        let view = JobCheckpointStats::default().view(&vertices());
        assert_eq!(view, CheckpointingStatistics::default());
        assert_eq!(view.counts.total, 0);
        assert!(JobCheckpointStats::default().details(1, &vertices()).is_none());
    }

    #[test]
    fn one_attempt_is_shown_with_figures_per_vertex_and_subtask() {
        let mut job = JobCheckpointStats::default();
        job.publish(stats(vec![summary(1, Completed), summary(2, Failed), summary(3, InProgress)]));
        let view = job.view(&vertices());
        assert_eq!(
            view.counts,
            CheckpointCountsInfo { restored: 0, total: 3, in_progress: 1, completed: 1, failed: 1 }
        );
        assert_eq!(view.history.iter().map(|c| c.id).collect::<Vec<_>>(), [3, 2, 1]);
        let done = view.latest.completed.as_ref().unwrap();
        assert_eq!((done.id, done.status, done.manual), (1, CheckpointStatusInfo::Completed, false));
        assert_eq!(done.checkpoint_type, CheckpointType::UnalignedCheckpoint);
        assert_eq!((done.state_size_bytes, done.checkpointed_size_bytes, done.persisted_data_bytes), (60, 360, 10));
        assert_eq!(done.tasks.len(), 2);
        let source = &done.tasks[0];
        assert_eq!(
            (source.name.as_str(), source.num_subtasks, source.num_acknowledged_subtasks),
            ("Source: generator", 2, 2)
        );
        assert_eq!((source.state_size_bytes, source.checkpointed_size_bytes), (30, 230));
        assert_eq!((done.cpu_time_us, source.cpu_time_us), (301, 201));
        assert_eq!(
            (source.sync_duration_ms, source.end_to_end_duration_ms, source.latest_ack_timestamp),
            (2, 7, Some(T0 + 1007))
        );
        let failed = view.latest.failed.as_ref().unwrap();
        assert_eq!(failed.failure_message.as_deref(), Some("expired after 600 ms before every task acknowledged"));
        assert_eq!(failed.checkpoint_type, CheckpointType::Checkpoint);
        assert_eq!(
            view.retained,
            [RetainedCheckpointInfo {
                id: 1,
                trigger_timestamp: T0 + 1000,
                end_timestamp: T0 + 1021,
                checkpointed_size_bytes: 360
            }]
        );

        let details = job.details(3, &vertices()).unwrap();
        assert_eq!(details.checkpoint.status, CheckpointStatusInfo::InProgress);
        let states: Vec<(u32, u32, SubtaskCheckpointStatus)> =
            details.subtasks.iter().map(|s| (s.vertex, s.subtask, s.status)).collect();
        use SubtaskCheckpointStatus::{Completed as Acked, PendingOrFailed as Pending};
        assert_eq!(states, [(0, 0, Pending), (0, 1, Acked), (1, 0, Pending)]);
        let acked = &details.subtasks[1];
        assert_eq!(
            (acked.ack_timestamp, acked.end_to_end_duration_ms, acked.sync_duration_ms, acked.cpu_time_us),
            (Some(T0 + 3007), Some(7), 2, 101)
        );
        assert!(job.details(4, &vertices()).is_none());
    }

    #[test]
    fn the_summary_counts_each_completed_checkpoint_once() {
        let mut job = JobCheckpointStats::default();
        job.publish(stats(vec![summary(1, Completed)]));
        job.publish(stats(vec![summary(1, Completed)]));
        job.publish(stats(vec![summary(1, Completed), summary(2, InProgress)]));
        job.publish(stats(vec![summary(1, Completed), summary(2, Completed), summary(3, Failed)]));
        let s = job.view(&vertices()).summary;
        assert_eq!(s.completed, 2);
        assert_eq!(s.end_to_end_duration_ms, MinAvgMax { min: 21, avg: 21, max: 22 });
        assert_eq!(s.state_size_bytes, MinAvgMax { min: 60, avg: 60, max: 60 });
        assert_eq!(s.checkpointed_size_bytes, MinAvgMax { min: 360, avg: 360, max: 360 });
        assert_eq!(s.persisted_data_bytes, MinAvgMax { min: 10, avg: 10, max: 10 });
        assert_eq!(s.cpu_time_us, MinAvgMax { min: 301, avg: 301, max: 301 });
    }

    #[test]
    fn attempts_add_up_and_restores_are_counted() {
        let mut job = JobCheckpointStats::default();
        job.publish(stats(vec![summary(1, Completed), summary(2, Completed), summary(3, InProgress)]));
        job.end_attempt();
        let after_first = job.view(&vertices());
        assert_eq!(after_first.counts.in_progress, 0);
        assert_eq!(after_first.counts.failed, 1);
        assert_eq!(after_first.history[0].status, CheckpointStatusInfo::Failed);
        assert_eq!(after_first.history[0].failure_message.as_deref(), Some("the job's checkpointing stopped"));

        job.restored(2, Path::new("/ck/job"), T0 + 9000);
        job.publish(stats(vec![summary(4, Completed), summary(5, InProgress)]));
        let view = job.view(&vertices());
        assert_eq!(
            view.counts,
            CheckpointCountsInfo { restored: 1, total: 5, in_progress: 1, completed: 3, failed: 1 }
        );
        assert_eq!(view.history.iter().map(|c| c.id).collect::<Vec<_>>(), [5, 4, 3, 2, 1]);
        assert_eq!(view.latest.completed.as_ref().map(|c| c.id), Some(4));
        assert_eq!(view.latest.failed.as_ref().map(|c| c.id), Some(3));
        assert_eq!(view.retained.iter().map(|r| r.id).collect::<Vec<_>>(), [4]);
        assert_eq!(view.summary.completed, 3);
        let restored = view.latest.restored.unwrap();
        assert_eq!(
            (restored.id, restored.restore_timestamp, restored.external_path.as_str()),
            (2, T0 + 9000, "/ck/job/chk-2")
        );
        assert!(job.details(1, &vertices()).is_some());
    }

    #[test]
    fn the_merged_history_is_bounded_and_keeps_the_latest() {
        let mut job = JobCheckpointStats::default();
        job.publish(stats((1..=8).map(|id| summary(id, if id == 1 { Completed } else { Failed })).collect()));
        job.end_attempt();
        job.publish(stats((9..=16).map(|id| summary(id, Failed)).collect()));
        let view = job.view(&vertices());
        assert_eq!(view.history.len(), HISTORY_LEN);
        assert_eq!(view.history.first().map(|c| c.id), Some(16));
        assert_eq!(view.latest.completed.as_ref().map(|c| c.id), Some(1));
        assert!(job.details(1, &vertices()).is_some(), "the latest completed stays reachable");
        assert!(job.details(2, &vertices()).is_none());
        assert_eq!(job.history_ids(), (Some(7), Some(16)));
    }

    #[test]
    fn the_config_echoes_the_resolved_settings() {
        use crate::checkpoint::request::{resolve, CheckpointRequest, RestoreRequest};
        let request = CheckpointRequest {
            interval_ms: Some(200),
            dir: Some("/ck/job".into()),
            unaligned: Some(true),
            aligned_timeout_ms: Some(50),
            max_concurrent: Some(2),
            ..Default::default()
        };
        let c = resolve(&Default::default(), Some(&request), None).unwrap();
        let v = config_view(&c);
        assert!(v.enabled);
        assert_eq!(v.mode.as_deref(), Some("exactly_once"));
        assert_eq!((v.interval_ms, v.timeout_ms, v.min_pause_ms), (Some(200), Some(600_000), Some(0)));
        assert_eq!((v.max_concurrent, v.tolerable_failed_checkpoints, v.retained), (Some(2), Some(0), Some(1)));
        assert_eq!((v.unaligned_checkpoints, v.aligned_checkpoint_timeout_ms), (Some(true), Some(50)));
        assert_eq!((v.directory.as_deref(), v.restore), (Some("/ck/job"), None));

        let restore = RestoreRequest::FromCheckpoint("/ck/job/chk-3".into());
        let c = resolve(&Default::default(), None, Some(&restore)).unwrap();
        let v = config_view(&c);
        assert!(!v.enabled);
        assert_eq!((v.mode, v.interval_ms, v.directory), (None, None, None));
        assert_eq!(v.restore, Some(restore));
    }

    #[test]
    fn figures_avoid_overflow() {
        let mut f = Figure::default();
        assert_eq!(f.view(), MinAvgMax::default());
        f.add(u64::MAX);
        f.add(u64::MAX);
        f.add(1);
        assert_eq!(f.view(), MinAvgMax { min: 1, avg: u64::MAX / 3 * 2, max: u64::MAX });
    }
}
