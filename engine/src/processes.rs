//! Per-job mode on one machine: a JobManager in this process and TaskManager processes of a
//! binary that registers the same job types (`<binary> taskmanager --jobmanager ADDR ...`),
//! started, watched and stopped here. `corestream run ... --processes N` and the benchmarks
//! that measure across processes use it; an application can use it with its own binary.
//!
//! The children share this process's standard input and inherited descriptors (a job may read
//! `/dev/stdin`); their standard output is discarded and their standard error is this one's.
//!
//! The children die with this process: each is started with `PR_SET_PDEATHSIG` (SIGKILL) by a
//! thread that lives as long as the [`ProcessCluster`], because the kernel ties that signal to
//! the thread that forked the child, not to the process. Dropping the cluster stops every child
//! (SIGTERM, then SIGKILL after a grace period) and reaps it, on every path.

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::jobmanager::api::{ClusterApi, JobExecutionResult, SubmitRequest};
use crate::jobmanager::{JobManager, JobManagerConfig};
use crate::registry::JobRegistry;

/// How to start the TaskManager processes.
#[derive(Debug, Clone)]
pub struct ProcessClusterSettings {
    /// The binary to run as `<binary> taskmanager ...`.
    pub binary: PathBuf,
    pub taskmanagers: u32,
    pub slots_per_taskmanager: u32,
    /// Where TaskManager `i`'s data listener binds (default `127.0.0.1:0` each).
    pub data_binds: Vec<SocketAddr>,
    /// Start TaskManager `i` through `ip netns exec NAME` when `netns[i]` is set.
    pub netns: Vec<Option<String>>,
    /// More arguments for every `taskmanager` command line (`-D key=value` settings).
    pub extra_args: Vec<OsString>,
    /// The JobManager's settings; `rpc_bind` port 0 picks a free port.
    pub jobmanager: JobManagerConfig,
    /// How long the TaskManagers may take to register.
    pub registration_timeout: Duration,
}

impl Default for ProcessClusterSettings {
    fn default() -> Self {
        Self {
            binary: PathBuf::new(),
            taskmanagers: 2,
            slots_per_taskmanager: 1,
            data_binds: Vec::new(),
            netns: Vec::new(),
            extra_args: Vec::new(),
            jobmanager: JobManagerConfig { rpc_bind: SocketAddr::from(([127, 0, 0, 1], 0)), ..Default::default() },
            registration_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a process cluster could not start or run a job.
#[derive(Debug, Error)]
pub enum ProcessClusterError {
    #[error("cannot start the JobManager: {0}")]
    JobManager(#[from] crate::error::StartupError),
    #[error("cannot start TaskManager {index} ({command}): {cause}")]
    Spawn { index: u32, command: String, cause: io::Error },
    #[error("TaskManager {index} (pid {pid}) {how} before it registered")]
    Died { index: u32, pid: u32, how: String },
    #[error("only {registered} of {expected} TaskManager(s) registered within {waited:?}")]
    NotRegistered { registered: u32, expected: u32, waited: Duration },
    #[error("the job was refused: {0}")]
    Refused(String),
}

/// One started TaskManager process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildInfo {
    pub index: u32,
    pub pid: u32,
}

enum SpawnerRequest {
    Spawn(Box<std::process::Command>, mpsc::Sender<io::Result<Child>>),
}

/// A JobManager here and TaskManager processes on this machine.
pub struct ProcessCluster {
    jobmanager: Option<JobManager>,
    children: Vec<(ChildInfo, Child, Option<ExitStatus>)>,
    spawner: Option<(mpsc::Sender<SpawnerRequest>, std::thread::JoinHandle<()>)>,
}

impl std::fmt::Debug for ProcessCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCluster")
            .field("children", &self.children.iter().map(|c| c.0).collect::<Vec<_>>())
            .finish()
    }
}

/// How a process ended, in words.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal} ({})", signal_name(signal)),
        _ => "ended".to_string(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSTOP => "SIGSTOP",
        _ => "another signal",
    }
}

