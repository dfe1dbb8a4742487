//! `corestream profile --duration D --output DIR [--frequency HZ] -- <command line>`: runs a
//! `run`, `bench` or `demo` command line in this process while pprof-rs samples every thread
//! (SIGPROF from `setitimer(ITIMER_PROF)`, so a thread is sampled in proportion to the CPU
//! time it uses), then writes per slot thread (`cs-slot-<n>`) and for all threads together a
//! flame graph drawn by inferno and the folded stacks it was drawn from.
//!
//! Sampling covers the first D of the run (cluster start-up included) and then stops; the job
//! runs on to its end undisturbed, and the stacks are symbolized and written after it. A job
//! that ends before D is profiled whole, and the summary says so. The command line after `--`
//! is parsed by the same clap parser as the program's own arguments. pprof's table of samples
//! takes about 250 MB, which shows in the peak memory a profiled benchmark reports.
//!
//! The files are checked before the job starts (the directory is created if missing and must
//! take new files; an unusable directory is an invalid argument, exit status 2), staged beside
//! their destinations while the profile is drawn, and moved into place only once the profiled
//! command succeeded and every file was written: a failed command leaves the files of an
//! earlier profile in the directory as they were.
//!
//! Stacks are unwound by pprof's default unwinder, which follows the DWARF call-frame
//! information (`.eh_frame`, through libgcc's `_Unwind_Backtrace`) from the signal handler
//! through the signal frame into the interrupted code. Its `frame-pointer` unwinder was tried
//! too and rejected: it starts from the interrupted function's saved frame pointer, so every
//! stack lacks its innermost function (time in a leaf such as `memcpy` or a generator's
//! `next_person` is charged to its caller), and a sample taken in glibc, which is built
//! without frame pointers, has no stack at all — a third of the samples of
//! `bench nexmark --query q1 -p 2`. With DWARF every stack reaches its thread's root
//! (`clone3`, `_start`). Samples whose interrupted code is in libgcc (the unwinder itself) or
//! the vDSO are dropped rather than unwound (pprof's blocklist). Release builds keep frame
//! pointers all the same, for `perf --call-graph fp`, and "limited" debug info, whose linkage
//! names give inlined frames their full paths (`.cargo/config.toml`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches};
use inferno::flamegraph::{self, color::MultiPalette, Palette};
use pprof::{Frames, ProfilerGuardBuilder, UnresolvedReport};

use crate::args::parse_duration;
use crate::{Cli, Command};

/// Name prefix of the slot threads (see `engine/src/runtime/slot.rs`).
const SLOT_THREAD_PREFIX: &str = "cs-slot-";
/// File stem of the flame graph and folded stacks of all threads.
const COMBINED: &str = "combined";
/// Shared objects in which a sample is dropped instead of unwound.
const BLOCKLIST: [&str; 2] = ["libgcc", "vdso"];

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// How long to sample from the start of the run, e.g. 3s; the job then runs to its end.
    #[arg(long, value_parser = parse_window)]
    duration: Duration,
    /// Directory for the flame graphs (.svg) and folded stacks (.folded); created if missing.
    /// The files are replaced only when the profiled command succeeded.
    #[arg(long)]
    output: PathBuf,
    /// Samples per second of CPU time (the kernel checks the timer once per tick, so rates
    /// above its tick rate, CONFIG_HZ, are capped there).
    #[arg(long, default_value_t = 499, value_parser = clap::value_parser!(u32).range(1..=1000))]
    frequency: u32,
    /// The command line to profile, e.g. `-- bench nexmark --query q5 --events 5M -p 2`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("'{s}' samples nothing: give a duration above 0, e.g. 3s")),
        d => Ok(d),
    }
}

pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let job = parse_job(&args.command).unwrap_or_else(|e| e.exit());
    if let Err(message) = prepare_output(&args.output, &job) {
        Cli::command().error(ErrorKind::ValueValidation, format!("--output: {message}")).exit();
    }
    let shown = args.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ");

    let (outcome, window) = sample_during(args.duration, args.frequency, || crate::execute(job))?;
    outcome.context("the profiled command failed; no profile was written")?;
    let stacks = fold(window.report)?;
    let profile = write_profile(&args.output, &stacks, &shown, &window.timing)?;
    print_summary(&args, &profile, &window.timing);
    Ok(())
}

/// Parses the command line after `--` as the program's own arguments; refuses commands that
/// run no job.
fn parse_job(command: &[OsString]) -> Result<Command, clap::Error> {
    let mut cli = Cli::command().bin_name("corestream profile --duration D --output DIR --");
    let argv = std::iter::once(OsString::from("corestream")).chain(command.iter().cloned());
    let matches = cli.try_get_matches_from_mut(argv)?;
    let parsed = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cli))?;
    match parsed.command {
        Command::Profile(_) => Err(cli.error(
            ErrorKind::InvalidSubcommand,
            "`profile` cannot profile itself: after `--` give a `run`, `bench` or `demo` command line",
        )),
        Command::Plan { .. } => Err(cli.error(
            ErrorKind::InvalidSubcommand,
            "`plan` runs no job: after `--` give a `run`, `bench` or `demo` command line",
        )),
        job if crate::limits::common_of(&job).is_some_and(|c| c.processes > 1) => Err(cli.error(
            ErrorKind::ArgumentConflict,
            "--processes runs the job in TaskManager processes, whose threads this profiler cannot sample, so the \
             job must run in this program's own process (not one run by `corestream profile`)",
        )),
        job => {
            crate::limits::check(&job)?;
            Ok(job)
        }
    }
}

/// Creates `dir` if needed and checks that files can be created in it, and that no report of
/// the profiled `job` is one of the combined profile's files, before the job runs.
fn prepare_output(dir: &Path, job: &Command) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create the output directory '{}': {e}", dir.display()))?;
    let (svg, folded) = (dir.join(format!("{COMBINED}.svg")), dir.join(format!("{COMBINED}.folded")));
    let mut outputs = vec![("--output", svg.as_path()), ("--output", folded.as_path())];
    if let Command::Bench(bench) = job {
        outputs.extend(crate::bench::outputs_of(bench));
    }
    crate::outputs::validate(&outputs, &[])
}

/// When sampling ran, relative to the job.
struct Timing {
    frequency_hz: u32,
    sampled: Duration,
    job: Duration,
    /// The job ended before `--duration`: the profile covers all of it.
    whole_job: bool,
}

struct Window {
    report: UnresolvedReport,
    timing: Timing,
}

/// Runs `job` on this thread while the process is sampled for at most `duration`.
fn sample_during<T>(duration: Duration, frequency_hz: u32, job: impl FnOnce() -> T) -> anyhow::Result<(T, Window)> {
    let guard = ProfilerGuardBuilder::default()
        .frequency(frequency_hz as i32)
        .blocklist(&BLOCKLIST)
        .build()
        .context("cannot start the sampling profiler (SIGPROF from setitimer)")?;
    let (job_done, job_done_rx) = mpsc::channel::<()>();
    let window = thread::Builder::new()
        .name("cs-profile".into())
        .spawn(move || {
            let started = Instant::now();
            let whole_job = !matches!(job_done_rx.recv_timeout(duration), Err(RecvTimeoutError::Timeout));
            let report = guard.report().build_unresolved();
            let sampled = started.elapsed();
            drop(guard);
            (report, sampled, whole_job)
        })
        .context("cannot start the thread that ends the sampling")?;
    let started = Instant::now();
    let outcome = job();
    let job_time = started.elapsed();
    drop(job_done);
    let (report, sampled, whole_job) = window.join().expect("the sampling thread panicked");
    let report = report.context("cannot read the samples")?;
    Ok((outcome, Window { report, timing: Timing { frequency_hz, sampled, job: job_time, whole_job } }))
}

