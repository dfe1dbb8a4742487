//! Restart strategies: whether a failed job is restarted, and after how long. Pure decisions
//! with Flink's semantics (`FixedDelayRestartBackoffTimeStrategy`,
//! `ExponentialDelayRestartBackoffTimeStrategy`, `FailureRateRestartBackoffTimeStrategy` and
//! no restart): the job master owns one [`RestartTracker`] per job and tells it of each
//! failure with the time and a jitter sample; no clock or random number is read here.
//!
//! The exponential-delay strategy needs no notice that the job is running again: as in Flink,
//! its reset is measured from the time the last restart was due.
//!
//! [`RestartStrategy::factory`] gives the job master its [`Restarts`] per job: a tracker whose
//! jitter is drawn from the kernel's random number generator, the one impure step, kept out of
//! the tracker itself.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{RestartChoice, RestartFactory, Restarts};

use crate::conf::value::format_duration;
use crate::conf::{RestartSettings, RestartStrategyType};

/// A restart strategy with its parameters (`restart-strategy.*`).
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// A failed job stays failed.
    None,
    /// At most `attempts` restarts over the job's life, each `delay` after its failure.
    FixedDelay { attempts: u32, delay: Duration },
    /// Waits growing by `multiplier` from `initial_backoff` to `max_backoff`, ± `jitter_factor`
    /// of the wait; a failure `reset_threshold` after the last restart was due starts over at
    /// `initial_backoff`; at most `attempts_before_reset` restarts between two resets.
    ExponentialDelay {
        initial_backoff: Duration,
        max_backoff: Duration,
        multiplier: f64,
        reset_threshold: Duration,
        jitter_factor: f64,
        attempts_before_reset: Option<u32>,
    },
    /// Restarts `delay` after each failure until more than `max_failures` fall within
    /// `interval`.
    FailureRate { max_failures: u32, interval: Duration, delay: Duration },
}

impl RestartStrategy {
    /// The strategy `restart-strategy.type` selects, with its keys; unset, `exponential-delay`
    /// for a job with checkpoints and `none` for one without (Flink's defaults).
    pub fn from_settings(s: &RestartSettings, checkpointing: bool) -> Self {
        let kind = s.strategy.unwrap_or(if checkpointing {
            RestartStrategyType::ExponentialDelay
        } else {
            RestartStrategyType::None
        });
        Self::of_kind(kind, s)
    }

    /// Strategy `kind` with the parameters of `s`.
    pub fn of_kind(kind: RestartStrategyType, s: &RestartSettings) -> Self {
        match kind {
            RestartStrategyType::None => Self::None,
            RestartStrategyType::FixedDelay => {
                Self::FixedDelay { attempts: s.fixed_delay.attempts, delay: s.fixed_delay.delay }
            }
            RestartStrategyType::ExponentialDelay => {
                let e = &s.exponential_delay;
                Self::ExponentialDelay {
                    initial_backoff: e.initial_backoff,
                    max_backoff: e.max_backoff,
                    multiplier: e.backoff_multiplier,
                    reset_threshold: e.reset_backoff_threshold,
                    jitter_factor: e.jitter_factor,
                    attempts_before_reset: e.attempts_before_reset_backoff,
                }
            }
            RestartStrategyType::FailureRate => Self::FailureRate {
                max_failures: s.failure_rate.max_failures_per_interval,
                interval: s.failure_rate.failure_rate_interval,
                delay: s.failure_rate.delay,
            },
        }
    }

    /// A tracker for one job, with no failure yet.
    pub fn tracker(&self) -> RestartTracker {
        RestartTracker::new(self.clone())
    }

    /// What the JobManager needs: a fresh tracker for every job, of the strategy the job asked
    /// for or the settings' default for it.
    pub fn factory(settings: &RestartSettings) -> RestartFactory {
        let settings = settings.clone();
        Arc::new(move |choice: RestartChoice| {
            let strategy = match choice.requested {
                Some(kind) => RestartStrategy::of_kind(kind, &settings),
                None => RestartStrategy::from_settings(&settings, choice.checkpointing),
            };
            Box::new(strategy.tracker()) as Box<dyn Restarts>
        })
    }
}

