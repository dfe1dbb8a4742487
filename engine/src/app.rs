//! The cluster roles as a binary runs them: `jobmanager` and `taskmanager` with their
//! command-line options, read together with the configuration file, the `CORESTREAM_CONF_*`
//! variables and `-D key=value` overrides ([`crate::conf`]). The `corestream` binary uses these;
//! an application that links corestream and registers its own job types runs the same roles
//! with [`main`] (application mode), so its processes take the same options.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

use crate::auth::ClusterSecret;
use crate::conf::{ClusterSettings, ConfError, Role};
use crate::jobmanager::rest::{RestServer, RestSettings};
use crate::jobmanager::restart::RestartStrategy;
use crate::jobmanager::{JobManager, JobManagerConfig};
use crate::registry::JobRegistry;
use crate::taskmanager::{TaskManager, TaskManagerConfig};

/// Options shared by both roles.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// A TOML configuration file (keys in docs/CONFIGURATION.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sets a configuration key, after the file and the environment (repeatable).
    #[arg(short = 'D', long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `jobmanager [--config FILE] [-D KEY=VALUE]...`
#[derive(Args, Debug, Clone, Default)]
pub struct JobManagerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `taskmanager [--jobmanager HOST:PORT] [--slots N] [--config FILE] [-D KEY=VALUE]...`
#[derive(Args, Debug, Clone, Default)]
pub struct TaskManagerArgs {
    /// The JobManager's control address (sets jobmanager.rpc.address and jobmanager.rpc.port).
    #[arg(long, value_name = "HOST:PORT")]
    pub jobmanager: Option<String>,
    /// Slots (sets taskmanager.numberOfTaskSlots; default one per physical core).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Slot i is pinned to core `core-offset + i`, so TaskManagers sharing a machine take
    /// different cores.
    #[arg(long, default_value_t = 0, hide = true)]
    pub core_offset: u32,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Why a role could not start.
#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Startup(#[from] crate::error::StartupError),
    #[error("{0}")]
    Stopped(String),
}

impl AppError {
    /// Invalid configuration or arguments exit with 2, anything else with 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Invalid(_) => 2,
            AppError::Startup(crate::error::StartupError::InvalidConfig(_)) => 2,
            _ => 1,
        }
    }
}

fn overrides(args: &ConfigArgs, extra: Vec<(String, String)>) -> Result<Vec<(String, String)>, AppError> {
    let mut out = extra;
    for s in &args.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| AppError::Invalid(format!("-D {s}: expected KEY=VALUE, e.g. -D rest.port=8082")))?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

fn load(args: &ConfigArgs, extra: Vec<(String, String)>, role: Role) -> Result<ClusterSettings, AppError> {
    let overrides = overrides(args, extra)?;
    let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(ClusterSettings::load_from_process(args.config.as_deref(), &pairs, role)?)
}

fn secret(settings: &ClusterSettings) -> Result<Option<ClusterSecret>, AppError> {
    if !settings.security.auth_enabled {
        return Ok(None);
    }
    ClusterSecret::from_settings(&settings.security).map_err(|e| AppError::Invalid(e.to_string()))
}

fn resolve(host: &str, port: u16, key: &str) -> Result<SocketAddr, AppError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| AppError::Invalid(format!("{key} '{host}': {e}")))?
        .next()
        .ok_or_else(|| AppError::Invalid(format!("{key} '{host}' resolves to no address")))
}

/// The JobManager's runtime settings from its configuration.
pub fn jobmanager_config(settings: &ClusterSettings) -> Result<JobManagerConfig, AppError> {
    let jm = &settings.jobmanager;
    let cluster = settings.cluster_config(1);
    Ok(JobManagerConfig {
        rpc_bind: resolve(jm.bind_host(), jm.rpc_port, "jobmanager.bind-host")?,
        heartbeat_interval: settings.heartbeat.interval,
        heartbeat_timeout: settings.heartbeat.timeout,
        slot_request_timeout: jm.slot_request_timeout,
        restarts: RestartStrategy::factory(&settings.restart),
        checkpoint: settings.checkpoint.clone(),
        secret: secret(settings)?,
        cluster,
    })
}

/// The TaskManager's runtime settings from its configuration.
pub fn taskmanager_config(settings: &ClusterSettings, core_offset: u32) -> Result<TaskManagerConfig, AppError> {
    let tm = &settings.taskmanager;
    let jobmanager = format!("{}:{}", settings.jobmanager.rpc_address, settings.jobmanager.rpc_port);
    let jm_addr = resolve(&settings.jobmanager.rpc_address, settings.jobmanager.rpc_port, "jobmanager.rpc.address")?;
    // The address peers dial: configured, or the one this machine uses towards the JobManager
    // (a connected UDP socket sends nothing, it only picks the route).
    let advertised = match &tm.host {
        Some(host) => resolve(host, 0, "taskmanager.host")?.ip(),
        None => std::net::UdpSocket::bind(SocketAddr::new(
            if jm_addr.is_ipv4() { [0, 0, 0, 0].into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() },
            0,
        ))
        .and_then(|s| s.connect(jm_addr).and_then(|()| s.local_addr()))
        .map_err(|e| AppError::Invalid(format!("no route to the JobManager at {jm_addr}: {e}")))?
        .ip(),
    };
    let bind_ip = match &tm.bind_host {
        Some(host) => resolve(host, 0, "taskmanager.bind-host")?.ip(),
        None => advertised,
    };
    let cores = crate::runtime::topology::Topology::detect().physical_cores() as u32;
    let mut cluster = settings.cluster_config(cores);
    cluster.core_offset = core_offset;
    Ok(TaskManagerConfig {
        jobmanager,
        cluster,
        data_bind: SocketAddr::new(bind_ip, tm.data_port),
        advertised_host: Some(advertised),
        secret: secret(settings)?,
        reconnect_initial: tm.registration_initial_backoff,
        reconnect_max: tm.registration_max_backoff,
        registration_timeout: Duration::from_secs(10).min(tm.registration_timeout),
        give_up_after: Some(tm.registration_timeout),
    })
}

