//! `flat_map`: zero or more output records per input record.

use corestream_netstack::Data;

use super::Operator;

pub(crate) struct FlatMapOp<F> {
    pub(crate) f: std::sync::Arc<F>,
}

impl<I: Data, O: Data, R: IntoIterator<Item = O>, F: Fn(I) -> R + 'static> Operator<I, O> for FlatMapOp<F> {
    #[inline]
    fn process(&mut self, record: I, out: &mut Vec<O>) {
        out.extend((self.f)(record));
    }
}
