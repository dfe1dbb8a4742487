//! The figures of one run ([`LatencyReport`]), read from the job's merged accumulators, and
//! the lines `bench latency` prints. The JSON object, the interval log and the plot are in
//! the sibling modules.

use std::time::Duration;

use corestream::rpc::messages::Accumulators;
use hdrhistogram::Histogram;

use super::measure::{Measured, Side};
use super::schedule::{Fed, WarmUp};
use super::{LatencyError, LatencyQuery, LatencySettings, OFFER_GRACE};

/// A feeder whose largest lag reached this is reported as having fallen behind even if it
/// offered every record within the grace.
const FELL_BEHIND_LAG: Duration = Duration::from_millis(100);

pub(crate) const PERCENTILES: [(&str, f64); 5] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9), ("p99_99", 99.99)];

pub(crate) fn us_at(h: &Histogram<u64>, percentile: f64) -> f64 {
    h.value_at_percentile(percentile) as f64 / 1e3
}

/// `p50 1.0 us, … max 3.0 us` on one line.
fn percentile_line(h: &Histogram<u64>) -> String {
    let mut parts: Vec<String> =
        PERCENTILES.iter().map(|(name, p)| format!("{} {:.1} us", name.replace('_', "."), us_at(h, *p))).collect();
    parts.push(format!("max {:.1} us", h.max() as f64 / 1e3));
    parts.join(", ")
}

/// The figures of one run (latencies in nanoseconds).
#[derive(Debug)]
pub struct LatencyReport {
    pub query: LatencyQuery,
    pub parallelism: u32,
    /// TaskManager processes that ran the job.
    pub processes: u32,
    pub rate: u64,
    pub duration_s: f64,
    /// Records the schedule holds (rate × duration).
    pub scheduled: u64,
    pub offered: u64,
    pub received: u64,
    pub offer_time_s: f64,
    /// How far behind its schedule the feeder was when it stopped at the end of the schedule
    /// plus [`OFFER_GRACE`] with records still not offered (zero if it offered them all).
    pub behind_at_stop: Duration,
    /// How far behind its schedule the feeder was when it handed each record over (ns): the
    /// harness's own share of the latencies, which should be small next to them.
    pub offer_lag: Histogram<u64>,
    /// The same schedule through the harness alone ([`super::measure_baseline`]), when asked for.
    pub baseline: Option<Histogram<u64>>,
    /// How the clock waited for the sinks (q0).
    pub warm_up: Option<WarmUp>,
    pub histogram: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub interval: Duration,
    /// With more than one process: what the sink subtasks of the TaskManagers other than the
    /// source's (the records crossed the TCP data plane) and of the source's TaskManager (they
    /// stayed in memory) measured.
    pub split: Option<Split>,
    /// The job's warnings, to print apart.
    pub warnings: Vec<String>,
}

/// The halves of a run across processes.
#[derive(Debug)]
pub struct Split {
    pub crossing: Measured,
    pub local: Measured,
}

impl LatencyReport {
    /// The report of a run at parallelism `p` on `processes` TaskManager processes, from the
    /// job's merged accumulators; an error if the sinks did not receive what was offered (q0)
    /// or measured nothing.
    pub fn from_accumulators(
        settings: &LatencySettings,
        parallelism: u32,
        processes: u32,
        accumulators: &Accumulators,
    ) -> Result<LatencyReport, LatencyError> {
        let fed = Fed::from_accumulators(accumulators)?;
        let local = Measured::from_accumulators(Side::Local, accumulators)?;
        let crossing = Measured::from_accumulators(Side::Crossing, accumulators)?;
        let mut all = local.clone();
        all.add(&crossing)?;
        check_received(settings.query, &all, fed.offered)?;
        let split = (processes > 1).then_some(Split { crossing, local });
        Ok(LatencyReport {
            query: settings.query,
            parallelism,
            processes,
            rate: settings.rate,
            duration_s: settings.duration.as_secs_f64(),
            scheduled: settings.records().unwrap_or(fed.offered),
            offered: fed.offered,
            behind_at_stop: fed.behind_at_stop,
            received: all.received,
            offer_time_s: fed.offer_time.as_secs_f64(),
            offer_lag: fed.lag,
            baseline: None,
            warm_up: fed.warm_up,
            histogram: all.total,
            intervals: all.intervals,
            interval: settings.interval(),
            split,
            warnings: Vec::new(),
        })
    }

