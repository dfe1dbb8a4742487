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
    // Placement (hidden options, for the test across network namespaces): TaskManager 0 binds
    // `--tm-bind` beside the JobManager, the others `--child-bind`, in `--child-netns`.
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    let tm0 = common.tm_bind.unwrap_or(loopback);
    let others = common.child_bind.unwrap_or(loopback);
    let data_binds = (0..common.processes).map(|i| if i == 0 { tm0 } else { others }).collect();
    let netns = (0..common.processes).map(|i| if i == 0 { None } else { common.child_netns.clone() }).collect();
    let settings = ProcessClusterSettings {
        binary: std::env::current_exe().context("cannot find this program's executable to start TaskManagers")?,
        taskmanagers: common.processes,
        slots_per_taskmanager: slots,
        extra_args,
        data_binds,
        netns,
        jobmanager: JobManagerConfig {
            rpc_bind: std::net::SocketAddr::new(tm0.ip(), 0),
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
    let (result, mut exits) = crate::progress::run_on_cluster(&mut cluster, request, job)?;
    let outcome = result.result.ok_or_else(|| anyhow!("the JobManager reported no outcome for the ended job"))?;
    match result.state {
        JobState::Finished => Ok(outcome),
        state => {
            let message = outcome.failure.unwrap_or_else(|| format!("the job ended {state:?}"));
            match culprit(&mut cluster, &mut exits, &message, heartbeat_timeout) {
                Some(who) => bail!("{who}: {message}"),
                None => bail!("{message}"),
            }
        }
    }
}

/// The TaskManager process behind a failure that looks like a lost peer: one that ended (and
/// how), or one still alive that the JobManager removed for want of heartbeats (it hung). The
/// JobManager may notice a hung TaskManager after a peer's data connection did, so this waits
/// up to the heartbeat timeout for it to.
fn culprit(
    cluster: &mut ProcessCluster,
    exits: &mut Vec<(corestream::processes::ChildInfo, std::process::ExitStatus)>,
    failure: &str,
    heartbeat_timeout: Duration,
) -> Option<String> {
    let network = ["lost", "timed out", "closed", "reset", "heartbeat", "TaskManager"].iter().any(|w| failure.contains(w));
    let deadline = std::time::Instant::now() + if network { heartbeat_timeout + Duration::from_secs(1) } else { Duration::ZERO };
    loop {
        exits.extend(cluster.exited());
        if let Some((child, status)) = exits.first() {
            return Some(format!("TaskManager {} (pid {}) {}", child.index, child.pid, describe_exit(*status)));
        }
        let registered: Vec<u32> = cluster.api().task_managers().iter().map(|t| t.pid).collect();
        let ended: Vec<u32> = exits.iter().map(|(c, _)| c.pid).collect();
        if let Some(child) = cluster.children().into_iter().find(|c| !registered.contains(&c.pid) && !ended.contains(&c.pid)) {
            return Some(format!(
                "TaskManager {} (pid {}) hung: the JobManager heard no heartbeat from it within {heartbeat_timeout:?} \
                 and removed it",
                child.index, child.pid
            ));
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
