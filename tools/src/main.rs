//! `corestream`: run example jobs and benchmarks on an embedded local cluster, profile them
//! into flame graphs, and print job plans. Invalid arguments exit with status 2 (clap), failed
//! jobs with status 1.

mod args;
mod bench;
mod checkpoint_bench;
mod checkpointing;
mod checkpoints_cmd;
mod client_cli;
mod cluster_cmd;
mod cluster_run;
mod demo;
mod jobs;
mod latency;
mod limits;
mod local_run;
mod outputs;
mod profile;
mod progress;
mod run;
mod window_agg;

use std::process::ExitCode;

/// Records often own heap memory (strings) allocated on one thread and freed on another (a
/// host feeding a channel source, exchanges between slots); mimalloc frees those without the
/// cross-arena locking of glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::args::Common;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`; the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the process instead of going back to the OS 10 ms after it is freed
/// (mimalloc's default): each checkpoint freezes and encodes its state into new buffers, and
/// with purging every one of them landed on pages the kernel had to fault in and zero again —
/// about 26,000 page faults per 10 s of the window benchmark with checkpoints every second,
/// against 600 without purging; zeroing those pages alone took 2.7–3.1 % of the run's CPU.
/// The process keeps its peak heap, as a JVM keeps its heap. `MIMALLOC_PURGE_DELAY`
/// (milliseconds; -1 never) still decides when it is set.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option of the allocator, which mimalloc reads
        // atomically; no pointer crosses the call.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "corestream",
    version,
    about = "A thread-per-core, zero-copy stream processor",
    after_help = "Counts: 1000, 1_000, 10k, 10M, 2G (powers of 1000) or 1e6. Durations: a number and a unit \
                  (ns, us, ms, s, m), e.g. 250us or 1.5s, or a bare 0; at most 1 hour. Every numeric option has an \
                  upper bound (see each command's --help and the README). Invalid arguments exit with status 2, \
                  failed jobs with status 1."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process")]
enum Command {
    /// Run an example job.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Run a throughput benchmark.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print the plan (chains, parallelism, partitioning) of an example job.
    Plan {
        /// wordcount, sum-by-key, passthrough or keyed-sum
        example: String,
        #[command(flatten)]
        common: Common,
    },
    /// The main job: word count over a generated corpus, a keyed sum and both benchmarks at 1
    /// and 2 slots, each checked against a reference, with figures.
    Demo(demo::DemoArgs),
    /// Run a `run`, `bench` or `demo` command line (after `--`) while sampling its threads;
    /// writes a flame graph (SVG) and folded stacks per slot thread and for all threads.
    Profile(profile::ProfileArgs),
    /// Run a JobManager (dispatcher, resource manager, job masters) until SIGINT or SIGTERM.
    Jobmanager(corestream::app::JobManagerArgs),
    /// Run a TaskManager that registers with a JobManager, until SIGINT or SIGTERM.
    Taskmanager(corestream::app::TaskManagerArgs),
    /// The client of a running JobManager: `submit`, `list`, `cancel`, `savepoint`, `stop`, `info`.
    #[command(flatten)]
    Client(client_cli::ClientCommand),
    /// Start or stop a cluster on this machine and the hosts of a workers file (as Flink's
    /// start-cluster.sh and stop-cluster.sh).
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Checkpoints: `checkpoints list DIR` inspects a checkpoint directory; `checkpoints
    /// trigger JOB_ID` and `checkpoints stats JOB_ID` ask a running JobManager.
    #[command(subcommand)]
    Checkpoints(checkpoints_cmd::CheckpointsCommand),
}

/// Runs one command; `profile` calls it again for the command line it profiles.
fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(cmd) => run::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Plan { example, common } => run::plan(&example, &common),
        Command::Demo(args) => demo::run(args),
        Command::Profile(args) => profile::run(args),
        Command::Jobmanager(args) => Ok(corestream::app::run_jobmanager(&args, jobs::registry())?),
        Command::Taskmanager(args) => Ok(corestream::app::run_taskmanager(&args, jobs::registry())?),
        Command::Client(cmd) => client_cli::run(cmd),
        Command::Cluster(cmd) => cluster_cmd::run(cmd),
        Command::Checkpoints(cmd) => checkpoints_cmd::run(cmd),
    }
}

fn main() -> ExitCode {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts, so that
    // `corestream … | head` ends quietly like other Unix tools instead of panicking on a write.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    keep_freed_memory();
    // Job warnings are logged by the engine as they happen and printed again, with the
    // results, by each command: the default filter keeps the second, so each is printed once.
    // Colour codes only on a terminal (clap decides the same way for its own messages).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORESTREAM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    limits::require_valid(&cli.command);
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_argument_error(&e) => {
            Cli::command().error(clap::error::ErrorKind::ValueValidation, format!("{e:#}")).exit()
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the engine refused the job before it started for a reason no run can overcome
/// with these options: a pool smaller than the job needs (`--network-buffers`, or the credit
/// options), or fewer slots than its parallelism. Such a refusal is an invalid argument.
fn is_argument_error(e: &anyhow::Error) -> bool {
    use corestream::{JobError, NetError};
    if e.chain().any(|c| c.downcast_ref::<corestream::app::AppError>().is_some_and(|a| a.exit_code() == 2)) {
        return true;
    }
    e.chain().any(|cause| match cause.downcast_ref::<JobError>() {
        Some(JobError::Network(NetError::InsufficientBuffers { requested, capacity, .. })) => requested > capacity,
        Some(JobError::NotEnoughSlots { needed, total, .. }) => needed > total,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_kept_unless_the_environment_says_otherwise() {
        super::keep_freed_memory();
        // SAFETY: reads a plain integer option of the allocator.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        match std::env::var("MIMALLOC_PURGE_DELAY") {
            Err(_) => {
                assert_eq!(delay, -1, "purging is off");
                // Option 15 is the one mimalloc reads `MIMALLOC_PURGE_DELAY` into: this test,
                // run again with the variable set, must find that value there.
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "tests::freed_memory_is_kept_unless_the_environment_says_otherwise"])
                    .env("MIMALLOC_PURGE_DELAY", "250")
                    .status()
                    .unwrap();
                assert!(status.success(), "with MIMALLOC_PURGE_DELAY=250: {status}");
            }
            Ok(set) => assert_eq!(delay.to_string(), set.trim(), "the environment decides"),
        }
    }
}
