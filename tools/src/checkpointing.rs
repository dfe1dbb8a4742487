//! The checkpoint and recovery options of `run` and `submit` (`--checkpoint-interval`,
//! `--checkpoint-dir`, `--checkpoint-mode`, `--unaligned`, `--aligned-timeout`,
//! `--restart-strategy`, `--resume`, `--from-checkpoint`, `--from-savepoint`), turned into the submission's
//! [`CheckpointRequest`], [`RestoreRequest`] and restart strategy. Every value is checked while
//! the command line is parsed, with the rules the JobManager applies (an interval needs a
//! directory, unaligned needs exactly-once), so a mistake is a usage error naming the option
//! before anything starts.
//!
//! Paths: `run` makes them absolute from the current directory (its JobManager and
//! TaskManagers run here); `submit` refuses relative ones, because the JobManager and the
//! TaskManagers, not this client, open them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use corestream::checkpoint::request::{parse_restart_strategy, resolve, CheckpointRequest, RestoreRequest};
use corestream::checkpoint::CheckpointMode;
use corestream::conf::CheckpointSettings;

use crate::args::{parse_duration, parse_positive_duration};

/// `--checkpoint-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Barriers are aligned (or unaligned with `--unaligned`): every record counts once in
    /// state and in the exactly-once sinks' output after a recovery.
    ExactlyOnce,
    /// Barriers are counted, never aligned: a recovery may replay records into state twice.
    AtLeastOnce,
}

#[derive(Args, Debug, Clone, Default)]
pub struct CheckpointArgs {
    /// Take a checkpoint this often, e.g. 500ms or 10s (at least 10ms); needs --checkpoint-dir
    /// (or --resume). A job with checkpoints restarts from its latest one after a failure.
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    pub checkpoint_interval: Option<Duration>,
    /// Where checkpoints go: `DIR/chk-N/`, visible once complete (`corestream checkpoints list
    /// DIR`). Default: the --resume directory.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// exactly-once (default) or at-least-once.
    #[arg(long, value_enum, value_name = "MODE")]
    pub checkpoint_mode: Option<ModeArg>,
    /// Unaligned checkpoints: barriers overtake in-flight data, which is stored with the
    /// checkpoint, so a checkpoint completes quickly under backpressure (exactly-once only).
    #[arg(long)]
    pub unaligned: bool,
    /// With --unaligned: start each checkpoint aligned and switch to unaligned after this long,
    /// e.g. 100ms (default 0: unaligned from the start).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "unaligned")]
    pub aligned_timeout: Option<Duration>,
    /// none, fixed-delay, exponential-delay or failure-rate (default: exponential-delay with
    /// checkpoints, none without), with the cluster's parameters for it.
    #[arg(long, value_parser = parse_strategy, value_name = "STRATEGY")]
    pub restart_strategy: Option<String>,
    /// Start from the newest complete checkpoint in DIR (falling back past damaged ones) and
    /// keep checkpointing there; a DIR without a complete checkpoint starts from the beginning.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["from_checkpoint", "from_savepoint"])]
    pub resume: Option<PathBuf>,
    /// Start from this checkpoint, `DIR/chk-N`, with no fallback.
    #[arg(long, value_name = "PATH", conflicts_with = "from_savepoint")]
    pub from_checkpoint: Option<PathBuf>,
    /// Start from this savepoint (the directory `corestream savepoint` printed), with no
    /// fallback; its state is in the canonical format, so either state backend restores it.
    #[arg(long, value_name = "PATH")]
    pub from_savepoint: Option<PathBuf>,
    /// With --from-savepoint or --from-checkpoint: drop the state of operators the job no
    /// longer has (matched by operator id, `.uid(...)`) instead of refusing to start.
    #[arg(long)]
    pub allow_non_restored_state: bool,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s)?;
    if d < corestream::checkpoint::request::MIN_INTERVAL {
        return Err(format!("{s} is below the shortest checkpoint interval, 10ms"));
    }
    Ok(d)
}

fn parse_strategy(s: &str) -> Result<String, String> {
    parse_restart_strategy(s).map(|_| s.to_string())
}

/// Where relative paths are taken from.
#[derive(Debug, Clone, Copy)]
pub enum Paths<'a> {
    /// Made absolute from this directory (`run`).
    From(&'a Path),
    /// Refused (`submit`): the cluster's processes open them.
    AbsoluteOnly,
}

