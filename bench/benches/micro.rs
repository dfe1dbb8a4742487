//! Criterion microbenchmarks of the per-record and per-buffer paths: buffer pool take/return,
//! rkyv record write and in-place read, validation of a received buffer, and key → key group
//! hashing.

use corestream_netstack::record::{deserialize, Written};
use corestream_netstack::{BufferPool, RecordIter, RecordWriter};
use corestream_state::assign_key_group;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

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
    g.bench_function("read 1024 (u64,u64) in place", |b| b.iter(|| records().map(|r| r.1.to_native()).sum::<u64>()));
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

/// One credit-channel hop between two threads pinned to different cores: the producer sends
/// 32 KB buffers as credit allows, the consumer reads each and returns its credit; both spin
/// (no doorbell waits), so this is the cost of the hop itself, per buffer.
fn channel_hop(c: &mut Criterion) {
    use corestream_netstack::{ChannelItem, CreditConfig, Doorbell, InputGate, LocalChannel, OutputChannel};
    use std::sync::Arc;

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut g = c.benchmark_group("credit channel");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hop of one 32 KB buffer between two cores", |b| {
        b.iter_custom(|iters| {
            let config = CreditConfig::default();
            let pool = BufferPool::new(64);
            let channel =
                LocalChannel::new(config.exclusive_per_channel, Arc::new(Doorbell::new()), Arc::new(Doorbell::new()));
            let mut out = OutputChannel::new(channel.clone(), &config);
            let mut gate = InputGate::new(vec![channel], &config);
            let (producer_core, consumer_core) = (cores.first().copied(), cores.get(1).copied());
            let consumer = std::thread::spawn(move || {
                if let Some(core) = consumer_core {
                    core_affinity::set_for_current(core);
                }
                let mut received = 0u64;
                let mut bytes = 0usize;
                while received < iters {
                    match gate.poll_next() {
                        Some((c, ChannelItem::Buffer(buffer))) => {
                            bytes += black_box(buffer.as_slice()).len();
                            drop(buffer);
                            gate.release(c);
                            received += 1;
                        }
                        Some(_) => {}
                        None => std::hint::spin_loop(),
                    }
                }
                bytes
            });
            if let Some(core) = producer_core {
                core_affinity::set_for_current(core);
            }
            let start = std::time::Instant::now();
            let mut sent = 0u64;
            while sent < iters {
                out.try_send();
                if out.is_available() {
                    let mut buffer = pool.take().expect("pool has room");
                    buffer.spare_mut()[..64].fill(1);
                    buffer.advance(64);
                    out.send_buffer(buffer.freeze());
                    sent += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
            while out.has_pending() {
                out.try_send();
                std::hint::spin_loop();
            }
            black_box(consumer.join().expect("consumer"));
            start.elapsed()
        })
    });
    g.finish();
}

/// Validation of one full 32 KB buffer as received from another process (`validate_buffer`),
/// for fixed-size pairs and for a record holding an out-of-line string; next to it, the same
/// archives checked with rkyv's low- and high-level validators alone (without the header walk),
/// which is the measurement behind choosing the low-level one.
fn validation(c: &mut Criterion) {
    use corestream_netstack::record::validate_buffer;
    use corestream_netstack::rkyv::{self, rancor, Archive};
    use std::ops::Range;

    fn full_buffer<T: corestream_netstack::Data>(
        pool: &BufferPool,
        record: impl Fn(u64) -> T,
    ) -> corestream_netstack::Buffer {
        let mut writer = RecordWriter::new();
        let mut buf = pool.take().unwrap();
        let mut i = 0;
        while writer.write(&mut buf, &record(i)).unwrap() == Written::Done {
            i += 1;
        }
        buf.freeze()
    }
    fn archives(bytes: &[u8]) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut offset = 8;
        while offset < bytes.len() {
            let header = (offset + 8).next_multiple_of(16) - 8;
            let len = u32::from_le_bytes(bytes[header..header + 4].try_into().unwrap()) as usize;
            out.push(header + 8..header + 8 + len);
            offset = header + 8 + len;
        }
        out
    }
    fn bench_type<T>(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, bytes: &[u8])
    where
        T: corestream_netstack::Data,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::Error>>,
    {
        let count = validate_buffer::<T>(bytes).expect("valid buffer");
        let ranges = archives(bytes);
        g.throughput(Throughput::Elements(u64::from(count)));
        g.bench_function(format!("validate_buffer 32 KB of {name} ({count} records)"), |b| {
            b.iter(|| validate_buffer::<T>(black_box(bytes)).unwrap())
        });
        g.bench_function(format!("low access only, {name}"), |b| {
            b.iter(|| {
                for r in &ranges {
                    rkyv::api::low::access::<T::Archived, rancor::Failure>(black_box(&bytes[r.clone()])).unwrap();
                }
            })
        });
        g.bench_function(format!("high access only, {name}"), |b| {
            b.iter(|| {
                for r in &ranges {
                    rkyv::access::<<T as Archive>::Archived, rancor::Error>(black_box(&bytes[r.clone()])).unwrap();
                }
            })
        });
    }

    let pool = BufferPool::new(2);
    let pairs = full_buffer(&pool, |i| (i, i * 3));
    let strings = full_buffer(&pool, |i| (format!("bidder-{i:012}"), i));
    let mut g = c.benchmark_group("validate buffer");
    bench_type::<(u64, u64)>(&mut g, "(u64,u64)", pairs.as_slice());
    bench_type::<(String, u64)>(&mut g, "(String,u64) 19-byte strings", strings.as_slice());
    g.finish();
}

criterion_group!(benches, pool, records, key_groups, channel_hop, validation);
criterion_main!(benches);
