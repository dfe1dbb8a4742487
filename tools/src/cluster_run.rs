//! `--processes N` (per-job mode): the command's job runs on a JobManager in this process and
//! N TaskManager processes of this binary on loopback ([`corestream::processes`]), submitted by
//! name with the command's own arguments; this module only turns the options into settings and
//! the outcome into errors.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use corestream::jobmanager::api::{JobOutcome, JobState, SubmitRequest};
use corestream::jobmanager::JobManagerConfig;
use corestream::processes::{describe_exit, ProcessCluster, ProcessClusterSettings};

use crate::args::Common;

/// Runs job type `job` with `args` on `common.processes` TaskManager processes and returns its
/// outcome; a failed or cancelled job is an error naming why (and which TaskManager process
/// ended, if one did).
pub fn run(common: &Common, job: &str, args: Vec<String>) -> anyhow::Result<JobOutcome> {
    let slots = common.slots.unwrap_or(1);
    let heartbeat_timeout = common.heartbeat_timeout.unwrap_or(Duration::from_secs(10));
    let credit = common.credit();
    let mut set = vec![
        format!("taskmanager.network.heartbeat.timeout={}ms", heartbeat_timeout.as_millis()),
        format!("taskmanager.network.heartbeat.interval={}ms", (heartbeat_timeout / 5).as_millis().max(1)),
        format!("heartbeat.timeout={}ms", heartbeat_timeout.as_millis()),
        format!("heartbeat.interval={}ms", (heartbeat_timeout / 5).as_millis().max(1)),
        format!("taskmanager.network.memory.buffers-per-channel={}", credit.exclusive_per_channel),
        format!("taskmanager.network.memory.floating-buffers-per-gate={}", credit.floating_per_gate),
        format!("taskmanager.network.memory.max-buffers-per-channel={}", credit.max_backlog_per_channel),
    ];
    if let Some(n) = common.network_buffers {
        set.push(format!("taskmanager.network.numberOfBuffers={n}"));
    }
    let extra_args: Vec<OsString> = set.into_iter().flat_map(|s| [OsString::from("-D"), OsString::from(s)]).collect();
    let settings = ProcessClusterSettings {
        binary: std::env::current_exe().context("cannot find this program's executable to start TaskManagers")?,
        taskmanagers: common.processes,
        slots_per_taskmanager: slots,
        extra_args,
        jobmanager: JobManagerConfig {
            rpc_bind: "127.0.0.1:0".parse().expect("an address"),
            heartbeat_interval: heartbeat_timeout / 5,
            heartbeat_timeout,
            slot_request_timeout: Duration::from_secs(30),
            cluster: corestream::ClusterConfig { credit, ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    let mut cluster = ProcessCluster::start(settings, crate::jobs::registry(), |child| {
        eprintln!("corestream: TaskManager {} started (pid {})", child.index, child.pid);
    })?;
    let parallelism = common.parallelism.unwrap_or(common.processes * slots);
    let request = SubmitRequest { job: job.to_string(), args, parallelism: Some(parallelism) };
    let (result, exits) = crate::progress::run_on_cluster(&mut cluster, request, job)?;
    let outcome = result.result.ok_or_else(|| anyhow!("the JobManager reported no outcome for the ended job"))?;
    match result.state {
        JobState::Finished => Ok(outcome),
        state => {
            let mut message = outcome.failure.unwrap_or_else(|| format!("the job ended {state:?}"));
            if let Some((child, status)) = exits.first() {
                message =
                    format!("TaskManager {} (pid {}) {}: {message}", child.index, child.pid, describe_exit(*status));
            }
            bail!("{message}")
        }
    }
}
