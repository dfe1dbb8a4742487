//! The JSON report of `bench latency`: one flat object, latencies in µs; across processes also
//! the `crossing_…` and `local_…` figures, with `--baseline` the `baseline_…` percentiles.

use hdrhistogram::Histogram;

use super::report::{us_at, LatencyReport};
use crate::json::{to_line, Prefixed};

#[derive(Debug, serde::Serialize)]
struct LatencyJson {
    query: &'static str,
    parallelism: u32,
    processes: u32,
    rate: u64,
    duration_s: f64,
    scheduled: u64,
    offered: u64,
    not_offered: u64,
    received: u64,
    samples: u64,
    achieved_rate: f64,
    #[serde(flatten)]
    percentiles: Percentiles,
    offer_lag_p99_us: f64,
    offer_lag_max_us: f64,
    behind_at_stop_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_up_records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_up_ms: Option<f64>,
    /// `crossing_…` and `local_…` across processes.
    #[serde(flatten)]
    parts: Prefixed<PartJson>,
    /// `baseline_…` with `--baseline`.
    #[serde(flatten)]
    baseline: Prefixed<BaselineJson>,
}

/// The percentiles of one histogram, in µs.
#[derive(Debug, serde::Serialize)]
struct Percentiles {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    p99_99_us: f64,
    max_us: f64,
    mean_us: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: us_at(h, 50.0),
            p90_us: us_at(h, 90.0),
            p99_us: us_at(h, 99.0),
            p99_9_us: us_at(h, 99.9),
            p99_99_us: us_at(h, 99.99),
            max_us: h.max() as f64 / 1e3,
            mean_us: h.mean() / 1e3,
        }
    }
}

/// The crossing or the local half of a run across processes.
#[derive(Debug, serde::Serialize)]
struct PartJson {
    count: u64,
    samples: u64,
    #[serde(flatten)]
    percentiles: Percentiles,
}

/// The baseline's percentiles (no mean, as before).
#[derive(Debug, serde::Serialize)]
struct BaselineJson {
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p99_9_us: f64,
    p99_99_us: f64,
    max_us: f64,
}

impl BaselineJson {
    fn of(h: &Histogram<u64>) -> Self {
        let p = Percentiles::of(h);
        Self {
            p50_us: p.p50_us,
            p90_us: p.p90_us,
            p99_us: p.p99_us,
            p99_9_us: p.p99_9_us,
            p99_99_us: p.p99_99_us,
            max_us: p.max_us,
        }
    }
}

impl LatencyReport {
    /// The figures as one flat JSON object.
    pub fn json(&self) -> serde_json::Result<String> {
        let mut parts = Vec::new();
        if let Some(split) = &self.split {
            for (name, m) in [("crossing", &split.crossing), ("local", &split.local)] {
                let part =
                    PartJson { count: m.received, samples: m.total.len(), percentiles: Percentiles::of(&m.total) };
                parts.push((format!("{name}_"), part));
            }
        }
        to_line(&LatencyJson {
            query: self.query.name(),
            parallelism: self.parallelism,
            processes: self.processes,
            rate: self.rate,
            duration_s: self.duration_s,
            scheduled: self.scheduled,
            offered: self.offered,
            not_offered: self.not_offered(),
            received: self.received,
            samples: self.histogram.len(),
            achieved_rate: self.achieved_rate(),
            percentiles: Percentiles::of(&self.histogram),
            offer_lag_p99_us: us_at(&self.offer_lag, 99.0),
            offer_lag_max_us: self.offer_lag.max() as f64 / 1e3,
            behind_at_stop_s: self.behind_at_stop.as_secs_f64(),
            warm_up_records: self.warm_up.map(|w| w.records),
            warm_up_ms: self.warm_up.map(|w| w.time.as_secs_f64() * 1e3),
            parts: Prefixed(parts),
            baseline: Prefixed(self.baseline.iter().map(|b| ("baseline_".to_string(), BaselineJson::of(b))).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::tests::{accumulators, settings};
    use super::*;

    #[test]
    fn the_object_keeps_its_fields() {
        let accs = accumulators(&[10, 20], &[100, 200], 4);
        let r = LatencyReport::from_accumulators(&settings(4), 2, 2, &accs).unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
        for key in [
            "query",
            "parallelism",
            "processes",
            "rate",
            "duration_s",
            "scheduled",
            "offered",
            "not_offered",
            "received",
            "samples",
            "achieved_rate",
            "p50_us",
            "p99_99_us",
            "mean_us",
            "offer_lag_p99_us",
            "offer_lag_max_us",
            "behind_at_stop_s",
            "warm_up_records",
            "warm_up_ms",
            "crossing_count",
            "crossing_samples",
            "crossing_p99_us",
            "local_count",
            "local_max_us",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["crossing_count"], 2);
        assert_eq!(v["processes"], 2);
        assert!(v.get("baseline_p50_us").is_none());
    }
}
