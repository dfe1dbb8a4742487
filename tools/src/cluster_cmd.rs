//! `corestream cluster start|stop`: the command line of [`corestream::deploy`], which holds the
//! logic. This module parses the options, prints what happens as it happens, and exits 2 for bad
//! arguments or files and 1 for failures.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use corestream::deploy::{self, DeployError, SshSettings, StartOptions, StopOptions};

use crate::args::parse_positive_duration;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Start the JobManager here and one TaskManager per line of the workers file (here or
    /// through ssh), record them in the state directory, and wait until they are up.
    Start(StartArgs),
    /// Stop what `cluster start` recorded: SIGTERM, then SIGKILL after the grace period.
    Stop(StopArgs),
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// The configuration file, at the same path on every host (keys in docs/CONFIGURATION.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// One TaskManager host per line, optionally `slots=N` (default: `workers` beside --config).
    #[arg(long, value_name = "FILE")]
    workers: Option<PathBuf>,
    /// Where the records and logs go (default $XDG_RUNTIME_DIR/corestream, else
    /// /tmp/corestream-$USER). Remote TaskManagers log to the same path on their host when it is
    /// given, else to ~/.local/state/corestream there.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long to wait for every process to start and every TaskManager to register.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    timeout: Duration,
    /// The binary to run as `jobmanager` and `taskmanager`, at the same path on every host, e.g.
    /// an application-mode binary with its own job types (default: this program).
    #[arg(long, value_name = "FILE")]
    binary: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    /// The state directory `cluster start` used.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// How long a process may take to end after SIGTERM before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    grace: Duration,
}

/// Runs `cluster start` or `cluster stop`. A failure is printed here and ends the process with
/// its own status (2 for bad arguments or files, 1 otherwise), which the generic error path of
/// `main` could not tell apart.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    let mut print = |line: &str| println!("{line}");
    let outcome = match command {
        ClusterCommand::Start(args) => start(args, &mut print),
        ClusterCommand::Stop(args) => stop(args, &mut print),
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(i32::from(e.exit_code()));
    }
    Ok(())
}

fn start(args: StartArgs, print: &mut dyn FnMut(&str)) -> Result<(), DeployError> {
    let binary = match args.binary {
        Some(binary) if binary.is_file() => binary,
        Some(binary) => {
            return Err(DeployError::Invalid(format!("--binary {}: no such program file", binary.display())))
        }
        None => std::env::current_exe().map_err(|e| {
            DeployError::Invalid(format!("cannot find this program's executable to start the cluster: {e}"))
        })?,
    };
    let given = args.state_dir.is_some();
    let state_dir = args.state_dir.unwrap_or_else(deploy::default_state_dir_from_env);
    let mut opts = StartOptions::from_process(binary, args.config, args.workers, state_dir.clone());
    if given {
        opts.remote_log_dir = state_dir;
    }
    opts.timeout = args.timeout;
    let summary = deploy::start(&opts, print)?;
    let rest = match (&summary.jobmanager_line.rest, &summary.overview) {
        (Some(url), Some(o)) => format!(
            " (REST API on {url}: {} TaskManager(s), {} slot(s), {} free)",
            o.taskmanagers, o.slots_total, o.slots_available
        ),
        (Some(url), None) => format!(" (REST API on {url}, which did not answer GET /v1/overview)"),
        (None, _) => String::new(),
    };
    print(&format!(
        "cluster started: the JobManager at {}{rest} and {} TaskManager(s); state and logs in {}; stop it with \
         `corestream cluster stop --state-dir {}`",
        summary.jobmanager_line.rpc,
        summary.taskmanagers.len(),
        opts.state_dir.display(),
        opts.state_dir.display()
    ));
    Ok(())
}

fn stop(args: StopArgs, print: &mut dyn FnMut(&str)) -> Result<(), DeployError> {
    let state_dir = args.state_dir.unwrap_or_else(deploy::default_state_dir_from_env);
    let opts =
        StopOptions { state_dir, grace: args.grace, ssh: SshSettings::from_env(), this_host: deploy::this_host_name() };
    let summary = deploy::stop(&opts, print)?;
    if !summary.outcomes.is_empty() {
        let running = summary.stopped_any();
        print(if running { "cluster stopped" } else { "nothing was running; removed the stale records" });
    }
    Ok(())
}