    /// Records offered per second of the time the feeder took to offer them all.
    pub fn achieved_rate(&self) -> f64 {
        self.offered as f64 / self.offer_time_s.max(1e-9)
    }

    fn us(&self, percentile: f64) -> f64 {
        us_at(&self.histogram, percentile)
    }

    pub fn lines(&self) -> String {
        let across = match self.processes {
            1 => String::new(),
            n => format!(" across {n} TaskManager processes"),
        };
        let mut s = format!(
            "latency {}: parallelism {}{across}, target {} records/s for {:.3} s, offered {} ({:.1} records/s \
             achieved), received {}\n  {} latency samples, each a {}\n",
            self.query.name(),
            self.parallelism,
            self.rate,
            self.duration_s,
            self.offered,
            self.achieved_rate(),
            self.received,
            self.histogram.len(),
            self.query.measures()
        );
        for (name, p) in PERCENTILES {
            s.push_str(&format!("  {:<7} {:>12.1} us\n", name.replace('_', "."), self.us(p)));
        }
        s.push_str(&format!("  {:<7} {:>12.1} us\n", "max", self.histogram.max() as f64 / 1e3));
        if let Some(split) = &self.split {
            let others = match self.processes {
                2 => "the other TaskManager".to_string(),
                n => format!("the {} other TaskManagers", n - 1),
            };
            s.push_str(&format!(
                "  crossing (sink subtasks in {others}, over TCP): {} samples, {}\n",
                split.crossing.total.len(),
                percentile_line(&split.crossing.total)
            ));
            s.push_str(&format!(
                "  local (sink subtasks in the source's TaskManager, in memory): {} samples, {}\n",
                split.local.total.len(),
                percentile_line(&split.local.total)
            ));
        }
        if let Some(w) = &self.warm_up {
            s.push_str(&format!(
                "  warm-up before the clock started: {} records until every sink subtask had one ({:.1} ms)\n",
                w.records,
                w.time.as_secs_f64() * 1e3
            ));
        }
        s.push_str(&format!(
            "  feeder behind schedule when offering: p99 {:.1} us, max {:.1} us",
            us_at(&self.offer_lag, 99.0),
            self.offer_lag.max() as f64 / 1e3
        ));
        if let Some(line) = self.fell_behind_line() {
            s.push_str("\n  ");
            s.push_str(&line);
        }
        if let Some(b) = &self.baseline {
            s.push_str("\n  baseline, the same schedule with no engine (feeder → channel → thread):");
            for (name, p) in PERCENTILES {
                s.push_str(&format!(" {} {:.1} us,", name.replace('_', "."), us_at(b, p)));
            }
            s.push_str(&format!(" max {:.1} us", b.max() as f64 / 1e3));
        }
        s
    }

    /// Records of the schedule the feeder never offered: it stopped at the end of the
    /// schedule plus [`OFFER_GRACE`].
    pub fn not_offered(&self) -> u64 {
        self.scheduled.saturating_sub(self.offered)
    }

    /// `feeder fell behind: …` when the feeder could not keep to the schedule: it left records
    /// unoffered, or handed some over `FELL_BEHIND_LAG` or more late.
    pub fn fell_behind_line(&self) -> Option<String> {
        let max_lag = Duration::from_nanos(self.offer_lag.max());
        if self.not_offered() > 0 {
            Some(format!(
                "feeder fell behind: offered {} of the {} scheduled records ({:.1}%, {:.0} records/s of {} asked); it \
                 stopped {:.3} s behind schedule at the end of --duration + {OFFER_GRACE:?}, and {} records were never \
                 offered",
                self.offered,
                self.scheduled,
                100.0 * self.offered as f64 / self.scheduled.max(1) as f64,
                self.achieved_rate(),
                self.rate,
                self.behind_at_stop.as_secs_f64(),
                self.not_offered()
            ))
        } else if max_lag >= FELL_BEHIND_LAG {
            Some(format!(
                "feeder fell behind: it offered every record, up to {:.3} s behind schedule",
                max_lag.as_secs_f64()
            ))
        } else {
            None
        }
    }
}

