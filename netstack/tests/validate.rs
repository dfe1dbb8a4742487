//! Validation of record buffers received from other processes (`validate_buffer`): buffers the
//! real writer produced are accepted with their record count; truncated, corrupted or forged
//! buffers are refused with the error that names what was wrong, never with a panic; and
//! whatever is accepted can be iterated in place and deserialized.

use corestream_netstack::error::BufferError;
use corestream_netstack::record::{deserialize, validate_buffer, BufferValidator, Written};
use corestream_netstack::rkyv::util::AlignedVec;
use corestream_netstack::{record_count, BufferPool, Data, RecordIter, RecordWriter};
use proptest::prelude::*;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
enum Event {
    Tick,
    Named(String),
    Pair { key: u32, value: Option<i64> },
    Blob(Vec<u8>, bool),
}

/// Copies of the buffers `records` fill, each in 16-byte aligned memory that a test may alter.
fn write_buffers<T: Data>(records: &[T]) -> Vec<AlignedVec<16>> {
    let pool = BufferPool::new(4);
    let mut writer = RecordWriter::new();
    let mut out = Vec::new();
    let mut buf = pool.take().unwrap();
    let copy = |bytes: &[u8]| {
        let mut v = AlignedVec::<16>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        v
    };
    for r in records {
        while writer.write(&mut buf, r).unwrap() == Written::BufferFull {
            out.push(copy(buf.as_slice()));
            buf = pool.take().unwrap();
        }
    }
    out.push(copy(buf.as_slice()));
    out
}

fn one_buffer<T: Data>(records: &[T]) -> AlignedVec<16> {
    let mut bufs = write_buffers(records);
    assert_eq!(bufs.len(), 1, "the test records fit one buffer");
    bufs.pop().unwrap()
}

/// Reads every record of an accepted buffer in place and deserializes it.
fn read_validated<T: Data>(bytes: &[u8]) -> Vec<T> {
    validate_buffer::<T>(bytes).expect("buffer was validated by the caller");
    // SAFETY: `validate_buffer::<T>` accepted `bytes` just above, and it starts 16-byte aligned.
    unsafe { RecordIter::<T>::new(bytes) }.map(deserialize::<T>).collect()
}

/// Byte offsets of the archives in a valid buffer: (start, end) per record.
fn archive_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut offset = 8;
    while offset < bytes.len() {
        let header = (offset + 8).next_multiple_of(16) - 8;
        let len = u32::from_le_bytes(bytes[header..header + 4].try_into().unwrap()) as usize;
        out.push((header + 8, header + 8 + len));
        offset = header + 8 + len;
    }
    out
}

fn assert_round_trip<T: Data + PartialEq + std::fmt::Debug + Clone>(records: Vec<T>) {
    let bufs = write_buffers(&records);
    let mut back = Vec::new();
    for b in &bufs {
        let count = validate_buffer::<T>(b).unwrap_or_else(|e| panic!("{}: {e}", std::any::type_name::<T>()));
        assert_eq!(count as usize, record_count(b));
        back.extend(read_validated::<T>(b));
    }
    assert_eq!(back, records);
}

#[test]
fn written_buffers_validate_with_their_count() {
    assert_round_trip((0..3000u64).map(|i| (i, i * 7)).collect());
    assert_round_trip((0..500).map(|i| "word ".repeat(i % 7) + &i.to_string()).collect::<Vec<String>>());
    assert_round_trip((0..800u64).map(|i| (format!("key-{i}"), i)).collect());
    assert_round_trip((0..300usize).map(|i| vec![i as u8; i % 40]).collect::<Vec<Vec<u8>>>());
    assert_round_trip(
        (0..600u32)
            .map(|i| match i % 4 {
                0 => Event::Tick,
                1 => Event::Named(format!("ünïcödé {i}")),
                2 => Event::Pair { key: i, value: (i % 3 == 0).then_some(-(i as i64)) },
                _ => Event::Blob(vec![3; i as usize % 20], i % 8 == 3),
            })
            .collect(),
    );
    assert_round_trip((0..400i64).map(|i| (i % 2 == 0).then_some(i)).collect());
    assert_round_trip((0..400).map(|i| (i % 3 == 0).then(|| format!("v{i}"))).collect::<Vec<Option<String>>>());
    assert_round_trip((0..5000).map(|i| i % 3 == 0).collect());
    assert_round_trip(vec![(); 10]);
}

