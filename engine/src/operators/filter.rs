//! `filter`: keeps the records for which the predicate holds.

use corestream_netstack::Data;

use super::Operator;

pub(crate) struct FilterOp<F> {
    pub(crate) f: std::sync::Arc<F>,
}

impl<T: Data, F: Fn(&T) -> bool + 'static> Operator<T, T> for FilterOp<F> {
    #[inline]
    fn process(&mut self, record: T, out: &mut Vec<T>) {
        if (self.f)(&record) {
            out.push(record);
        }
    }

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<T>, out: &mut Vec<T>) {
        if out.is_empty() {
            // Filter in place and hand the allocation over: no per-record copy.
            input.retain(|r| (self.f)(r));
            std::mem::swap(input, out);
        } else {
            out.extend(input.drain(..).filter(|r| (self.f)(r)));
        }
    }
}