/// What the options ask of a submission.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    pub checkpoints: Option<CheckpointRequest>,
    pub restore: Option<RestoreRequest>,
    pub restart_strategy: Option<String>,
    pub allow_non_restored_state: bool,
}

impl Recovery {
    /// Whether the job takes checkpoints.
    pub fn checkpoints(&self) -> bool {
        self.checkpoints.as_ref().is_some_and(|c| c.interval_ms.is_some())
    }
}

impl CheckpointArgs {
    /// Whether any option of this group was given (the job must then run by name, on a
    /// JobManager that can restart it).
    pub fn any(&self) -> bool {
        self.checkpoint_interval.is_some()
            || self.checkpoint_dir.is_some()
            || self.checkpoint_mode.is_some()
            || self.unaligned
            || self.aligned_timeout.is_some()
            || self.restart_strategy.is_some()
            || self.resume.is_some()
            || self.from_checkpoint.is_some()
            || self.from_savepoint.is_some()
            || self.allow_non_restored_state
    }

    /// The submission's fields, checked as the JobManager will check them (against its
    /// defaults, none here: a cluster's configured defaults are applied by the cluster).
    pub fn recovery(&self, paths: Paths<'_>) -> Result<Recovery, String> {
        let path = |flag: &str, p: &Path| -> Result<String, String> {
            if p.as_os_str().is_empty() {
                return Err(format!("{flag}: the path is empty"));
            }
            let p = match paths {
                _ if p.is_absolute() => p.to_path_buf(),
                Paths::From(base) => base.join(p),
                Paths::AbsoluteOnly => {
                    return Err(format!(
                        "{flag} {}: give an absolute path; the JobManager and its TaskManagers open it, not this \
                         client",
                        p.display()
                    ))
                }
            };
            p.into_os_string().into_string().map_err(|p| format!("{flag}: the path {p:?} is not valid UTF-8"))
        };
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let given = self.checkpoint_interval.is_some()
            || self.checkpoint_dir.is_some()
            || self.checkpoint_mode.is_some()
            || self.unaligned;
        let checkpoints = given
            .then(|| -> Result<CheckpointRequest, String> {
                Ok(CheckpointRequest {
                    interval_ms: self.checkpoint_interval.map(millis),
                    dir: self.checkpoint_dir.as_deref().map(|d| path("--checkpoint-dir", d)).transpose()?,
                    mode: self.checkpoint_mode.map(|m| match m {
                        ModeArg::ExactlyOnce => CheckpointMode::ExactlyOnce,
                        ModeArg::AtLeastOnce => CheckpointMode::AtLeastOnce,
                    }),
                    unaligned: self.unaligned.then_some(true),
                    aligned_timeout_ms: self.aligned_timeout.map(millis),
                    ..Default::default()
                })
            })
            .transpose()?;
        let restore = match (&self.resume, &self.from_checkpoint, &self.from_savepoint) {
            (Some(dir), _, _) => Some(RestoreRequest::Resume(path("--resume", dir)?)),
            (None, Some(chk), _) => Some(RestoreRequest::FromCheckpoint(path("--from-checkpoint", chk)?)),
            (None, None, Some(sp)) => Some(RestoreRequest::FromSavepoint(path("--from-savepoint", sp)?)),
            (None, None, None) => None,
        };
        if self.allow_non_restored_state && restore.is_none() {
            return Err("--allow-non-restored-state needs --from-savepoint, --from-checkpoint or --resume".into());
        }
        let recovery = Recovery {
            checkpoints,
            restore,
            restart_strategy: self.restart_strategy.clone(),
            allow_non_restored_state: self.allow_non_restored_state,
        };
        let resolved =
            resolve(&CheckpointSettings::default(), recovery.checkpoints.as_ref(), recovery.restore.as_ref())
                .map_err(|e| e.replace("execution.checkpointing.dir", "--resume"))?;
        if resolved.settings.is_none() && (self.checkpoint_dir.is_some() || self.checkpoint_mode.is_some()) {
            return Err("--checkpoint-dir and --checkpoint-mode need --checkpoint-interval".into());
        }
        if resolved.settings.is_none() && self.unaligned {
            return Err("--unaligned needs --checkpoint-interval".into());
        }
        Ok(recovery)
    }

