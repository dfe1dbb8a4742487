//! Must not compile: `Reading` derives nothing from rkyv, so it is not a record (`Data`). The
//! test `tests/tests/embed_outside.rs` builds this example and checks that the compiler names
//! the type and gives the derive hint of `Data`'s `#[diagnostic::on_unimplemented]`.

use corestream::prelude::*;

struct Reading {
    sensor: u64,
}

fn main() {
    let cluster = LocalCluster::start_default().expect("cluster");
    cluster.environment().from_iter(vec![Reading { sensor: 1 }]).discard();
}