#[test]
fn the_type_erased_validator_is_the_generic_one() {
    let validator: BufferValidator = validate_buffer::<(String, u64)>;
    let buf = one_buffer(&[("a".to_string(), 1u64), ("b".to_string(), 2)]);
    assert_eq!(validator(&buf), Ok(2));
}

#[test]
fn every_truncation_is_refused() {
    let buf = one_buffer(&[
        Event::Named("a long enough name".into()),
        Event::Tick,
        Event::Pair { key: 9, value: Some(-1) },
        Event::Blob(vec![1, 2, 3], true),
    ]);
    for cut in 0..buf.len() {
        assert!(validate_buffer::<Event>(&buf[..cut]).is_err(), "prefix of {cut} of {} bytes accepted", buf.len());
    }
    let pairs = one_buffer(&[(1u64, 2u64), (3, 4), (5, 6)]);
    for cut in 0..pairs.len() {
        let err = validate_buffer::<(u64, u64)>(&pairs[..cut]).unwrap_err();
        match cut {
            0..8 => assert_eq!(err, BufferError::TooShort { len: cut }),
            8 | 32 | 64 => assert_eq!(err, BufferError::CountMismatch { declared: 3, found: cut as u32 / 32 }),
            33..=40 | 65..=72 => {
                let offset = cut / 32 * 32;
                assert_eq!(err, BufferError::TrailingBytes { offset, trailing: cut - offset })
            }
            _ => assert!(matches!(err, BufferError::RecordPastEnd { len, .. } if len == cut), "{cut}: {err:?}"),
        }
    }
}

#[test]
fn invalid_utf8_in_a_string_names_the_record() {
    let records = ["first".to_string(), "a string stored out of line".to_string(), "third".to_string()];
    let mut buf = one_buffer(&records);
    let at = buf.windows(8).position(|w| w == b"a string").unwrap();
    buf[at + 2] = 0xff;
    let (start, _) = archive_ranges(&buf)[1];
    assert_eq!(
        validate_buffer::<String>(&buf),
        Err(BufferError::InvalidArchive { record: 1, offset: start, type_name: "alloc::string::String" })
    );
    let mut inline = one_buffer(&["ok".to_string(), "abc".to_string()]);
    let at = inline.windows(3).position(|w| w == b"abc").unwrap();
    inline[at] = 0xc0;
    let err = validate_buffer::<String>(&inline).unwrap_err();
    assert!(matches!(err, BufferError::InvalidArchive { record: 1, .. }), "{err:?}");
}

#[test]
fn a_relative_pointer_outside_its_archive_is_refused() {
    let records = [vec![1u8; 24], vec![2u8; 24], vec![3u8; 24]];
    let clean = one_buffer(&records);
    let ranges = archive_ranges(&clean);
    let (start, end) = ranges[2];
    // ArchivedVec root (last 8 bytes): i32 offset relative to itself, then u32 length.
    let root = end - 8;
    for offset in [0x4000i32, (end - root) as i32, -((root - start) as i32) - 16, i32::MIN] {
        let mut buf = clean.clone();
        buf[root..root + 4].copy_from_slice(&offset.to_le_bytes());
        assert_eq!(
            validate_buffer::<Vec<u8>>(&buf),
            Err(BufferError::InvalidArchive { record: 2, offset: start, type_name: "alloc::vec::Vec<u8>" }),
            "relative offset {offset}"
        );
    }
    let mut long = clean.clone();
    long[root + 4..root + 8].copy_from_slice(&25u32.to_le_bytes());
    assert!(matches!(validate_buffer::<Vec<u8>>(&long), Err(BufferError::InvalidArchive { record: 2, .. })));
}

#[test]
fn a_bool_byte_of_two_is_refused() {
    let mut buf = one_buffer(&[true, false, true]);
    let (start, end) = archive_ranges(&buf)[1];
    assert_eq!(end - start, 1);
    buf[start] = 2;
    assert_eq!(
        validate_buffer::<bool>(&buf),
        Err(BufferError::InvalidArchive { record: 1, offset: start, type_name: "bool" })
    );
}

#[test]
fn an_unknown_enum_tag_is_refused() {
    let mut buf = one_buffer(&[Event::Tick, Event::Tick]);
    let (start, _) = archive_ranges(&buf)[0];
    buf[start] = 4;
    assert!(matches!(validate_buffer::<Event>(&buf), Err(BufferError::InvalidArchive { record: 0, .. })));
}