/// The REST API's settings from the configuration: body limit and the bearer check of
/// mutations against the cluster secret (none when authentication is off).
pub fn rest_settings(settings: &ClusterSettings, secret: Option<ClusterSecret>) -> Result<RestSettings, AppError> {
    let authorizer: Option<crate::jobmanager::rest::Authorizer> = secret.map(|secret| {
        Arc::new(move |header: Option<&str>| {
            crate::auth::check_bearer(Some(&secret), header).map_err(|e| e.to_string())
        }) as crate::jobmanager::rest::Authorizer
    });
    Ok(RestSettings {
        max_body_bytes: usize::try_from(settings.rest.max_content_length).unwrap_or(usize::MAX),
        authorizer,
        ..RestSettings::default()
    })
}

/// Waits for SIGINT or SIGTERM and returns it.
fn wait_for_signal() -> Result<i32, AppError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| AppError::Invalid(format!("cannot install signal handlers: {e}")))?;
    Ok(signals.forever().next().unwrap_or(SIGTERM))
}

/// Runs a JobManager until SIGINT or SIGTERM. Prints one line with its addresses.
pub fn run_jobmanager(args: &JobManagerArgs, registry: JobRegistry) -> Result<(), AppError> {
    let settings = load(&args.config, Vec::new(), Role::JobManager)?;
    let config = jobmanager_config(&settings)?;
    let rest_settings = rest_settings(&settings, config.secret.clone())?;
    let rest_bind = resolve(&settings.rest.bind_address, settings.rest.port, "rest.bind-address")?;
    let jm = JobManager::start(config, registry)?;
    let rest = RestServer::start(rest_bind, jm.api(), rest_settings).map_err(|e| {
        AppError::Startup(crate::error::StartupError::InvalidConfig(crate::conf::listen_error(
            "the REST API",
            rest_bind,
            "rest.bind-address",
            "rest.port",
            &e,
        )))
    })?;
    println!("jobmanager: TaskManagers connect to {}; REST API on {}", jm.rpc_address(), rest.url());
    let signal = wait_for_signal()?;
    tracing::info!(signal, "JobManager stopping");
    if let Err(e) = rest.shutdown() {
        tracing::warn!(error = %e, "the REST API did not stop cleanly");
    }
    jm.shutdown();
    Ok(())
}

/// Runs a TaskManager until SIGINT or SIGTERM, or until it gives up registering.
pub fn run_taskmanager(args: &TaskManagerArgs, registry: JobRegistry) -> Result<(), AppError> {
    let mut extra = Vec::new();
    if let Some(jm) = &args.jobmanager {
        let (host, port) =
            jm.rsplit_once(':').ok_or_else(|| AppError::Invalid(format!("--jobmanager {jm}: expected HOST:PORT")))?;
        extra.push(("jobmanager.rpc.address".to_string(), host.trim_matches(['[', ']']).to_string()));
        extra.push(("jobmanager.rpc.port".to_string(), port.to_string()));
    }
    if let Some(slots) = args.slots {
        extra.push(("taskmanager.numberOfTaskSlots".to_string(), slots.to_string()));
    }
    let settings = load(&args.config, extra, Role::TaskManager)?;
    let config = taskmanager_config(&settings, args.core_offset)?;
    let tm = TaskManager::start(config, registry)?;
    println!(
        "taskmanager {}: {} slot(s), data on {}",
        tm.id(),
        tm.num_slots(),
        tm.data_address().map_or_else(|| "-".into(), |a| a.to_string())
    );
    let (done_tx, done) = std::sync::mpsc::channel();
    let signals = std::thread::spawn(move || {
        let signal = wait_for_signal();
        let _ = done_tx.send(());
        signal
    });
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Some(tm)));
    loop {
        if done.recv_timeout(Duration::from_millis(200)).is_ok() {
            let _ = signals.join();
            if let Some(tm) = shared.lock().unwrap_or_else(|e| e.into_inner()).take() {
                tm.shutdown();
            }
            return Ok(());
        }
        let gave_up = shared.lock().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|tm| tm.status().gave_up);
        if let Some(why) = gave_up {
            return Err(AppError::Stopped(why));
        }
    }
}

/// The roles as subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum RoleCommand {
    /// Run a JobManager until SIGINT or SIGTERM.
    Jobmanager(JobManagerArgs),
    /// Run a TaskManager that registers with a JobManager, until SIGINT or SIGTERM.
    Taskmanager(TaskManagerArgs),
}

#[derive(Parser, Debug)]
struct AppCli {
    #[command(subcommand)]
    role: RoleCommand,
}

/// Runs a role chosen on the command line (`jobmanager ...` or `taskmanager ...`) with the
/// application's job types: the `main` of an application-mode binary.
pub fn main(registry: JobRegistry) -> ExitCode {
    let cli = AppCli::parse();
    let outcome = match &cli.role {
        RoleCommand::Jobmanager(args) => run_jobmanager(args, registry),
        RoleCommand::Taskmanager(args) => run_taskmanager(args, registry),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
