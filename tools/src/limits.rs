//! The upper bounds of the numeric options, and the checks of an option against another or
//! against the machine that run after parsing and before anything is allocated or started.
//!
//! One exit-code rule: whatever these refuse is an invalid argument and exits with status 2
//! through clap, as an option clap itself refuses; status 1 is left for a job that failed.
//! Single options are bounded by their parsers in [`crate::args`]; [`check`] covers what one
//! parser cannot see: `--processes` on a command that runs in one process, `--parallelism`
//! beyond `--slots`, job slots over all `--processes`, and the memory of the buffer pool the
//! options size (given or derived from the slots and credit).

use clap::error::ErrorKind;
use clap::CommandFactory;
use corestream_netstack::BUFFER_SIZE;

use crate::args::Common;
use crate::bench::BenchCommand;
use crate::run::RunCommand;
use crate::{Cli, Command};

/// Most subtasks of an operator and most slots of a job: the key groups of keyed operators
/// (`ExecutionConfig::max_parallelism`); a keyed subtask beyond them would own no key group.
pub const PARALLELISM_MAX: u32 = 128;

/// Most events or records one run may generate (`--events`, `--records`): at 100 M records/s
/// about three hours.
pub const COUNT_MAX: u64 = 1_000_000_000_000;

/// Most distinct keys (`--keys`): the single-threaded references hold one entry per key (16
/// bytes each in `run sum-by-key`'s), and so does the keyed state.
pub const KEYS_MAX: u64 = 100_000_000;

/// Largest generated corpus of `demo` in MB: its reference count reads it whole.
pub const CORPUS_MB_MAX: u64 = 4096;

/// Most rounds of `bench transport`.
pub const ROUNDS_MAX: u32 = 100;

/// Physical memory of the machine, in bytes (`sysconf`); 1 GiB if unknown.
pub fn memory_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads system configuration.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    match (u64::try_from(pages), u64::try_from(page)) {
        (Ok(pages), Ok(page)) if pages > 0 && page > 0 => pages.saturating_mul(page),
        _ => 1 << 30,
    }
}

/// Most 32 KB buffers a pool may have: as many as fill the machine's physical memory.
pub fn network_buffers_max() -> u32 {
    u32::try_from(memory_bytes() / BUFFER_SIZE as u64).unwrap_or(u32::MAX).max(1)
}

/// `bytes` in GiB, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Exits with status 2 (clap's formatting) if [`check`] refuses the command.
pub fn require_valid(command: &Command) {
    if let Err(e) = check(command) {
        e.exit();
    }
}

/// The cluster options of `command`, if it takes them.
pub fn common_of(command: &Command) -> Option<&Common> {
    match command {
        Command::Run(RunCommand::SumByKey { common, .. } | RunCommand::Wordcount { common, .. }) => Some(common),
        Command::Run(RunCommand::WindowAgg(args)) => Some(&args.common),
        Command::Plan { common, .. } => Some(common),
        Command::Bench(
            BenchCommand::Passthrough { common, .. }
            | BenchCommand::KeyedSum { common, .. }
            | BenchCommand::Window { common, .. }
            | BenchCommand::Nexmark { common, .. }
            | BenchCommand::Latency { common, .. }
            | BenchCommand::Network { common, .. },
        ) => Some(common),
        Command::Bench(BenchCommand::Checkpoints(args)) => Some(&args.common),
        Command::Bench(BenchCommand::Transport { .. })
        | Command::Demo(_)
        | Command::Profile(_)
        | Command::Jobmanager(_)
        | Command::Taskmanager(_)
        | Command::Client(_)
        | Command::Cluster(_)
        | Command::Checkpoints(_) => None,
    }
}

/// Refuses `--processes N` (N > 1) on commands that run in one process. Commands not named
/// here either take no cluster options or run their job on a process cluster
/// ([`crate::cluster_run`]); `Common::cluster` refuses the option as well, for any command
/// that starts a one-process cluster.
pub fn check_processes(command: &Command) -> Result<(), String> {
    let name = match command {
        Command::Run(RunCommand::WindowAgg(_)) => "run window-agg",
        Command::Plan { .. } => "plan",
        Command::Bench(BenchCommand::Passthrough { .. }) => "bench passthrough",
        Command::Bench(BenchCommand::KeyedSum { .. }) => "bench keyed-sum",
        Command::Bench(BenchCommand::Window { .. }) => "bench window",
        Command::Bench(BenchCommand::Nexmark { .. }) => "bench nexmark",
        Command::Bench(BenchCommand::Checkpoints(_)) => "bench checkpoints",
        _ => return Ok(()),
    };
    match common_of(command) {
        Some(common) if common.processes > 1 => Err(format!(
            "`corestream {name}` runs in one process and does not take --processes {}; only `corestream run \
             sum-by-key`, `corestream run wordcount`, `corestream bench network` and `corestream bench latency` run \
             across TaskManager processes",
            common.processes
        )),
        _ => Ok(()),
    }
}