/// Checks what the sinks received against what the feeder offered.
fn check_received(query: LatencyQuery, all: &Measured, offered: u64) -> Result<(), LatencyError> {
    match query {
        LatencyQuery::Q0 if all.received != offered => Err(LatencyError::Lost { received: all.received, offered }),
        _ if all.total.is_empty() => Err(LatencyError::NoLatency { received: all.received }),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::latency::measure::{new_histogram, record_value};
    use crate::latency::Feeder;

    pub(crate) fn settings(rate: u64) -> LatencySettings {
        LatencySettings {
            query: LatencyQuery::Q0,
            rate,
            duration: Duration::from_secs(1),
            seed: 42,
            baseline: false,
            feeder: Feeder::Source,
        }
    }

    /// The merged accumulators of a run in which `local` and `crossing` samples (µs) arrived in
    /// interval 0 and the feeder offered `offered` records.
    pub(crate) fn accumulators(local: &[u64], crossing: &[u64], offered: u64) -> Accumulators {
        let mut accs = Accumulators::new();
        for (side, values) in [(Side::Local, local), (Side::Crossing, crossing)] {
            if values.is_empty() {
                continue;
            }
            let mut h = new_histogram();
            values.iter().for_each(|v| record_value(&mut h, v * 1000));
            let m = Measured { total: h.clone(), intervals: vec![h], received: values.len() as u64, warm_up: 1 };
            m.to_accumulators(side, &mut accs).unwrap();
        }
        let mut lag = new_histogram();
        record_value(&mut lag, 5_000);
        let fed = Fed {
            offered,
            offer_time: Duration::from_millis(1000),
            lag,
            warm_up: Some(WarmUp { records: 4, time: Duration::from_millis(120) }),
            behind_at_stop: Duration::ZERO,
        };
        fed.to_accumulators(&mut accs).unwrap();
        accs
    }

    #[test]
    fn a_run_across_processes_reports_both_halves() {
        let accs = accumulators(&[10, 20], &[100, 200, 300], 5);
        let r = LatencyReport::from_accumulators(&settings(5), 2, 2, &accs).unwrap();
        assert_eq!((r.offered, r.received, r.histogram.len()), (5, 5, 5));
        let split = r.split.as_ref().unwrap();
        assert_eq!((split.local.received, split.crossing.received), (2, 3));
        let lines = r.lines();
        assert!(lines.contains("across 2 TaskManager processes"), "{lines}");
        assert!(
            lines.contains("  crossing (sink subtasks in the other TaskManager, over TCP): 3 samples, p50"),
            "{lines}"
        );
        assert!(lines.contains("  local (sink subtasks in the source's TaskManager, in memory): 2 samples"), "{lines}");
        assert!(lines.contains("warm-up before the clock started: 4 records"), "{lines}");
        assert!(r.fell_behind_line().is_none());
    }

    #[test]
    fn one_process_has_no_split() {
        let accs = accumulators(&[10, 20, 30], &[], 3);
        let r = LatencyReport::from_accumulators(&settings(3), 2, 1, &accs).unwrap();
        assert!(r.split.is_none());
        assert!(!r.lines().contains("crossing"));
        assert!(r.lines().contains("p99.99"));
    }

    #[test]
    fn lost_records_and_a_missing_feeder_are_errors() {
        let accs = accumulators(&[10], &[20], 3);
        let e = LatencyReport::from_accumulators(&settings(3), 2, 2, &accs).unwrap_err();
        assert!(matches!(e, LatencyError::Lost { received: 2, offered: 3 }), "{e}");
        let mut no_feeder = accumulators(&[10], &[], 1);
        no_feeder.retain(|k, _| !k.starts_with("latency.fed."));
        let e = LatencyReport::from_accumulators(&settings(1), 1, 1, &no_feeder).unwrap_err();
        assert!(matches!(e, LatencyError::NotFed), "{e}");
    }

    #[test]
    fn a_feeder_that_stopped_early_says_so() {
        let accs = accumulators(&[10, 20], &[], 2);
        let r = LatencyReport::from_accumulators(&settings(10), 1, 1, &accs).unwrap();
        let line = r.fell_behind_line().unwrap();
        assert!(line.starts_with("feeder fell behind: offered 2 of the 10 scheduled records"), "{line}");
        assert_eq!(r.not_offered(), 8);
        assert!(r.lines().contains(&line));
    }
}
