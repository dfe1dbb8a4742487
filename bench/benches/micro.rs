//! Criterion microbenchmarks of the per-record and per-buffer paths: buffer pool take/return,
//! rkyv record write and in-place read, and key → key group hashing.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use corestream_netstack::record::{deserialize, Written};
use corestream_netstack::{BufferPool, RecordIter, RecordWriter};
use corestream_state::assign_key_group;

fn pool(c: &mut Criterion) {
    let pool = BufferPool::new(64);
    c.bench_function("pool take+return", |b| b.iter(|| drop(black_box(pool.take().unwrap()))));
}

fn records(c: &mut Criterion) {
    let pool = BufferPool::new(4);
    let mut writer = RecordWriter::new();
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("write 1024 (u64,u64)", |b| {
        b.iter(|| {
            let mut buf = pool.take().unwrap();
            for i in 0..1024u64 {
                assert_eq!(writer.write(&mut buf, &(i, i)).unwrap(), Written::Done);
            }
            black_box(buf.len())
        })
    });
    let mut buf = pool.take().unwrap();
    for i in 0..1024u64 {
        writer.write(&mut buf, &(i, i)).unwrap();
    }
    let frozen = buf.freeze();
    // SAFETY: `frozen` was filled by `RecordWriter::write` with `(u64, u64)` records just above.
    let records = || unsafe { RecordIter::<(u64, u64)>::new(frozen.as_slice()) };
    g.bench_function("read 1024 (u64,u64) in place", |b| {
        b.iter(|| records().map(|r| r.1.to_native()).sum::<u64>())
    });
    g.bench_function("read+deserialize 1024 (u64,u64)", |b| {
        b.iter(|| records().map(|r| deserialize::<(u64, u64)>(r).1).sum::<u64>())
    });
    g.finish();
}

fn key_groups(c: &mut Criterion) {
    c.bench_function("key group of u64", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            assign_key_group(black_box(&k), 128)
        })
    });
    c.bench_function("key group of 8-byte string", |b| b.iter(|| assign_key_group(black_box("corestrm"), 128)));
}

criterion_group!(benches, pool, records, key_groups);
criterion_main!(benches);