/// Job slots over all processes: `--parallelism`, else N × `--slots` (1 slot per process by
/// default); `--parallelism` beyond N × `--slots` is refused.
pub fn total_slots(processes: u32, slots: Option<u32>, parallelism: Option<u32>) -> Result<u32, String> {
    let per_process = slots.unwrap_or(1);
    let available = per_process
        .checked_mul(processes)
        .ok_or_else(|| format!("--slots {per_process} × --processes {processes} is too many slots"))?;
    match (slots, parallelism) {
        (Some(_), Some(p)) if p > available => Err(format!(
            "--parallelism {p} needs {p} job slots but --processes {processes} × --slots {per_process} gives {available}"
        )),
        (_, Some(p)) => Ok(p),
        (_, None) => Ok(available),
    }
}

/// Checks the options of `command` against each other and the machine.
pub fn check(command: &Command) -> Result<(), clap::Error> {
    let conflict = |m: String| Cli::command().error(ErrorKind::ArgumentConflict, m);
    check_processes(command).map_err(conflict)?;
    let invalid = |m: String| Cli::command().error(ErrorKind::ValueValidation, m);
    if let Command::Demo(args) = command {
        let slots = args.slots.unwrap_or_else(cpus);
        return check_pool(None, slots, &corestream_netstack::CreditConfig::default()).map_err(invalid);
    }
    let Some(common) = common_of(command) else { return Ok(()) };
    common.check_placement().map_err(conflict)?;
    let slots = process_slots(common).map_err(conflict)?;
    check_pool(common.network_buffers, slots, &common.credit()).map_err(invalid)
}

/// Logical CPUs: at least the physical cores a cluster without `--slots` gets a slot for.
fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The most slots one process's cluster gets with these options, or why they conflict.
fn process_slots(common: &Common) -> Result<u32, String> {
    if common.processes > 1 {
        let total = total_slots(common.processes, common.slots, common.parallelism)?;
        if total > PARALLELISM_MAX {
            return Err(format!(
                "--slots {} × --processes {} is {total} job slots, more than the limit of {PARALLELISM_MAX}",
                common.slots.unwrap_or(1),
                common.processes
            ));
        }
        return Ok(total.div_ceil(common.processes));
    }
    match (common.slots, common.parallelism) {
        (Some(s), Some(p)) if p > s => Err(format!("--parallelism {p} needs at least {p} slots but --slots is {s}")),
        (Some(s), _) => Ok(s),
        (None, Some(p)) => Ok(p),
        (None, None) => Ok(cpus().min(PARALLELISM_MAX)),
    }
}

/// Refuses a pool larger than the machine's memory: `buffers` given, or the size the cluster
/// derives from `slots` and `credit`.
fn check_pool(buffers: Option<u32>, slots: u32, credit: &corestream_netstack::CreditConfig) -> Result<(), String> {
    let memory = memory_bytes();
    let (count, why) = match buffers {
        Some(n) => (n, format!("--network-buffers {n}")),
        None => {
            let n = corestream::config::auto_network_buffers(slots.max(1), credit);
            (n, format!("the pool sized for {slots} slots with these credit settings ({n} buffers)"))
        }
    };
    let bytes = u64::from(count) * BUFFER_SIZE as u64;
    if bytes > memory {
        return Err(format!(
            "{why} is {} of 32 KB buffers, more than the machine's {} of memory; give fewer slots, smaller \
             --exclusive-buffers/--floating-buffers/--max-backlog, or --network-buffers",
            gib(bytes),
            gib(memory)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_limit_is_the_engines_key_groups() {
        assert_eq!(PARALLELISM_MAX, corestream::ExecutionConfig::default().max_parallelism);
    }

    #[test]
    fn job_slots_over_processes() {
        assert_eq!(total_slots(2, None, None), Ok(2));
        assert_eq!(total_slots(2, Some(3), None), Ok(6));
        assert_eq!(total_slots(2, None, Some(5)), Ok(5));
        assert_eq!(total_slots(2, Some(2), Some(4)), Ok(4));
        assert!(total_slots(2, Some(1), Some(3)).unwrap_err().contains("--parallelism 3 needs 3 job slots"));
        assert!(total_slots(u32::MAX, Some(2), None).unwrap_err().contains("too many slots"));
    }

    #[test]
    fn pools_beyond_memory_are_refused() {
        let credit = corestream_netstack::CreditConfig::default();
        assert!(check_pool(Some(1), 1, &credit).is_ok());
        assert!(check_pool(None, 2, &credit).is_ok());
        let e = check_pool(Some(u32::MAX), 1, &credit).unwrap_err();
        assert!(e.contains("--network-buffers 4294967295") && e.contains("memory"), "{e}");
        let huge = corestream_netstack::CreditConfig {
            exclusive_per_channel: 1024,
            floating_per_gate: 1024,
            max_backlog_per_channel: 1024,
        };
        assert!(check_pool(None, PARALLELISM_MAX, &huge).unwrap_err().contains("credit settings"));
    }
}