impl fmt::Display for RestartStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |x: &Duration| format_duration(*x);
        match self {
            Self::None => f.write_str("none"),
            Self::FixedDelay { attempts, delay } => {
                write!(f, "fixed-delay ({attempts} attempt(s), {} apart)", d(delay))
            }
            Self::ExponentialDelay { initial_backoff, max_backoff, multiplier, attempts_before_reset, .. } => {
                write!(f, "exponential-delay ({} × {multiplier} up to {}", d(initial_backoff), d(max_backoff))?;
                match attempts_before_reset {
                    Some(n) => write!(f, ", {n} attempt(s) before reset)"),
                    None => f.write_str(")"),
                }
            }
            Self::FailureRate { max_failures, interval, delay } => {
                write!(f, "failure-rate (at most {max_failures} failure(s) per {}, {} apart)", d(interval), d(delay))
            }
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the job after `delay`. `attempt` counts the restarts of this job from 1; a
    /// failure that arrives while a restart is still pending (exponential-delay) is merged
    /// into it: the same `attempt` with the time left until it.
    Restart { delay: Duration, attempt: u32 },
    /// The job fails for good; `reason` names the strategy and the limit reached.
    GiveUp { reason: String },
}

/// The restart state of one job. Each strategy reads its own part of the state.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    gave_up: Option<String>,
    /// fixed-delay: failures so far.
    failures: u32,
    /// exponential-delay: Flink's `currentRestartAttempt` (since the last reset) ...
    attempt_since_reset: u32,
    /// ... and `nextRestartTimestamp`.
    next_restart_ms: Option<u64>,
    /// failure-rate: the last `max_failures + 1` failure times at most.
    failure_times: VecDeque<u64>,
}

impl RestartTracker {
    pub fn new(strategy: RestartStrategy) -> Self {
        Self {
            strategy,
            restarts: 0,
            gave_up: None,
            failures: 0,
            attempt_since_reset: 0,
            next_restart_ms: None,
            failure_times: VecDeque::new(),
        }
    }

    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// Restarts granted so far (merged failures not counted twice).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Decides about a failure at `now_ms` (a monotonic clock in milliseconds). `retryable`
    /// is false for a failure no restart can help (an invalid job): the job fails at once.
    /// `jitter` is a sample uniform in [-1, 1], used by exponential-delay only. Once the
    /// tracker has given up it gives up again on every later failure.
    pub fn on_failure(&mut self, now_ms: u64, retryable: bool, jitter: f64) -> RestartDecision {
        if let Some(reason) = &self.gave_up {
            return RestartDecision::GiveUp { reason: reason.clone() };
        }
        let outcome = if retryable {
            self.decide(now_ms, jitter)
        } else {
            Err("the failure is not retryable (e.g. an invalid job): no restart strategy restarts it".to_string())
        };
        match outcome {
            Ok((delay, new_attempt)) => {
                if new_attempt {
                    self.restarts = self.restarts.saturating_add(1);
                }
                RestartDecision::Restart { delay, attempt: self.restarts }
            }
            Err(reason) => {
                self.gave_up = Some(reason.clone());
                RestartDecision::GiveUp { reason }
            }
        }
    }

    /// The delay of a restart and whether it is a new one, or why not.
    fn decide(&mut self, now_ms: u64, jitter: f64) -> Result<(Duration, bool), String> {
        match &self.strategy {
            RestartStrategy::None => {
                Err("no restart strategy (restart-strategy.type = none): the job fails at its first failure".into())
            }
            RestartStrategy::FixedDelay { attempts, delay } => {
                self.failures = self.failures.saturating_add(1);
                if self.failures <= *attempts {
                    Ok((*delay, true))
                } else {
                    Err(format!("fixed-delay restart strategy: {attempts} attempt(s) used up"))
                }
            }
            RestartStrategy::ExponentialDelay {
                initial_backoff,
                max_backoff,
                multiplier,
                reset_threshold,
                jitter_factor,
                attempts_before_reset,
            } => {
                if let Some(next) = self.next_restart_ms {
                    if now_ms <= next {
                        return Ok((Duration::from_millis(next - now_ms), false));
                    }
                }
                if self.next_restart_ms.is_none_or(|next| now_ms - next >= millis(*reset_threshold)) {
                    self.attempt_since_reset = 0;
                }
                let backoff_ms = exponential_backoff_ms(
                    millis(*initial_backoff),
                    millis(*max_backoff),
                    *multiplier,
                    *jitter_factor,
                    self.attempt_since_reset,
                    jitter,
                );
                self.next_restart_ms = Some(now_ms.saturating_add(backoff_ms));
                self.attempt_since_reset = self.attempt_since_reset.saturating_add(1);
                match attempts_before_reset {
                    Some(limit) if self.attempt_since_reset > *limit => Err(format!(
                        "exponential-delay restart strategy: {limit} attempt(s) used up without a run of {} \
                         (restart-strategy.exponential-delay.reset-backoff-threshold) to reset them",
                        format_duration(*reset_threshold)
                    )),
                    _ => Ok((Duration::from_millis(backoff_ms), true)),
                }
            }
            RestartStrategy::FailureRate { max_failures, interval, delay } => {
                self.failure_times.push_back(now_ms);
                if self.failure_times.len() > *max_failures as usize + 1 {
                    self.failure_times.pop_front();
                }
                let earliest = self.failure_times.front().copied().unwrap_or(now_ms);
                let full = self.failure_times.len() > *max_failures as usize;
                if full && now_ms.saturating_sub(earliest) <= millis(*interval) {
                    Err(format!(
                        "failure-rate restart strategy: more than {max_failures} failure(s) within {}",
                        format_duration(*interval)
                    ))
                } else {
                    Ok((*delay, true))
                }
            }
        }
    }
}

