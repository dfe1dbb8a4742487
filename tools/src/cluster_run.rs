//! `--processes N` (per-job mode): the command's job runs on a JobManager in this process and
//! N TaskManager processes of this binary ([`corestream::processes`]), submitted by name with
//! the command's own arguments; this module only turns the options into settings and the
//! outcome into errors that name the TaskManager process at fault.
//!
//! Placement (hidden options, for the test across network namespaces): `--tm-bind IP:PORT` is
//! where TaskManager 0 binds its data listener, and the JobManager its RPC port (port 0), so
//! that TaskManagers in another namespace can reach both; `--child-bind` is where the others
//! bind theirs, and `--child-netns NAME` starts them through `ip netns exec NAME` (which execs
//! the binary in the same process, so its pid and its parent-death signal carry over).
//!
//! Failure detection: `--heartbeat-timeout` is the JobManager's heartbeat timeout, after which
//! it removes a silent TaskManager and fails its jobs; the data connections between
//! TaskManagers wait twice as long, so a hung TaskManager is named by the JobManager, which
//! knows it, rather than by a peer that only saw its connection go quiet. A failed job's error
//! is led by the TaskManager process behind it: one that ended (and how), or one still alive
//! that the JobManager removed (it hung).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use corestream::jobmanager::api::{ClusterApi, JobOutcome, JobState, SubmitRequest};
use corestream::jobmanager::JobManagerConfig;
use corestream::processes::{describe_exit, ChildInfo, ProcessCluster, ProcessClusterError, ProcessClusterSettings};

use crate::args::Common;
use crate::checkpointing::Recovery;

/// The JobManager's heartbeat timeout when `--heartbeat-timeout` is not given.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TaskManager the JobManager lost may take to be seen ending: a killed process
/// closes its connections a moment before it can be reaped.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Job slots of the job and slots of each TaskManager: `--parallelism`, else N × `--slots`
/// (1 per process by default), spread evenly when `--slots` is not given.
pub fn slots(common: &Common) -> anyhow::Result<(u32, u32)> {
    let parallelism =
        crate::limits::total_slots(common.processes, common.slots, common.parallelism).map_err(|e| anyhow!(e))?;
    Ok((parallelism, common.slots.unwrap_or_else(|| parallelism.div_ceil(common.processes.max(1)))))
}

/// The `-D key=value` settings every TaskManager gets from the options.
fn taskmanager_settings(common: &Common, heartbeat_timeout: Duration) -> Vec<String> {
    let credit = common.credit();
    let data_timeout = heartbeat_timeout * 2;
    let mut set = vec![
        format!("taskmanager.network.heartbeat.timeout={}ms", data_timeout.as_millis()),
        format!("taskmanager.network.heartbeat.interval={}ms", (heartbeat_timeout / 5).as_millis().max(1)),
        format!("heartbeat.timeout={}ms", heartbeat_timeout.as_millis()),
        format!("heartbeat.interval={}ms", (heartbeat_timeout / 5).as_millis().max(10)),
        format!("taskmanager.network.memory.buffers-per-channel={}", credit.exclusive_per_channel),
        format!("taskmanager.network.memory.floating-buffers-per-gate={}", credit.floating_per_gate),
        format!("taskmanager.network.memory.max-buffers-per-channel={}", credit.max_backlog_per_channel),
    ];
    if let Some(n) = common.network_buffers {
        set.push(format!("taskmanager.network.numberOfBuffers={n}"));
    }
    if let Some(spin) = common.spin_before_park {
        set.push(format!("taskmanager.slot.spin-before-park={}ns", spin.as_nanos()));
    }
    set
}

/// Where each TaskManager binds its data listener and in which namespace it starts, from the
/// placement options, and where the JobManager binds its RPC port.
fn placement(common: &Common) -> (Vec<SocketAddr>, Vec<Option<String>>, SocketAddr) {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let n = common.processes as usize;
    let binds = (0..n).map(|i| if i == 0 { common.tm_bind } else { common.child_bind }.unwrap_or(loopback)).collect();
    let netns = (0..n).map(|i| if i == 0 { None } else { common.child_netns.clone() }).collect();
    let rpc = common.tm_bind.map_or(loopback, |a| SocketAddr::new(a.ip(), 0));
    (binds, netns, rpc)
}

/// Runs job type `job` with `args` on `common.processes` TaskManager processes and returns its
/// outcome; a failed or cancelled job is an error naming why, and which TaskManager process
/// ended or hung, if one did.
pub fn run(common: &Common, job: &str, args: Vec<String>) -> anyhow::Result<JobOutcome> {
    run_with(common, job, args, &Recovery::default())
}