#[test]
fn header_words_are_checked() {
    let clean = one_buffer(&[(1u64, 2u64), (3, 4)]);
    assert_eq!(validate_buffer::<(u64, u64)>(&clean), Ok(2));

    let mut buf = clean.clone();
    buf[0..4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::CountMismatch { declared: 3, found: 2 }));
    buf[0..4].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::CountMismatch { declared: 1, found: 2 }));
    buf[0..4].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::Empty));

    let mut buf = clean.clone();
    buf[5] = 1;
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::ReservedNotZero { offset: 4 }));
    let mut buf = clean.clone();
    buf[40 + 7] = 0x80;
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::ReservedNotZero { offset: 44 }));

    let mut buf = clean.clone();
    buf[40..44].copy_from_slice(&17u32.to_le_bytes());
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::RecordPastEnd { record: 1, end: 65, len: 64 }));
    buf[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::RecordPastEnd { record: 1, .. })));
    buf[40..44].copy_from_slice(&8u32.to_le_bytes());
    assert!(matches!(
        validate_buffer::<(u64, u64)>(&buf),
        Err(BufferError::InvalidArchive { record: 1, offset: 48, .. })
    ));

    let mut buf = clean.clone();
    buf.extend_from_slice(&[0; 5]);
    assert_eq!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::TrailingBytes { offset: 64, trailing: 5 }));
    buf.extend_from_slice(&[0; 11]);
    assert!(matches!(validate_buffer::<(u64, u64)>(&buf), Err(BufferError::InvalidArchive { record: 2, .. })));
}

#[test]
fn short_and_misaligned_buffers_are_refused() {
    let clean = one_buffer(&[7u32]);
    for len in 0..8 {
        assert_eq!(validate_buffer::<u32>(&clean[..len]), Err(BufferError::TooShort { len }));
    }
    let mut shifted = AlignedVec::<16>::new();
    shifted.push(0);
    shifted.extend_from_slice(&clean);
    assert_eq!(validate_buffer::<u32>(&shifted[1..]), Err(BufferError::Misaligned { address_mod_16: 1 }));
}

#[test]
fn another_type_in_the_buffer_is_refused_or_read_safely() {
    let buf = one_buffer(&["not a number at all".to_string()]);
    validate_then_read::<Vec<u64>>(&buf);
    validate_then_read::<(u32, u32)>(&buf);
    // Validation proves memory safety, not the type: eight 0xff bytes are an empty inline
    // string (rkyv pads inline strings with 0xff). Type identity is the handshake's job.
    assert_eq!(read_validated::<String>(&one_buffer(&[(u64::MAX, u64::MAX)])), vec![String::new()]);
    let invalid_utf8 = one_buffer(&[(0u64, 0xc0u64)]);
    assert_eq!(
        validate_buffer::<String>(&invalid_utf8),
        Err(BufferError::InvalidArchive { record: 0, offset: 16, type_name: "alloc::string::String" })
    );
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Tick),
        ".{0,40}".prop_map(Event::Named),
        (any::<u32>(), any::<Option<i64>>()).prop_map(|(key, value)| Event::Pair { key, value }),
        (proptest::collection::vec(any::<u8>(), 0..40), any::<bool>()).prop_map(|(b, f)| Event::Blob(b, f)),
    ]
}

/// Validates `bytes` and, when they are accepted, reads and deserializes every record.
fn validate_then_read<T: Data>(bytes: &[u8]) {
    if let Ok(count) = validate_buffer::<T>(bytes) {
        assert_eq!(read_validated::<T>(bytes).len(), count as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn flipped_bytes_never_panic_and_accepted_buffers_read(
        events in proptest::collection::vec(arb_event(), 1..40),
        pairs in proptest::collection::vec((".{0,20}", any::<u64>()), 1..40),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
    ) {
        let mut buf = one_buffer(&events);
        prop_assert_eq!(validate_buffer::<Event>(&buf), Ok(events.len() as u32));
        let len = buf.len();
        for (at, xor) in &flips {
            buf[at.index(len)] ^= xor;
        }
        validate_then_read::<Event>(&buf);
        validate_then_read::<(String, u64)>(&buf);
        validate_then_read::<Option<String>>(&buf);

        let mut buf = one_buffer(&pairs);
        let len = buf.len();
        for (at, xor) in &flips {
            buf[at.index(len)] ^= xor;
        }
        validate_then_read::<(String, u64)>(&buf);
        validate_then_read::<Event>(&buf);
        validate_then_read::<Vec<u8>>(&buf);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = AlignedVec::<16>::new();
        buf.extend_from_slice(&bytes);
        validate_then_read::<Event>(&buf);
        validate_then_read::<(u64, u64)>(&buf);
        validate_then_read::<String>(&buf);
        validate_then_read::<bool>(&buf);
    }
}