/// Folded stacks (`root;…;leaf` → samples) per thread name.
type Stacks = BTreeMap<String, BTreeMap<String, u64>>;

/// Symbolizes the samples and folds them per thread name (threads of equal name, such as the
/// slot threads of consecutive jobs, are one).
fn fold(report: UnresolvedReport) -> anyhow::Result<Stacks> {
    let mut stacks = Stacks::new();
    for (unresolved, count) in report.data {
        let frames = Frames::from(unresolved);
        let count = u64::try_from(count).unwrap_or(0);
        *stacks.entry(frames.thread_name_or_id()).or_default().entry(stack_line(&frames)).or_default() += count;
    }
    if stacks.values().flat_map(BTreeMap::values).sum::<u64>() == 0 {
        bail!(
            "no samples were taken: the run used no CPU time in the window, or SIGPROF is blocked \
             here (try a longer --duration or a larger job)"
        );
    }
    Ok(stacks)
}

/// The folded form of one stack, root first; inlined functions are frames of their own.
fn stack_line(frames: &Frames) -> String {
    let mut line = String::new();
    for symbol in frames.frames.iter().rev().flat_map(|frame| frame.iter().rev()) {
        if !line.is_empty() {
            line.push(';');
        }
        line.push_str(&symbol.name().replace(';', ":"));
    }
    if line.is_empty() {
        line.push_str("[unknown]");
    }
    line
}

/// The slot number of a slot thread's name.
fn slot_number(thread: &str) -> Option<u32> {
    thread.strip_prefix(SLOT_THREAD_PREFIX)?.parse().ok()
}

/// One written flame graph and its folded stacks.
struct Written {
    thread: String,
    samples: u64,
    svg: PathBuf,
    folded: PathBuf,
}

/// What was sampled, per thread, and the files written.
struct Profile {
    /// Slot threads in slot order, then the combined profile.
    written: Vec<Written>,
    /// Samples of the threads that are not slot threads.
    other_threads: Vec<(String, u64)>,
}

fn write_profile(dir: &Path, stacks: &Stacks, shown: &str, timing: &Timing) -> anyhow::Result<Profile> {
    let mut slots: Vec<(u32, &String)> = stacks.keys().filter_map(|t| Some((slot_number(t)?, t))).collect();
    slots.sort();
    let (mut written, mut files) = (Vec::new(), Vec::new());
    for (_, thread) in slots {
        let lines: Vec<String> = stacks[thread].iter().map(|(stack, n)| format!("{stack} {n}")).collect();
        written.push(draw_graph(dir, thread, thread, &lines, shown, timing, &mut files)?);
    }
    let combined: Vec<String> = stacks
        .iter()
        .flat_map(|(thread, folded)| folded.iter().map(move |(stack, n)| format!("{thread};{stack} {n}")))
        .collect();
    written.push(draw_graph(dir, COMBINED, "all threads", &combined, shown, timing, &mut files)?);
    crate::outputs::commit_all(files)?;
    let other_threads = stacks
        .iter()
        .filter(|(t, _)| slot_number(t).is_none())
        .map(|(t, folded)| (t.clone(), folded.values().sum()))
        .collect();
    Ok(Profile { written, other_threads })
}

/// Draws one flame graph and adds it and its folded stacks to `files`, to be written.
fn draw_graph(
    dir: &Path,
    stem: &str,
    thread: &str,
    lines: &[String],
    shown: &str,
    timing: &Timing,
    files: &mut Vec<(PathBuf, Vec<u8>)>,
) -> anyhow::Result<Written> {
    let samples = lines.iter().filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok()).sum();
    let folded = dir.join(format!("{stem}.folded"));
    let svg = dir.join(format!("{stem}.svg"));
    let mut text = lines.join("\n");
    text.push('\n');
    files.push((folded.clone(), text.into_bytes()));

    let mut options = flamegraph::Options::default();
    options.title = format!("corestream {shown}");
    options.subtitle =
        Some(format!("{thread}: {samples} samples at {} Hz over {}", timing.frequency_hz, coverage(timing)));
    options.count_name = "samples".into();
    options.colors = Palette::Multi(MultiPalette::Rust);
    let mut drawn = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut drawn)
        .with_context(|| format!("cannot draw the flame graph '{}'", svg.display()))?;
    files.push((svg.clone(), drawn));
    Ok(Written { thread: thread.to_string(), samples, svg, folded })
}