/// [`run`] with checkpoints, restarts or a restore (`recovery`): the JobManager restarts the
/// job from its latest checkpoint after a failure, on the TaskManagers still registered.
pub fn run_with(common: &Common, job: &str, args: Vec<String>, recovery: &Recovery) -> anyhow::Result<JobOutcome> {
    common.require_valid_placement();
    if let Some(addr) = common.tm_bind {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!("cannot bind the data address {addr} (given by --tm-bind): {e}");
        }
    }
    let (parallelism, slots) = slots(common)?;
    let heartbeat_timeout = common.heartbeat_timeout.unwrap_or(HEARTBEAT_TIMEOUT);
    let extra_args: Vec<OsString> = taskmanager_settings(common, heartbeat_timeout)
        .into_iter()
        .flat_map(|s| [OsString::from("-D"), OsString::from(s)])
        .collect();
    let (data_binds, netns, rpc_bind) = placement(common);
    let settings = ProcessClusterSettings {
        binary: std::env::current_exe().context("cannot find this program's executable to start TaskManagers")?,
        taskmanagers: common.processes,
        slots_per_taskmanager: slots,
        data_binds,
        netns: netns.clone(),
        extra_args,
        jobmanager: JobManagerConfig {
            rpc_bind,
            heartbeat_interval: heartbeat_timeout / 5,
            heartbeat_timeout,
            slot_request_timeout: Duration::from_secs(30),
            cluster: corestream::ClusterConfig { credit: common.credit(), ..Default::default() },
            ..Default::default()
        },
        ..Default::default()
    };
    let started = ProcessCluster::start(settings, crate::jobs::registry(), |child| {
        eprintln!("corestream: TaskManager {} started (pid {})", child.index, child.pid);
    });
    let mut cluster = started.map_err(|e| start_error(e, &netns))?;
    let api = cluster.api();
    for child in cluster.children() {
        let data = data_address(api.as_ref(), child.pid).unwrap_or_else(|| "unknown".into());
        eprintln!("corestream: TaskManager {} (pid {}) registered, data {data}", child.index, child.pid);
    }
    let request = SubmitRequest {
        job: job.to_string(),
        args,
        parallelism: Some(parallelism),
        checkpoints: recovery.checkpoints.clone(),
        restore: recovery.restore.clone(),
        allow_non_restored_state: recovery.allow_non_restored_state,
        restart_strategy: recovery.restart_strategy.clone(),
    };
    let (result, exits) = crate::progress::run_on_cluster(&mut cluster, request, job)?;
    let outcome = result.result.ok_or_else(|| anyhow!("the JobManager reported no outcome for the ended job"))?;
    if result.state == JobState::Finished {
        return Ok(outcome);
    }
    let message = outcome.failure.unwrap_or_else(|| format!("the job ended {:?}", result.state));
    let mut exits = exits;
    let deadline = std::time::Instant::now() + EXIT_GRACE;
    let lost = loop {
        exits.extend(cluster.exited());
        let lost = lost_children(&cluster.children(), &exits, &registered_pids(api.as_ref()));
        if lost.is_none() || !exits.is_empty() || std::time::Instant::now() >= deadline {
            break lost;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    bail!("{}", failure_message(message, &exits, lost, heartbeat_timeout))
}

/// The data address of the registered TaskManager with process id `pid`.
fn data_address(api: &dyn ClusterApi, pid: u32) -> Option<String> {
    api.task_managers().into_iter().find(|t| t.pid == pid).map(|t| t.data_address)
}

fn registered_pids(api: &dyn ClusterApi) -> Vec<u32> {
    api.task_managers().into_iter().map(|t| t.pid).collect()
}

/// Children that still run but are no longer registered: the JobManager removed them (no
/// heartbeat within its timeout).
fn lost_children(
    children: &[ChildInfo],
    exits: &[(ChildInfo, std::process::ExitStatus)],
    registered: &[u32],
) -> Option<ChildInfo> {
    children.iter().copied().find(|c| !registered.contains(&c.pid) && !exits.iter().any(|(e, _)| e.pid == c.pid))
}

/// The job's failure, led by the TaskManager process that ended (and how) or hung.
fn failure_message(
    message: String,
    exits: &[(ChildInfo, std::process::ExitStatus)],
    lost: Option<ChildInfo>,
    heartbeat_timeout: Duration,
) -> String {
    match (exits.first(), lost) {
        (Some((child, status)), _) => {
            format!("TaskManager {} (pid {}) {}: {message}", child.index, child.pid, describe_exit(*status))
        }
        (None, Some(child)) => format!(
            "TaskManager {} (pid {}) hung: the JobManager heard no heartbeat from it within {heartbeat_timeout:?} and \
             removed it: {message}",
            child.index, child.pid
        ),
        (None, None) => message,
    }
}

/// Why the cluster could not start, naming the namespace a TaskManager was started in.
fn start_error(e: ProcessClusterError, netns: &[Option<String>]) -> anyhow::Error {
    match e {
        ProcessClusterError::Died { index, pid, how } => {
            let through = match netns.get(index as usize).cloned().flatten() {
                Some(name) => format!(" (started through `ip netns exec {name}`)"),
                None => String::new(),
            };
            anyhow!("TaskManager {index} (pid {pid}) {how} before it registered{through}")
        }
        other => anyhow!(other),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn child(index: u32, pid: u32) -> ChildInfo {
        ChildInfo { index, pid }
    }

    #[test]
    fn a_failure_names_the_task_manager_that_ended_or_hung() {
        let children = [child(0, 10), child(1, 11), child(2, 12)];
        let killed = [(child(1, 11), ExitStatus::from_raw(libc::SIGKILL))];
        let timeout = Duration::from_secs(2);
        let e = failure_message("peer lost".into(), &killed, lost_children(&children, &killed, &[10, 12]), timeout);
        assert_eq!(e, "TaskManager 1 (pid 11) was killed by signal 9 (SIGKILL): peer lost");
        let lost = lost_children(&children, &[], &[10, 11]);
        assert_eq!(lost, Some(child(2, 12)));
        let e = failure_message("lost".into(), &[], lost, timeout);
        assert_eq!(
            e,
            "TaskManager 2 (pid 12) hung: the JobManager heard no heartbeat from it within 2s and removed it: lost"
        );
        let none = lost_children(&children, &[], &[10, 11, 12]);
        assert_eq!(failure_message("bad".into(), &[], none, timeout), "bad");
    }
}