impl ProcessCluster {
    /// Starts the JobManager and the TaskManagers, and waits until every TaskManager has
    /// registered. `registry` must hold the job types the TaskManagers' binary registers.
    pub fn start(
        settings: ProcessClusterSettings,
        registry: JobRegistry,
        mut started: impl FnMut(ChildInfo),
    ) -> Result<Self, ProcessClusterError> {
        // A secret of this run only, unless the caller chose one.
        let mut jm_config = settings.jobmanager.clone();
        let secret = match &jm_config.secret {
            Some(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            None => {
                let text: String = crate::auth::nonce().iter().map(|b| format!("{b:02x}")).collect();
                jm_config.secret = Some(
                    crate::auth::ClusterSecret::new(&text, "a generated secret")
                        .map_err(|e| ProcessClusterError::Refused(e.to_string()))?,
                );
                Some(text)
            }
        };
        let jobmanager = JobManager::start(jm_config, registry)?;
        let address = jobmanager.rpc_address();
        let (tx, rx) = mpsc::channel::<SpawnerRequest>();
        let parent = std::process::id();
        let thread = std::thread::Builder::new()
            .name("cs-spawner".into())
            .spawn(move || {
                for SpawnerRequest::Spawn(mut command, reply) in rx {
                    // SAFETY: the hook runs in the child between fork and exec and calls only
                    // async-signal-safe functions (prctl, getppid); it allocates nothing.
                    unsafe {
                        command.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            if libc::getppid() as u32 != parent {
                                return Err(io::Error::from_raw_os_error(libc::ESRCH));
                            }
                            Ok(())
                        })
                    };
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(|cause| ProcessClusterError::Spawn { index: 0, command: "a spawner thread".into(), cause })?;
        let mut cluster = Self { jobmanager: Some(jobmanager), children: Vec::new(), spawner: Some((tx, thread)) };
        for index in 0..settings.taskmanagers {
            let bind =
                settings.data_binds.get(index as usize).copied().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
            let mut args: Vec<OsString> = vec![
                "taskmanager".into(),
                "--jobmanager".into(),
                address.to_string().into(),
                "--slots".into(),
                settings.slots_per_taskmanager.to_string().into(),
                "--core-offset".into(),
                (index * settings.slots_per_taskmanager).to_string().into(),
                "-D".into(),
                format!("taskmanager.bind-host={}", bind.ip()).into(),
                "-D".into(),
                format!("taskmanager.host={}", bind.ip()).into(),
                "-D".into(),
                format!("taskmanager.data.port={}", bind.port()).into(),
            ];
            args.extend(settings.extra_args.iter().cloned());
            let netns = settings.netns.get(index as usize).cloned().flatten();
            let mut command = match &netns {
                Some(name) => {
                    let mut c = std::process::Command::new("ip");
                    c.args(["netns", "exec", name]).arg(&settings.binary);
                    c
                }
                None => std::process::Command::new(&settings.binary),
            };
            command.args(&args).stdin(Stdio::inherit()).stdout(Stdio::null());
            // The secret goes through the environment, never the command line (which `ps` shows).
            match &secret {
                Some(s) => command.env("CORESTREAM_CONF_SECURITY_CLUSTER_SECRET", s),
                None => command.env("CORESTREAM_CONF_SECURITY_AUTH_ENABLED", "false"),
            };
            let text = format!("{:?}", command);
            let child =
                cluster.spawn(command).map_err(|cause| ProcessClusterError::Spawn { index, command: text, cause })?;
            let info = ChildInfo { index, pid: child.id() };
            tracing::info!(index, pid = info.pid, "TaskManager process started");
            started(info);
            cluster.children.push((info, child, None));
        }
        let deadline = Instant::now() + settings.registration_timeout;
        loop {
            let registered = cluster.api().overview().taskmanagers;
            if registered >= settings.taskmanagers {
                break;
            }
            if let Some((info, status)) = cluster.exited().into_iter().next() {
                return Err(ProcessClusterError::Died { index: info.index, pid: info.pid, how: describe_exit(status) });
            }
            if Instant::now() >= deadline {
                return Err(ProcessClusterError::NotRegistered {
                    registered,
                    expected: settings.taskmanagers,
                    waited: settings.registration_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(cluster)
    }

    fn spawn(&self, command: std::process::Command) -> io::Result<Child> {
        let (reply, answer) = mpsc::channel();
        let (tx, _) = self.spawner.as_ref().expect("the spawner lives as long as the cluster");
        tx.send(SpawnerRequest::Spawn(Box::new(command), reply))
            .map_err(|_| io::Error::other("the spawner thread has ended"))?;
        answer.recv().map_err(|_| io::Error::other("the spawner thread has ended"))?
    }

    /// The JobManager's operations.
    pub fn api(&self) -> Arc<dyn ClusterApi> {
        self.jobmanager.as_ref().expect("running until dropped").api()
    }

    pub fn jobmanager(&self) -> &JobManager {
        self.jobmanager.as_ref().expect("running until dropped")
    }

    pub fn children(&self) -> Vec<ChildInfo> {
        self.children.iter().map(|c| c.0).collect()
    }

    /// Children that have ended since the last call, with how.
    pub fn exited(&mut self) -> Vec<(ChildInfo, ExitStatus)> {
        let mut ended = Vec::new();
        for (info, child, status) in self.children.iter_mut() {
            if status.is_none() {
                if let Ok(Some(s)) = child.try_wait() {
                    *status = Some(s);
                    ended.push((*info, s));
                }
            }
        }
        ended
    }

    /// Submits a job and waits for its end, calling `progress` about every 100 ms while it
    /// runs (it may cancel the job through the API). A child that ends while the job runs is
    /// logged; the JobManager notices the lost TaskManager and fails or restarts the job.
    pub fn run(
        &mut self,
        request: SubmitRequest,
        mut progress: impl FnMut(&dyn ClusterApi, &str),
    ) -> Result<(JobExecutionResult, Vec<(ChildInfo, ExitStatus)>), ProcessClusterError> {
        let api = self.api();
        let id = api.submit(request).map_err(|e| ProcessClusterError::Refused(e.message))?.jobid.to_string();
        let mut exits = Vec::new();
        let mut last = Instant::now();
        loop {
            let result = api.execution_result(&id).map_err(|e| ProcessClusterError::Refused(e.message))?;
            exits.extend(self.exited());
            if result.state.is_terminal() {
                return Ok((result, exits));
            }
            if last.elapsed() >= Duration::from_millis(100) {
                progress(api.as_ref(), &id);
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(jm) = &self.jobmanager {
            jm.closing();
        }
        for (_, child, status) in self.children.iter_mut() {
            if status.is_none() {
                // SAFETY: signalling a child we started and have not reaped (its pid is ours).
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child, status) in self.children.iter_mut() {
            while status.is_none() {
                match child.try_wait() {
                    Ok(Some(s)) => *status = Some(s),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        *status = child.wait().ok().or(Some(ExitStatus::from_raw(9)));
                    }
                }
            }
        }
        if let Some(jm) = self.jobmanager.take() {
            jm.shutdown();
        }
        if let Some((tx, thread)) = self.spawner.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