/// The job master's view of a tracker: the delay of a restart, or why not. The jitter sample
/// comes from the kernel's random number generator (none if it fails: jitter only spreads
/// restarts out).
impl Restarts for RestartTracker {
    fn on_failure(&mut self, now_ms: u64, retryable: bool) -> Result<Duration, String> {
        match RestartTracker::on_failure(self, now_ms, retryable, random_jitter()) {
            RestartDecision::Restart { delay, .. } => Ok(delay),
            RestartDecision::GiveUp { reason } => Err(reason),
        }
    }
}

/// A sample uniform in [-1, 1].
fn random_jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.0;
    }
    let unit = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Flink's wait before restart `attempt` (0-based since the last reset): `initial` ×
/// `multiplier`^`attempt` truncated to milliseconds, plus a jitter of `jitter` (in [-1, 1]) ×
/// ⌊backoff × `jitter_factor`⌋, kept within [`initial`, `max`].
fn exponential_backoff_ms(
    initial: u64,
    max: u64,
    multiplier: f64,
    jitter_factor: f64,
    attempt: u32,
    jitter: f64,
) -> u64 {
    let backoff = (initial as f64 * multiplier.powf(attempt as f64)) as u64;
    let offset = if jitter_factor == 0.0 { 0 } else { (backoff as f64 * jitter_factor) as u64 };
    let sample = if jitter.is_nan() { 0.0 } else { jitter.clamp(-1.0, 1.0) };
    let jittered = backoff as i128 + (sample * offset as f64).round() as i128;
    jittered.clamp(initial as i128, max.max(initial) as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn flink_default(kind: RestartStrategyType) -> RestartTracker {
        RestartStrategy::of_kind(kind, &RestartSettings::default()).tracker()
    }

    fn restart(delay_ms: u64, attempt: u32) -> RestartDecision {
        RestartDecision::Restart { delay: Duration::from_millis(delay_ms), attempt }
    }

    fn reason(d: RestartDecision) -> String {
        match d {
            RestartDecision::GiveUp { reason } => reason,
            other => panic!("expected GiveUp, got {other:?}"),
        }
    }

    #[test]
    fn none_gives_up_at_the_first_failure() {
        let mut t = flink_default(RestartStrategyType::None);
        let r = reason(t.on_failure(0, true, 0.0));
        assert!(r.contains("no restart strategy (restart-strategy.type = none)"), "{r}");
        assert_eq!(t.restarts(), 0);
    }

    #[test]
    fn fixed_delay_with_flink_defaults_restarts_once() {
        let mut t = flink_default(RestartStrategyType::FixedDelay);
        assert_eq!(t.on_failure(0, true, 0.0), restart(S, 1));
        assert_eq!(reason(t.on_failure(10 * 60 * S, true, 0.0)), "fixed-delay restart strategy: 1 attempt(s) used up");
        assert!(matches!(t.on_failure(20 * 60 * S, true, 0.0), RestartDecision::GiveUp { .. }), "it stays given up");
    }

    #[test]
    fn fixed_delay_counts_over_the_whole_life() {
        let mut t = RestartStrategy::FixedDelay { attempts: 3, delay: Duration::from_millis(250) }.tracker();
        for (i, now) in [0, 3_600 * S, 7_200 * S].into_iter().enumerate() {
            assert_eq!(t.on_failure(now, true, 1.0), restart(250, i as u32 + 1), "jitter is not used");
        }
        assert!(reason(t.on_failure(100_000 * S, true, 0.0)).contains("3 attempt(s) used up"));
        let mut none = RestartStrategy::FixedDelay { attempts: 0, delay: Duration::ZERO }.tracker();
        assert!(reason(none.on_failure(0, true, 0.0)).contains("0 attempt(s) used up"));
    }

    /// With Flink's defaults (1 s × 1.5 up to 1 min), each failure just after the previous
    /// restart was due waits `⌊1000 × 1.5ⁿ⌋` ms, capped at 60 s.
    #[test]
    fn exponential_delay_grows_by_the_multiplier_up_to_the_maximum() {
        let mut t = flink_default(RestartStrategyType::ExponentialDelay);
        let expected = [1000, 1500, 2250, 3375, 5062, 7593, 11390, 17085, 25628, 38443, 57665, 60000, 60000];
        let mut now = 5 * S;
        for (i, want) in expected.into_iter().enumerate() {
            assert_eq!(t.on_failure(now, true, 0.0), restart(want, i as u32 + 1), "restart {}", i + 1);
            now += want + 10;
        }
    }

    #[test]
    fn exponential_delay_jitter_is_a_fraction_of_the_backoff_within_the_bounds() {
        let strategy = RestartStrategy::from_settings(
            &RestartSettings { strategy: Some(RestartStrategyType::ExponentialDelay), ..RestartSettings::default() },
            false,
        );
        let second = |jitter: f64| {
            let mut t = strategy.tracker();
            t.on_failure(0, true, 0.0);
            t.on_failure(2 * S, true, jitter)
        };
        assert_eq!(second(1.0), restart(1650, 2), "1500 + 10 %");
        assert_eq!(second(-1.0), restart(1350, 2), "1500 - 10 %");
        assert_eq!(second(0.5), restart(1575, 2));
        assert_eq!(second(7.0), restart(1650, 2), "samples are clamped to [-1, 1]");
        assert_eq!(second(f64::NAN), restart(1500, 2));
        let mut t = strategy.tracker();
        assert_eq!(t.on_failure(0, true, -1.0), restart(1000, 1), "never below the initial backoff");
        assert_eq!(exponential_backoff_ms(1000, 60_000, 1.5, 0.1, 11, 1.0), 60_000, "never above the maximum");
        assert_eq!(exponential_backoff_ms(1000, 60_000, 1.5, 0.1, 10, -1.0), 57_665 - 5_766);
        assert_eq!(exponential_backoff_ms(1000, 60_000, 1000.0, 1.0, u32::MAX, 1.0), 60_000, "no overflow");
    }

    #[test]
    fn exponential_delay_resets_after_the_threshold() {
        let mut t = flink_default(RestartStrategyType::ExponentialDelay);
        assert_eq!(t.on_failure(0, true, 0.0), restart(1000, 1));
        assert_eq!(t.on_failure(2 * S, true, 0.0), restart(1500, 2));
        assert_eq!(t.on_failure(4 * S, true, 0.0), restart(2250, 3));
        let due = 4 * S + 2250;
        assert_eq!(t.on_failure(due + 3_600 * S - 1, true, 0.0), restart(3375, 4), "1 ms short of an hour");
        let due = due + 3_600 * S - 1 + 3375;
        assert_eq!(t.on_failure(due + 3_600 * S, true, 0.0), restart(1000, 5), "an hour after: reset");
    }

    #[test]
    fn exponential_delay_merges_failures_while_a_restart_is_pending() {
        let mut t = flink_default(RestartStrategyType::ExponentialDelay);
        assert_eq!(t.on_failure(10 * S, true, 0.0), restart(1000, 1));
        assert_eq!(t.on_failure(10 * S + 400, true, 0.0), restart(600, 1), "same restart, time left");
        assert_eq!(t.on_failure(11 * S, true, 0.0), restart(0, 1), "due now: still the same");
        assert_eq!(t.on_failure(11 * S + 1, true, 0.0), restart(1500, 2));
        assert_eq!(t.restarts(), 2);
    }

    #[test]
    fn exponential_delay_gives_up_after_its_attempts_before_reset() {
        let mut settings =
            RestartSettings { strategy: Some(RestartStrategyType::ExponentialDelay), ..Default::default() };
        settings.exponential_delay.attempts_before_reset_backoff = Some(2);
        let mut t = RestartStrategy::from_settings(&settings, false).tracker();
        assert_eq!(t.on_failure(0, true, 0.0), restart(1000, 1));
        assert_eq!(t.on_failure(2 * S, true, 0.0), restart(1500, 2));
        let r = reason(t.on_failure(4 * S, true, 0.0));
        assert!(r.starts_with("exponential-delay restart strategy: 2 attempt(s) used up without a run of 1 h"), "{r}");
        let mut t = RestartStrategy::from_settings(&settings, false).tracker();
        t.on_failure(0, true, 0.0);
        t.on_failure(2 * S, true, 0.0);
        assert_eq!(t.on_failure(2 * S + 1500 + 3_600 * S, true, 0.0), restart(1000, 3), "a reset renews the attempts");
    }

    /// Flink's defaults: at most 1 failure per minute, 1 s apart.
    #[test]
    fn failure_rate_with_flink_defaults() {
        let mut t = flink_default(RestartStrategyType::FailureRate);
        assert_eq!(t.on_failure(0, true, 0.0), restart(S, 1));
        assert_eq!(t.on_failure(60 * S + 1, true, 0.0), restart(S, 2), "more than a minute later");
        let r = reason(t.on_failure(120 * S, true, 0.0));
        assert_eq!(r, "failure-rate restart strategy: more than 1 failure(s) within 1 min", "exactly a minute apart");
    }

    #[test]
    fn failure_rate_counts_within_a_sliding_interval() {
        let mut t =
            RestartStrategy::FailureRate { max_failures: 3, interval: Duration::from_secs(10), delay: Duration::ZERO }
                .tracker();
        for (i, now) in [0, 4 * S, 8 * S, 10 * S + 1, 14 * S + 1].into_iter().enumerate() {
            assert_eq!(t.on_failure(now, true, 0.0), restart(0, i as u32 + 1), "failure at {now} ms");
        }
        let r = reason(t.on_failure(17 * S, true, 0.0));
        assert!(r.contains("more than 3 failure(s) within 10 s"), "4 failures in 8.999 s: {r}");
    }

    #[test]
    fn a_failure_that_is_not_retryable_is_never_restarted() {
        for kind in [
            RestartStrategyType::None,
            RestartStrategyType::FixedDelay,
            RestartStrategyType::ExponentialDelay,
            RestartStrategyType::FailureRate,
        ] {
            let mut t = flink_default(kind);
            let r = reason(t.on_failure(0, false, 0.0));
            assert!(r.contains("not retryable"), "{kind:?}: {r}");
            assert_eq!(t.restarts(), 0);
        }
    }

    #[test]
    fn the_job_masters_view_draws_jitter_within_bounds() {
        for _ in 0..100 {
            let j = random_jitter();
            assert!((-1.0..=1.0).contains(&j), "{j}");
        }
        let settings = RestartSettings { strategy: Some(RestartStrategyType::ExponentialDelay), ..Default::default() };
        let factory = RestartStrategy::factory(&settings);
        let (mut a, mut b) = (factory(RestartChoice::default()), factory(RestartChoice::default()));
        let ms = |d: Result<Duration, String>| d.unwrap().as_millis() as u64;
        let first = ms(a.on_failure(0, true));
        assert!((1000..=1100).contains(&first), "1 s + 10 %, never below the initial backoff: {first}");
        let second = ms(a.on_failure(2 * S, true));
        assert!((1350..=1650).contains(&second), "{second}");
        assert!(ms(b.on_failure(0, true)) <= 1100, "every job gets its own tracker");
        assert!(a.on_failure(10 * S, false).unwrap_err().contains("not retryable"));
    }

    #[test]
    fn strategies_come_from_the_settings() {
        let mut s = RestartSettings::default();
        assert_eq!(RestartStrategy::from_settings(&s, false), RestartStrategy::None);
        assert_eq!(
            RestartStrategy::from_settings(&s, true).to_string(),
            "exponential-delay (1 s × 1.5 up to 1 min)",
            "Flink's default for a job with checkpoints"
        );
        s.strategy = Some(RestartStrategyType::FixedDelay);
        s.fixed_delay.attempts = 5;
        assert_eq!(
            RestartStrategy::from_settings(&s, true),
            RestartStrategy::FixedDelay { attempts: 5, delay: Duration::from_secs(1) }
        );
        s.strategy = Some(RestartStrategyType::FailureRate);
        let fr = RestartStrategy::from_settings(&s, false);
        assert_eq!(fr.to_string(), "failure-rate (at most 1 failure(s) per 1 min, 1 s apart)");
        s.strategy = Some(RestartStrategyType::ExponentialDelay);
        assert_eq!(RestartStrategy::from_settings(&s, false).to_string(), "exponential-delay (1 s × 1.5 up to 1 min)");
    }
}
