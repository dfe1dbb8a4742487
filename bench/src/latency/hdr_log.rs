//! The HdrHistogram interval log of `bench latency --hdr-log`: one histogram per interval of
//! arrival, values in nanoseconds; across processes each interval is followed by its crossing
//! and local parts, tagged so.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2Serializer;

use super::measure::new_histogram;
use super::report::LatencyReport;
use super::LatencyError;

impl LatencyReport {
    /// The interval log, V2 histograms in base64 as the format has them.
    pub fn hdr_log(&self) -> Result<Vec<u8>, LatencyError> {
        let mut buf = Vec::new();
        let mut serializer = V2Serializer::new();
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment(&format!("corestream bench latency {} at {} records/s", self.query.name(), self.rate))
            .add_comment("values are latencies in nanoseconds");
        if self.split.is_some() {
            builder.add_comment(
                "untagged: all sink subtasks; tag crossing: sink subtasks in TaskManagers other than the source's; tag \
                 local: the source's TaskManager's",
            );
        }
        let failed = |e: String| LatencyError::Histogram(format!("write the interval log: {e}"));
        let mut writer = builder
            .with_base_time(std::time::SystemTime::now())
            .begin_log_with(&mut buf, &mut serializer)
            .map_err(|e| failed(e.to_string()))?;
        let empty = new_histogram();
        for (i, h) in self.intervals.iter().enumerate() {
            let start = self.interval * i as u32;
            writer.write_histogram(h, start, self.interval, None).map_err(|e| failed(e.to_string()))?;
            if let Some(split) = &self.split {
                for (tag, m) in [("crossing", &split.crossing), ("local", &split.local)] {
                    let part = m.intervals.get(i).unwrap_or(&empty);
                    writer
                        .write_histogram(part, start, self.interval, Tag::new(tag))
                        .map_err(|e| failed(e.to_string()))?;
                }
            }
        }
        drop(writer);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    use super::super::report::tests::{accumulators, settings};
    use super::*;

    #[test]
    fn tagged_parts_follow_each_interval() {
        let accs = accumulators(&[10, 20], &[100], 3);
        let r = LatencyReport::from_accumulators(&settings(3), 2, 2, &accs).unwrap();
        let log = r.hdr_log().unwrap();
        let tags: Vec<Option<String>> = IntervalLogIterator::new(&log)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => Some(i.tag().map(|t| t.as_str().to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(tags, [None, Some("crossing".to_string()), Some("local".to_string())]);
    }
}
