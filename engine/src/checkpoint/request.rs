//! A job's checkpointing as a submission asks for it (`submit`'s and `run`'s flags, the REST
//! request's `checkpoints` and `restore` fields) and how it is resolved against the cluster's
//! defaults (`execution.checkpointing.*`) into the settings the job master runs with. The
//! resolution is a pure function: every rule (an interval needs a directory, a restore names
//! one source, bounds) is checked here and named in its error.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::CheckpointMode;
use crate::conf::{CheckpointSettings, RestartStrategyType};

/// Per-job overrides of the checkpoint settings; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// Time between periodic checkpoints, in milliseconds (at least 10).
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// The job's checkpoint directory (shared by every TaskManager).
    #[serde(default)]
    pub dir: Option<String>,
    /// `exactly-once` or `at-least-once`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<CheckpointMode>,
    #[serde(default)]
    pub unaligned: Option<bool>,
    /// With `unaligned`: start aligned and switch after this many milliseconds (0: unaligned
    /// from the start).
    #[serde(default)]
    pub aligned_timeout_ms: Option<u64>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub min_pause_ms: Option<u64>,
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    #[serde(default)]
    pub tolerable_failures: Option<u32>,
    #[serde(default)]
    pub retained: Option<u32>,
}

/// Where a job starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreRequest {
    /// The newest complete, valid checkpoint in this checkpoint directory (`--resume DIR`);
    /// the job keeps checkpointing there.
    Resume(String),
    /// This checkpoint (`--from-checkpoint DIR/chk-N`), with no fallback.
    FromCheckpoint(String),
    /// A savepoint's directory (`--from-savepoint PATH`; a retained checkpoint's `chk-N` is
    /// accepted too), with no fallback.
    FromSavepoint(String),
}

/// A job's checkpointing as the job master runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCheckpointing {
    /// `None`: the job takes no checkpoints (it may still start from one).
    pub settings: Option<CheckpointSettings>,
    /// The directory checkpoints are written to (and `Resume` reads).
    pub dir: Option<PathBuf>,
    pub restore: Option<RestoreRequest>,
    /// Drop state of operators the job no longer has instead of refusing the restore.
    pub allow_non_restored: bool,
}

impl JobCheckpointing {
    /// Whether the job takes checkpoints (its default restart strategy depends on it).
    pub fn enabled(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.interval.is_some())
    }
}

/// Shortest checkpoint interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Resolves a request against the cluster's defaults.
pub fn resolve(
    defaults: &CheckpointSettings,
    request: Option<&CheckpointRequest>,
    restore: Option<&RestoreRequest>,
) -> Result<JobCheckpointing, String> {
    let empty = CheckpointRequest::default();
    let r = request.unwrap_or(&empty);
    let mut s = defaults.clone();
    if let Some(ms) = r.interval_ms {
        if Duration::from_millis(ms) < MIN_INTERVAL {
            return Err(format!("checkpoint interval {ms} ms is below the minimum of {} ms", MIN_INTERVAL.as_millis()));
        }
        s.interval = Some(Duration::from_millis(ms));
    }
    if let Some(dir) = &r.dir {
        if dir.trim().is_empty() {
            return Err("the checkpoint directory is empty".into());
        }
        s.dir = Some(PathBuf::from(dir));
    }
    if let Some(mode) = r.mode {
        s.mode = mode;
    }
    if let Some(u) = r.unaligned {
        s.unaligned = u;
    }
    if let Some(ms) = r.aligned_timeout_ms {
        s.aligned_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = r.timeout_ms {
        if ms < 10 {
            return Err(format!("checkpoint timeout {ms} ms is below the minimum of 10 ms"));
        }
        s.timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = r.min_pause_ms {
        s.min_pause = Duration::from_millis(ms);
    }
    if let Some(n) = r.max_concurrent {
        if !(1..=64).contains(&n) {
            return Err(format!("max concurrent checkpoints {n} is outside 1 to 64"));
        }
        s.max_concurrent = n;
    }
    if let Some(n) = r.tolerable_failures {
        s.tolerable_failures = n;
    }
    if let Some(n) = r.retained {
        if !(1..=1000).contains(&n) {
            return Err(format!("retained checkpoints {n} is outside 1 to 1000"));
        }
        s.retained = n;
    }
    if s.unaligned && s.mode == CheckpointMode::AtLeastOnce {
        return Err("unaligned checkpoints need exactly-once mode (at-least-once never aligns)".into());
    }
    let restore = restore.cloned();
    if let Some(RestoreRequest::Resume(d) | RestoreRequest::FromCheckpoint(d) | RestoreRequest::FromSavepoint(d)) =
        &restore
    {
        if d.trim().is_empty() {
            return Err("the checkpoint to restore from is named by an empty path".into());
        }
    }
    // `--resume DIR` continues in DIR unless another directory is named.
    let dir = match (&s.dir, &restore) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(RestoreRequest::Resume(d))) => Some(PathBuf::from(d)),
        (None, _) => None,
    };
    if s.interval.is_some() && dir.is_none() {
        return Err("checkpoints need a directory: set --checkpoint-dir (or execution.checkpointing.dir)".into());
    }
    let settings = s.interval.is_some().then(|| CheckpointSettings { dir: dir.clone(), ..s });
    Ok(JobCheckpointing { settings, dir, restore, allow_non_restored: false })
}