    /// [`Self::recovery`], or exit with status 2 as clap does for any other invalid option.
    pub fn require_recovery(&self, paths: Paths<'_>) -> Recovery {
        self.recovery(paths).unwrap_or_else(|message| {
            use clap::CommandFactory;
            crate::Cli::command().error(clap::error::ErrorKind::ArgumentConflict, message).exit()
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    #[command(no_binary_name = true)]
    struct Cli {
        #[command(flatten)]
        c: CheckpointArgs,
    }

    fn parse(line: &str) -> Result<CheckpointArgs, String> {
        Cli::try_parse_from(line.split_whitespace()).map(|c| c.c).map_err(|e| e.to_string())
    }

    fn recovery(line: &str, paths: Paths<'_>) -> Result<Recovery, String> {
        parse(line)?.recovery(paths)
    }

    #[test]
    fn the_options_become_the_submission_fields() {
        let here = Path::new("/work/here");
        let r = recovery(
            "--checkpoint-interval 200ms --checkpoint-dir ck --unaligned --aligned-timeout 50ms \
             --restart-strategy fixed-delay",
            Paths::From(here),
        )
        .unwrap();
        let c = r.checkpoints.clone().unwrap();
        assert_eq!(c.interval_ms, Some(200));
        assert_eq!(c.dir.as_deref(), Some("/work/here/ck"));
        assert_eq!((c.unaligned, c.aligned_timeout_ms, c.mode), (Some(true), Some(50), None));
        assert_eq!(r.restart_strategy.as_deref(), Some("fixed-delay"));
        assert!(r.checkpoints() && r.restore.is_none());

        let r = recovery("--checkpoint-interval 1s --resume /ck", Paths::AbsoluteOnly).unwrap();
        assert_eq!(r.restore, Some(RestoreRequest::Resume("/ck".into())));
        assert_eq!(r.checkpoints.unwrap().dir, None, "the job goes on checkpointing in the resumed directory");

        let r = recovery("--from-checkpoint ck/chk-3", Paths::From(here)).unwrap();
        assert_eq!(r.restore, Some(RestoreRequest::FromCheckpoint("/work/here/ck/chk-3".into())));
        assert!(!r.checkpoints(), "restoring alone takes no checkpoints");
        let r = recovery(
            "--from-savepoint sp/savepoint-ab-cd --checkpoint-interval 1s --checkpoint-dir /ck",
            Paths::From(here),
        )
        .unwrap();
        assert_eq!(r.restore, Some(RestoreRequest::FromSavepoint("/work/here/sp/savepoint-ab-cd".into())));
        assert_eq!(r.checkpoints.unwrap().dir.as_deref(), Some("/ck"));
        assert_eq!(recovery("", Paths::AbsoluteOnly).unwrap(), Recovery::default());
        assert!(!parse("").unwrap().any());
        assert!(parse("--resume /x").unwrap().any());
    }

    #[test]
    fn mistakes_are_named() {
        let here = Paths::From(Path::new("/w"));
        for (line, message) in [
            ("--checkpoint-interval 5ms --checkpoint-dir /c", "below the shortest checkpoint interval"),
            ("--checkpoint-interval 0 --checkpoint-dir /c", "--checkpoint-interval"),
            ("--checkpoint-interval 1s", "checkpoints need a directory"),
            ("--checkpoint-dir /c", "need --checkpoint-interval"),
            (
                "--checkpoint-interval 1s --checkpoint-dir /c --checkpoint-mode at-least-once --unaligned",
                "exactly-once",
            ),
            ("--checkpoint-interval 1s --checkpoint-dir /c --checkpoint-mode twice", "twice"),
            ("--aligned-timeout 1s", "--unaligned"),
            ("--unaligned", "--unaligned needs --checkpoint-interval"),
            ("--restart-strategy sometimes", "unknown restart strategy 'sometimes'"),
            ("--resume /a --from-checkpoint /b", "cannot be used with"),
            ("--resume /a --from-savepoint /b", "cannot be used with"),
            ("--from-checkpoint /a/chk-1 --from-savepoint /b", "cannot be used with"),
            ("--allow-non-restored-state", "needs --from-savepoint"),
        ] {
            let e = recovery(line, here).unwrap_err();
            assert!(e.contains(message), "{line}: {message:?} not in {e:?}");
        }
        let e = recovery("--checkpoint-interval 1s --checkpoint-dir ck", Paths::AbsoluteOnly).unwrap_err();
        assert!(e.contains("--checkpoint-dir ck: give an absolute path"), "{e}");
        let e = recovery("--resume rel", Paths::AbsoluteOnly).unwrap_err();
        assert!(e.contains("--resume rel: give an absolute path"), "{e}");
    }
}
