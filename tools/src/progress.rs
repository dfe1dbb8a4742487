//! Progress while a job runs: a bar (or spinner) fed by the job's live counters, drawn only on
//! a terminal.

use std::time::Duration;

use corestream::{JobError, JobHandle, JobResult};
use indicatif::{ProgressBar, ProgressStyle};

/// Joins `handle`, showing how many records its sources have produced so far.
pub fn join_with_progress(handle: JobHandle, label: &str, total: Option<u64>) -> Result<JobResult, JobError> {
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
    while !handle.is_finished() {
        let produced: u64 =
            handle.snapshot().operators.iter().filter(|o| o.name.starts_with("Source")).map(|o| o.records_out).sum();
        bar.set_position(produced);
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    handle.join()
}
