//! `map`: one output record per input record.

use corestream_netstack::Data;

use super::Operator;

pub(crate) struct MapOp<F> {
    pub(crate) f: std::sync::Arc<F>,
}

impl<I: Data, O: Data, F: Fn(I) -> O + 'static> Operator<I, O> for MapOp<F> {
    #[inline]
    fn process(&mut self, record: I, out: &mut Vec<O>) {
        out.push((self.f)(record));
    }

    #[inline]
    fn process_batch(&mut self, input: &mut Vec<I>, out: &mut Vec<O>) {
        out.reserve(input.len());
        let f = &*self.f;
        out.extend(input.drain(..).map(f));
    }
}