/// Reads a restart strategy's name as `--restart-strategy` gives it.
pub fn parse_restart_strategy(name: &str) -> Result<RestartStrategyType, String> {
    RestartStrategyType::parse(name).ok_or_else(|| {
        format!("unknown restart strategy '{name}': use none, fixed-delay, exponential-delay or failure-rate")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(&mut CheckpointRequest)) -> CheckpointRequest {
        let mut r = CheckpointRequest::default();
        f(&mut r);
        r
    }

    #[test]
    fn no_request_and_no_defaults_means_no_checkpoints() {
        let j = resolve(&CheckpointSettings::default(), None, None).unwrap();
        assert_eq!(j, JobCheckpointing { settings: None, dir: None, restore: None, allow_non_restored: false });
        assert!(!j.enabled());
    }

    #[test]
    fn a_request_overrides_the_defaults_field_by_field() {
        let defaults = CheckpointSettings { retained: 3, ..Default::default() };
        let r = req(|r| {
            r.interval_ms = Some(200);
            r.dir = Some("/tmp/ck".into());
            r.unaligned = Some(true);
        });
        let j = resolve(&defaults, Some(&r), None).unwrap();
        let s = j.settings.unwrap();
        assert_eq!(s.interval, Some(Duration::from_millis(200)));
        assert!(s.unaligned);
        assert_eq!(s.retained, 3, "kept from the defaults");
        assert_eq!(j.dir, Some(PathBuf::from("/tmp/ck")));
    }

    #[test]
    fn an_interval_needs_a_directory_unless_resuming_names_one() {
        let r = req(|r| r.interval_ms = Some(100));
        let e = resolve(&CheckpointSettings::default(), Some(&r), None).unwrap_err();
        assert!(e.contains("--checkpoint-dir"), "{e}");
        let resume = RestoreRequest::Resume("/tmp/ck".into());
        let j = resolve(&CheckpointSettings::default(), Some(&r), Some(&resume)).unwrap();
        assert_eq!(j.dir, Some(PathBuf::from("/tmp/ck")));
        assert!(j.enabled());
    }

    #[test]
    fn bad_values_are_named() {
        let d = CheckpointSettings::default();
        let cases = [
            (req(|r| r.interval_ms = Some(5)), "below the minimum"),
            (req(|r| r.dir = Some(" ".into())), "directory is empty"),
            (req(|r| r.max_concurrent = Some(0)), "max concurrent"),
            (req(|r| r.retained = Some(0)), "retained"),
            (
                req(|r| {
                    r.mode = Some(CheckpointMode::AtLeastOnce);
                    r.unaligned = Some(true)
                }),
                "need exactly-once",
            ),
        ];
        for (r, expected) in cases {
            let e = resolve(&d, Some(&r), None).unwrap_err();
            assert!(e.contains(expected), "{e} should mention {expected}");
        }
        let e = resolve(&d, None, Some(&RestoreRequest::FromCheckpoint(String::new()))).unwrap_err();
        assert!(e.contains("empty path"), "{e}");
        assert!(parse_restart_strategy("sometimes").unwrap_err().contains("fixed-delay"));
        assert_eq!(parse_restart_strategy("fixed-delay"), Ok(RestartStrategyType::FixedDelay));
    }

    #[test]
    fn requests_are_json_with_unknown_fields_refused() {
        let r: CheckpointRequest = serde_json::from_str(r#"{"interval_ms": 500, "mode": "at-least-once"}"#).unwrap();
        assert_eq!(r.mode, Some(CheckpointMode::AtLeastOnce));
        assert!(serde_json::from_str::<CheckpointRequest>(r#"{"interval": 5}"#).is_err());
        let restore: RestoreRequest = serde_json::from_str(r#"{"resume": "/tmp/ck"}"#).unwrap();
        assert_eq!(restore, RestoreRequest::Resume("/tmp/ck".into()));
    }
}
