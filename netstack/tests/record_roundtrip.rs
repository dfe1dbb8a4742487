//! Property tests of the record codec: any sequence of records written into pooled buffers
//! reads back identical and in order, including records that do not fit the rest of a buffer
//! (they move to the next one) and records larger than a buffer (refused with their size,
//! leaving the stream intact).

use corestream_netstack::record::{deserialize, Written, MAX_RECORD_BYTES};
use corestream_netstack::{Buffer, BufferPool, RecordError, RecordIter, RecordWriter};
use proptest::prelude::*;

fn iter<T: corestream_netstack::Data>(b: &Buffer) -> RecordIter<'_, T> {
    // SAFETY: every buffer in these tests was filled by `RecordWriter::write` with `T`s.
    unsafe { RecordIter::new(b.as_slice()) }
}

fn write_all(pool: &BufferPool, records: &[Vec<u8>]) -> (Vec<Buffer>, Vec<Vec<u8>>, usize) {
    let mut writer = RecordWriter::new();
    let mut buffers = Vec::new();
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut open = pool.take().unwrap();
    for r in records {
        loop {
            match writer.write(&mut open, r) {
                Ok(Written::Done) => {
                    accepted.push(r.clone());
                    break;
                }
                Ok(Written::BufferFull) => buffers.push(std::mem::replace(&mut open, pool.take().unwrap()).freeze()),
                Err(RecordError::TooLarge { size_bytes, max_bytes }) => {
                    assert!(size_bytes > max_bytes && max_bytes == MAX_RECORD_BYTES);
                    assert!(r.len() + 8 > MAX_RECORD_BYTES, "a record of {} bytes was refused", r.len());
                    refused += 1;
                    break;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    }
    if !open.is_empty() {
        buffers.push(open.freeze());
    }
    (buffers, accepted, refused)
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0usize..64,
            3 => 64usize..4096,
            2 => 20_000usize..MAX_RECORD_BYTES - 8,
            1 => MAX_RECORD_BYTES..40_000,
        ],
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn byte_records_round_trip(sizes in sizes(), seed in any::<u8>()) {
        let records: Vec<Vec<u8>> =
            sizes.iter().enumerate().map(|(i, n)| vec![seed.wrapping_add(i as u8); *n]).collect();
        let pool = BufferPool::new(128);
        let (buffers, accepted, refused) = write_all(&pool, &records);
        let back: Vec<Vec<u8>> = buffers
            .iter()
            .flat_map(|b| iter::<Vec<u8>>(b).map(deserialize::<Vec<u8>>).collect::<Vec<_>>())
            .collect();
        prop_assert_eq!(&back, &accepted);
        prop_assert_eq!(accepted.len() + refused, records.len());
        let counted: usize = buffers.iter().map(|b| corestream_netstack::record_count(b.as_slice())).sum();
        prop_assert_eq!(counted, accepted.len());
        let in_place: usize = buffers.iter().map(|b| iter::<Vec<u8>>(b).map(|a| a.len()).sum::<usize>()).sum();
        prop_assert_eq!(in_place, accepted.iter().map(Vec::len).sum::<usize>());
        drop(buffers);
        prop_assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn tuples_and_strings_round_trip(records in prop::collection::vec((any::<u64>(), ".{0,40}", any::<i32>()), 0..3000)) {
        let pool = BufferPool::new(64);
        let mut writer = RecordWriter::new();
        let mut buffers = Vec::new();
        let mut open = pool.take().unwrap();
        for r in &records {
            while writer.write(&mut open, r).unwrap() == Written::BufferFull {
                buffers.push(std::mem::replace(&mut open, pool.take().unwrap()).freeze());
            }
        }
        buffers.push(open.freeze());
        let back: Vec<(u64, String, i32)> = buffers
            .iter()
            .flat_map(|b| iter::<(u64, String, i32)>(b).map(deserialize::<(u64, String, i32)>).collect::<Vec<_>>())
            .collect();
        prop_assert_eq!(back, records);
    }
}
