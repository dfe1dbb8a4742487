//! Progress while a job runs: a bar (or spinner) fed by the job's live counters, drawn only on
//! a terminal. While a job is joined here, SIGINT and SIGTERM cancel it instead of killing
//! the process, so the output it staged is discarded and the message says so; the process then
//! ends by the same signal. A second signal, or one outside a job, has its default effect.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use corestream::jobmanager::api::ClusterApi;
use corestream::{JobError, JobHandle, JobResult};
use indicatif::{ProgressBar, ProgressStyle};
use signal_hook::consts::{SIGINT, SIGTERM};

/// The signal handlers' shared flags: whether a signal should have its default effect now
/// (outside a job, or after the first one), and the last signal that arrived while it should
/// not.
struct Interrupts {
    default_now: Arc<AtomicBool>,
    received: Arc<AtomicUsize>,
}

fn interrupts() -> Option<&'static Interrupts> {
    static INTERRUPTS: OnceLock<Option<Interrupts>> = OnceLock::new();
    INTERRUPTS
        .get_or_init(|| {
            let flags =
                Interrupts { default_now: Arc::new(AtomicBool::new(true)), received: Arc::new(AtomicUsize::new(0)) };
            for signal in [SIGINT, SIGTERM] {
                // The default action comes first, so it still kills while `default_now` is set.
                signal_hook::flag::register_conditional_default(signal, flags.default_now.clone()).ok()?;
                signal_hook::flag::register_usize(signal, flags.received.clone(), signal as usize).ok()?;
            }
            Some(flags)
        })
        .as_ref()
}

/// How long a cancelled job may take to stop after SIGINT or SIGTERM before the process ends
/// without waiting for it.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Joins `handle`, showing how many records its sources have produced so far. SIGINT or
/// SIGTERM cancels the job; once it has stopped, the process ends by that signal.
pub fn join_with_progress(handle: JobHandle, label: &str, total: Option<u64>) -> Result<JobResult, JobError> {
    let interrupts = interrupts();
    if let Some(i) = interrupts {
        i.received.store(0, Ordering::SeqCst);
        i.default_now.store(false, Ordering::SeqCst);
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix} {spinner} {human_pos} records").expect("valid template"),
        ),
    };
    bar.set_prefix(label.to_string());
    let mut interrupted = None;
    while !handle.is_finished() {
        if let Some(signal) = interrupts.map(|i| i.received.load(Ordering::SeqCst)).filter(|s| *s != 0) {
            interrupts.inspect(|i| i.default_now.store(true, Ordering::SeqCst));
            handle.cancel();
            interrupted = Some(signal as i32);
            break;
        }
        let produced: u64 =
            handle.snapshot().operators.iter().filter(|o| o.name.starts_with("Source")).map(|o| o.records_out).sum();
        bar.set_position(produced);
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    if let Some(signal) = interrupted {
        let deadline = std::time::Instant::now() + CANCEL_GRACE;
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !handle.is_finished() {
            // A task that does not stop (a user function stuck in a call) must not keep the
            // process alive: staged output is unnamed and vanishes with it.
            eprintln!("error: {label} did not stop within {CANCEL_GRACE:?} of the signal; ending anyway");
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    }
    let joined = handle.join_staged();
    // From here a signal has its default effect; one that came since the last look still
    // discards the output.
    if let Some(i) = interrupts {
        i.default_now.store(true, Ordering::SeqCst);
    }
    let late = interrupts.map(|i| i.received.load(Ordering::SeqCst) as i32).filter(|s| *s != 0);
    if let Some(signal) = interrupted.or(late) {
        drop(joined);
        let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
        eprintln!("error: {label} was interrupted by {name}: the job was cancelled and its output discarded");
        // Ends the process as the signal would have, so the caller sees how it ended.
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        std::process::exit(128 + signal);
    }
    let (result, staged) = joined?;
    staged.commit()?;
    Ok(result)
}

/// Runs a job on `cluster` (see [`corestream::processes`]) with the same treatment of SIGINT
/// and SIGTERM as [`join_with_progress`]: the first signal cancels the job through the
/// JobManager, which has every TaskManager discard what it staged; the process then ends by
/// that signal.
pub fn run_on_cluster(
    cluster: &mut corestream::processes::ProcessCluster,
    request: corestream::jobmanager::api::SubmitRequest,
    label: &str,
) -> anyhow::Result<(
    corestream::jobmanager::api::JobExecutionResult,
    Vec<(corestream::processes::ChildInfo, std::process::ExitStatus)>,
)> {
    cancel_on_signal(label, |progress| Ok(cluster.run(request, progress)?))
}

/// Runs a job by name on an embedded cluster's JobManager (`api`), as [`run_on_cluster`] does:
/// submits it, waits for it to end, and cancels it at the first SIGINT or SIGTERM.
pub fn run_by_name(
    api: &dyn ClusterApi,
    request: corestream::jobmanager::api::SubmitRequest,
    label: &str,
) -> anyhow::Result<(corestream::rpc::ids::JobId, corestream::jobmanager::api::JobExecutionResult)> {
    cancel_on_signal(label, |progress| {
        let id = api.submit(request).map_err(|e| anyhow::anyhow!("{}", e.message))?.jobid;
        let text = id.to_string();
        let mut last = std::time::Instant::now();
        loop {
            let result = api.execution_result(&text).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            if result.state.is_terminal() {
                return Ok((id, result));
            }
            if last.elapsed() >= Duration::from_millis(100) {
                progress(api, &text);
                last = std::time::Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// Runs `f`, which polls a job and calls the progress callback it is given now and then; the
/// callback cancels the job through the API at the first SIGINT or SIGTERM, after which the
/// process ends by that signal once `f` returns.
fn cancel_on_signal<T>(
    label: &str,
    f: impl FnOnce(&mut dyn FnMut(&dyn ClusterApi, &str)) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let interrupts = interrupts();
    if let Some(i) = interrupts {
        i.received.store(0, Ordering::SeqCst);
        i.default_now.store(false, Ordering::SeqCst);
    }
    let mut interrupted = None;
    let mut progress = |api: &dyn ClusterApi, id: &str| {
        if interrupted.is_none() {
            if let Some(signal) = interrupts.map(|i| i.received.load(Ordering::SeqCst)).filter(|s| *s != 0) {
                interrupts.inspect(|i| i.default_now.store(true, Ordering::SeqCst));
                let _ = api.cancel(id);
                interrupted = Some(signal as i32);
            }
        }
    };
    let outcome = f(&mut progress);
    if let Some(i) = interrupts {
        i.default_now.store(true, Ordering::SeqCst);
    }
    let late = interrupts.map(|i| i.received.load(Ordering::SeqCst) as i32).filter(|s| *s != 0);
    if let Some(signal) = interrupted.or(late) {
        let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
        eprintln!("error: {label} was interrupted by {name}: the job was cancelled and its output discarded");
        drop(outcome);
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        std::process::exit(128 + signal);
    }
    outcome
}
