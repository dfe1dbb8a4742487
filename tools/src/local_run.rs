//! A `run` command's job submitted by name to the JobManager of an embedded cluster
//! ([`LocalCluster::start_with_jobs`]) instead of built once on the host: how `run` takes
//! checkpoints, restarts after a failure with the restart strategy, and resumes from a
//! checkpoint directory (`--checkpoint-interval`, `--resume`, `--from-checkpoint`). The job
//! is rebuilt for every attempt from its registered type, so its outputs are its own sinks
//! (part files through the exactly-once file sink), never host channels.

use anyhow::{anyhow, bail, Context};
use corestream::jobmanager::api::{JobOutcome, JobState, SubmitRequest};
use corestream::registry::JobRegistry;
use corestream::LocalCluster;

use crate::args::Common;
use crate::checkpointing::Recovery;

/// What a run by name ended with: the job's outcome, and the failures it recovered from.
pub struct RunByName {
    pub outcome: JobOutcome,
    /// (attempt, message) of every failure the job restarted after.
    pub recovered: Vec<(u32, String)>,
}

/// Runs job type `job` of `registry` with `args` on an embedded cluster of the options' slots;
/// a failed or cancelled job is an error with its last failure.
pub fn run(
    common: &Common,
    registry: JobRegistry,
    job: &str,
    args: Vec<String>,
    recovery: &Recovery,
) -> anyhow::Result<RunByName> {
    let config = common.cluster_config()?;
    let cluster = LocalCluster::start_with_jobs(config, registry).context("cannot start the local cluster")?;
    let api = cluster.api().ok_or_else(|| anyhow!("the embedded cluster has no JobManager"))?;
    let request = SubmitRequest {
        job: job.to_string(),
        args,
        parallelism: Some(common.parallelism.unwrap_or(cluster.num_slots())),
        checkpoints: recovery.checkpoints.clone(),
        restore: recovery.restore.clone(),
        allow_non_restored_state: recovery.allow_non_restored_state,
        restart_strategy: recovery.restart_strategy.clone(),
    };
    let (id, result) = crate::progress::run_by_name(api.as_ref(), request, job)?;
    let details = api.job(&id.to_string()).ok();
    let exceptions = details.map(|d| d.exceptions).unwrap_or_default();
    let outcome = result.result.ok_or_else(|| anyhow!("the JobManager reported no outcome for the ended job"))?;
    match result.state {
        JobState::Finished => {
            let recovered = exceptions.into_iter().map(|e| (e.attempt, e.message)).collect();
            Ok(RunByName { outcome, recovered })
        }
        JobState::Cancelled => bail!("the job was cancelled"),
        state => bail!("{}", outcome.failure.clone().unwrap_or_else(|| format!("the job ended {state:?}"))),
    }
}
