//! Records a user function skips, reported instead of dropped silently.
//!
//! [`DataStream::flat_map_skipping`] is a flat map whose function is also handed a [`Skips`]:
//! when it cannot pass something on (a word too large for a record, say), it counts it under a
//! description and keeps an example of the first one. When the operator's input ends, each
//! subtask reports every description it counted as one job warning ([`JobWarning`](crate::JobWarning), in
//! [`JobResult::warnings`](crate::JobResult::warnings)), with the count and the first example.
//! Memory is bounded: one counter and one example per distinct description.

use std::sync::Arc;

use corestream_netstack::Data;

use super::stream::DataStream;
use crate::graph::stream_graph::NodeKind;
use crate::operators::{Emit, OpNode, Operator};
use crate::runtime::build::{BuildCtx, LinkFactory};

/// What one subtask of a [`DataStream::flat_map_skipping`] skipped so far.
#[derive(Debug, Default)]
pub struct Skips {
    /// (what was skipped, how many, the first one).
    counts: Vec<(String, u64, String)>,
}

impl Skips {
    /// Counts one skipped item under `what` (a plural description such as "words longer than
    /// 16384 bytes"); `first` describes the item and is called only for the first of its kind.
    pub fn skip(&mut self, what: &str, first: impl FnOnce() -> String) {
        match self.counts.iter_mut().find(|(w, _, _)| w == what) {
            Some((_, count, _)) => *count += 1,
            None => self.counts.push((what.to_string(), 1, first())),
        }
    }

    /// How many items were counted under `what`.
    pub fn count(&self, what: &str) -> u64 {
        self.counts.iter().find(|(w, _, _)| w == what).map_or(0, |(_, count, _)| *count)
    }

    /// One message per description: "N WHAT were skipped (first: FIRST)".
    pub fn messages(&self) -> Vec<(u64, String)> {
        self.counts
            .iter()
            .map(|(what, count, first)| (*count, format!("{count} {what} were skipped (first: {first})")))
            .collect()
    }
}

struct FlatMapSkippingOp<F> {
    f: Arc<F>,
    skips: Skips,
    report: Option<Box<dyn Fn(u64, String)>>,
}

impl<I, O, R, F> Operator<I, O> for FlatMapSkippingOp<F>
where
    I: Data,
    O: Data,
    R: IntoIterator<Item = O>,
    F: Fn(I, &mut Skips) -> R + 'static,
{
    #[inline]
    fn process(&mut self, record: I, out: &mut Vec<O>) {
        out.extend((self.f)(record, &mut self.skips));
    }

    fn finish(&mut self, _out: &mut Vec<O>, _max_records: usize) -> bool {
        if let Some(report) = self.report.take() {
            for (count, message) in self.skips.messages() {
                report(count, message);
            }
        }
        true
    }
}

impl<T: Data> DataStream<T> {
    /// A flat map whose function may skip parts of a record, counting them in the [`Skips`]
    /// it is given; each subtask reports what it skipped as job warnings when its input ends.
    pub fn flat_map_skipping<U, R, F>(self, f: F) -> DataStream<U>
    where
        U: Data,
        R: IntoIterator<Item = U> + 'static,
        F: Fn(T, &mut Skips) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let link: Arc<LinkFactory<T, U>> = Arc::new(move |ctx: &BuildCtx<'_>, next: Box<dyn Emit<U>>| {
            let report = ctx.job.warner(ctx.node, ctx.subtask);
            let op = FlatMapSkippingOp { f: f.clone(), skips: Skips::default(), report: Some(report) };
            Ok(Box::new(OpNode::new(op, next, ctx.metrics.clone(), ctx.node)) as Box<dyn Emit<T>>)
        });
        self.add_operator("FlatMap", NodeKind::Operator, link)
    }
}

#[cfg(test)]
mod tests {
    use super::Skips;

    #[test]
    fn skips_are_counted_per_description_with_the_first_example() {
        let mut s = Skips::default();
        s.skip("long words", || "w1".into());
        s.skip("long words", || unreachable!("only the first is described"));
        s.skip("bad keys", || "k".into());
        assert_eq!(s.count("long words"), 2);
        assert_eq!(s.count("other"), 0);
        assert_eq!(
            s.messages(),
            vec![
                (2, "2 long words were skipped (first: w1)".to_string()),
                (1, "1 bad keys were skipped (first: k)".to_string())
            ]
        );
    }
}