/// What part of the run the samples cover, in words.
fn coverage(timing: &Timing) -> String {
    if timing.whole_job {
        format!("the whole run ({:.2} s)", timing.job.as_secs_f64())
    } else {
        format!("the first {:.2} s of a {:.2} s run", timing.sampled.as_secs_f64(), timing.job.as_secs_f64())
    }
}

fn print_summary(args: &ProfileArgs, profile: &Profile, timing: &Timing) {
    let mut out = String::new();
    let _ = writeln!(out, "profile: sampled at up to {} Hz over {}", timing.frequency_hz, coverage(timing));
    if timing.whole_job {
        let _ = writeln!(
            out,
            "profile: the run ended before --duration {:?}, so the profile covers all of it",
            args.duration
        );
    }
    if profile.written.len() == 1 {
        let _ = writeln!(out, "profile: no slot thread was sampled (the job used no CPU time in its slots)");
    }
    for w in &profile.written {
        let _ =
            writeln!(out, "  {:<12} {:>8} samples  {}  {}", w.thread, w.samples, w.svg.display(), w.folded.display());
    }
    for (thread, samples) in &profile.other_threads {
        let _ = writeln!(out, "  {thread:<12} {samples:>8} samples  (in the combined graph)");
    }
    print!("{out}");
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use pprof::Symbol;

    use super::*;

    fn symbol(name: &str) -> Symbol {
        Symbol { name: Some(name.as_bytes().to_vec()), addr: None, lineno: None, filename: None }
    }

    #[test]
    fn stacks_fold_root_first_with_inlined_frames() {
        let frames = Frames {
            // Leaf first; within a frame the inlined callee comes before its caller.
            frames: vec![
                vec![symbol("inner_inlined"), symbol("leaf")],
                vec![symbol("<[u8; 4] as core::fmt::Debug>::fmt")],
                vec![symbol("main")],
            ],
            thread_name: "cs-slot-0".into(),
            thread_id: 1,
            sample_timestamp: SystemTime::now(),
        };
        assert_eq!(stack_line(&frames), "main;<[u8: 4] as core::fmt::Debug>::fmt;leaf;inner_inlined");
    }

    #[test]
    fn slot_threads_are_recognized_by_name() {
        assert_eq!(slot_number("cs-slot-0"), Some(0));
        assert_eq!(slot_number("cs-slot-12"), Some(12));
        assert_eq!(slot_number("cs-slot-"), None);
        assert_eq!(slot_number("corestream"), None);
    }

    #[test]
    fn job_command_lines_are_parsed_like_the_program_arguments() {
        let args = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        assert!(matches!(parse_job(&args("bench nexmark --query q1 --events 1M -p 2")), Ok(Command::Bench(_))));
        assert!(matches!(parse_job(&args("run sum-by-key --records 1k --keys 10")), Ok(Command::Run(_))));
        let nested = parse_job(&args("profile --duration 1s --output x -- bench passthrough --events 1")).unwrap_err();
        assert!(nested.to_string().contains("cannot profile itself"), "{nested}");
        assert!(parse_job(&args("plan wordcount")).unwrap_err().to_string().contains("runs no job"));
        assert!(parse_job(&args("frobnicate")).is_err());
    }

    #[test]
    fn durations_must_be_positive() {
        assert_eq!(parse_window("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_window("0").unwrap_err().contains("above 0"));
        assert!(parse_window("two").is_err());
    }
}
