//! The record codec: rkyv archives written back to back into a 32 KB buffer and read in place.
//!
//! Layout inside a buffer: bytes 0..4 hold the number of records in the buffer (`u32`
//! little-endian), bytes 4..8 are reserved (zero). Then each record is an 8-byte header (`u32`
//! little-endian archive length, `u32` reserved, zero) followed by the archive, whose first byte
//! is 16-byte aligned; a header therefore starts at an offset ≡ 8 (mod 16) and the next header
//! follows the archive rounded up. A record whose archive does not fit the rest of a buffer goes to the next buffer;
//! a record that does not fit an empty buffer (32 KB minus 16 bytes) is refused with
//! [`RecordError::TooLarge`] — records never span buffers.
//!
//! Invariant: a reader sees exactly the records the writer wrote, in order; buffers built by
//! [`RecordWriter`] are read without validation in process (trusted); buffers from other
//! processes are untrusted and pass [`validate_buffer`] (layout and rkyv validation of every
//! archive) before they reach a [`RecordIter`]. Padding bytes before each record header are
//! zeroed, so a reused pool buffer never carries stale bytes to a peer.

use std::marker::PhantomData;

use rkyv::api::low::LowValidator;
use rkyv::api::{deserialize_using, serialize_using};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{Failure, Strategy};
use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use rkyv::ser::allocator::SubAllocator;
use rkyv::ser::writer::Buffer as SliceWriter;
use rkyv::ser::Allocator;
use rkyv::ser::Serializer;
use rkyv::{Archive, Deserialize, Serialize};

use crate::buffer::{BufferBuilder, BUFFER_SIZE};
use crate::error::{BufferError, RecordError};

/// Serializer used for records written into network buffers.
pub type RecordSerializer<'a> = Strategy<Serializer<SliceWriter<'a>, ScratchAlloc<'a>, ()>, Failure>;

/// Scratch space rkyv may use while serializing one record: a fixed area owned by the
/// [`RecordWriter`] that remembers whether it ran out, so that a record needing more scratch
/// is retried with a larger area instead of being taken for a full buffer.
pub struct ScratchAlloc<'a> {
    inner: SubAllocator<'a>,
    exhausted: bool,
}

// SAFETY: every call is forwarded unchanged to `SubAllocator`, whose implementation upholds
// the trait's contract; this wrapper only records failed allocations.
unsafe impl<E: rkyv::rancor::Source> Allocator<E> for ScratchAlloc<'_> {
    unsafe fn push_alloc(&mut self, layout: Layout) -> Result<NonNull<[u8]>, E> {
        // SAFETY: forwarded with the caller's guarantee (`layout` has a non-zero size).
        let result = unsafe { <SubAllocator<'_> as Allocator<E>>::push_alloc(&mut self.inner, layout) };
        if result.is_err() {
            self.exhausted = true;
        }
        result
    }

    unsafe fn pop_alloc(&mut self, ptr: NonNull<u8>, layout: Layout) -> Result<(), E> {
        // SAFETY: forwarded with the caller's guarantees (same layout, LIFO order).
        unsafe { <SubAllocator<'_> as Allocator<E>>::pop_alloc(&mut self.inner, ptr, layout) }
    }
}

const SCRATCH_BYTES_MIN: usize = 4 * 1024;
const SCRATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Serializes `value` into `out`; returns the archive length, or whether scratch ran out.
fn serialize_into<T: Data>(out: &mut [u8], scratch: &mut [MaybeUninit<u8>], value: &T) -> Result<usize, bool> {
    let writer = SliceWriter::from(out);
    let alloc = ScratchAlloc { inner: SubAllocator::new(scratch), exhausted: false };
    let mut serializer = Serializer::new(writer, alloc, ());
    match serialize_using::<_, Failure>(value, &mut serializer) {
        Ok(_) => Ok(rkyv::ser::Positional::pos(&serializer.writer)),
        Err(_) => Err(serializer.allocator.exhausted),
    }
}
/// Deserializer used when an operator asks for an owned record.
pub type RecordDeserializer = Strategy<(), Failure>;

/// A record type that can cross an exchange: archived with rkyv into a buffer, read in place,
/// and deserialized into an owned value where a user function asks for one. Derive it with
/// `#[derive(Archive, Serialize, Deserialize)]` from the re-exported `rkyv` plus
/// `#[rkyv(crate = corestream::rkyv)]` (or `crate = corestream_netstack::rkyv`), so that the
/// derive finds rkyv without a dependency of the application's own. Shared pointers (`Rc`,
/// `Arc`) are not supported inside records. The archived type must be checkable by rkyv's
/// validator ([`RecordValidator`]), which `#[derive(Archive)]` provides with rkyv's `bytecheck`
/// feature, so that buffers from other processes can be validated before they are read in place.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a corestream record (it does not implement `Data`)",
    label = "not a record",
    note = "derive rkyv's traits for it: `#[derive(Archive, Serialize, Deserialize)]` with `use corestream::rkyv::{{Archive, Deserialize, Serialize}};` and `#[rkyv(crate = corestream::rkyv)]` on the type (records hold no `Rc`/`Arc`)"
)]
pub trait Data:
    Sized
    + Archive<Archived: Deserialize<Self, RecordDeserializer> + for<'v> CheckBytes<RecordValidator<'v>>>
    + for<'a> Serialize<RecordSerializer<'a>>
    + Send
    + 'static
{
}

impl<T> Data for T where
    T: Archive<Archived: Deserialize<T, RecordDeserializer> + for<'v> CheckBytes<RecordValidator<'v>>>
        + for<'a> Serialize<RecordSerializer<'a>>
        + Send
        + 'static
{
}

/// Validator that checks archives received from other processes: rkyv's low-level validator
/// (bounds, alignment, UTF-8, enum tags, `bool`s; no shared-pointer registry, since records hold
/// no `Rc`/`Arc`).
pub type RecordValidator<'a> = LowValidator<'a, Failure>;

const HEADER_BYTES: usize = 8;
const RECORD_ALIGN: usize = 16;
/// Largest archive that fits an empty buffer.
pub const MAX_RECORD_BYTES: usize = BUFFER_SIZE - RECORD_ALIGN;

fn header_offset(len: usize) -> usize {
    // Next offset ≡ 8 (mod 16) at or after `len`.
    let aligned = (len + HEADER_BYTES).next_multiple_of(RECORD_ALIGN);
    aligned - HEADER_BYTES
}

/// Outcome of writing one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The record is in the buffer.
    Done,
    /// The buffer is too full; finish it and write the record into a fresh one.
    BufferFull,
}

/// Writes records into buffers. Holds the scratch area rkyv needs, reused across records and
/// grown (up to 64 MiB) only when a record needs more.
pub struct RecordWriter {
    scratch: Vec<MaybeUninit<u8>>,
}

impl Default for RecordWriter {
    fn default() -> Self {
        Self { scratch: vec![MaybeUninit::uninit(); SCRATCH_BYTES_MIN] }
    }
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter").field("scratch_bytes", &self.scratch.len()).finish()
    }
}

impl RecordWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Grows the scratch area; false when it is already at its limit.
    #[cold]
    fn grow_scratch(&mut self) -> bool {
        if self.scratch.len() >= SCRATCH_BYTES_MAX {
            return false;
        }
        let len = (self.scratch.len() * 4).min(SCRATCH_BYTES_MAX);
        self.scratch.resize(len, MaybeUninit::uninit());
        true
    }

    /// Appends `value` to `buf`, or reports that it does not fit what is left of it.
    #[inline]
    pub fn write<T: Data>(&mut self, buf: &mut BufferBuilder, value: &T) -> Result<Written, RecordError> {
        let len = buf.len();
        match self.write_at(buf.whole_mut(), len, value)? {
            Some(end) => {
                buf.set_len(end);
                Ok(Written::Done)
            }
            None => Ok(Written::BufferFull),
        }
    }

    /// Appends `value` to a buffer of memory outside the pool (a copy of records kept for a
    /// checkpoint), in the same layout: `whole` is the whole buffer (`BUFFER_SIZE` bytes) and
    /// `len` its written part, advanced when the record is written.
    pub fn write_unpooled<T: Data>(
        &mut self,
        whole: &mut [u8],
        len: &mut usize,
        value: &T,
    ) -> Result<Written, RecordError> {
        assert_eq!(whole.len(), BUFFER_SIZE, "an unpooled buffer has the size of a network buffer");
        match self.write_at(whole, *len, value)? {
            Some(end) => {
                *len = end;
                Ok(Written::Done)
            }
            None => Ok(Written::BufferFull),
        }
    }

    /// Writes `value` into `whole` (a whole buffer) after its first `len` bytes; returns the new
    /// length, or `None` when the record does not fit what is left.
    #[inline]
    fn write_at<T: Data>(&mut self, whole: &mut [u8], len: usize, value: &T) -> Result<Option<usize>, RecordError> {
        let header = header_offset(len);
        let start = header + HEADER_BYTES;
        if start + std::mem::size_of::<T::Archived>() > BUFFER_SIZE {
            return self.full_or_too_large(len, value);
        }
        // Zero the padding `len..header` (at most 15 bytes; before the first record, the
        // reserved word too) with one fixed 16-byte store instead of a variable-length fill;
        // what it writes past `header` is overwritten by the header and the archive below.
        match whole.get_mut(len..len + RECORD_ALIGN) {
            Some(block) => block.copy_from_slice(&[0; RECORD_ALIGN]),
            None => whole[len..header].fill(0),
        }
        let archive_len = loop {
            match serialize_into(&mut whole[start..], &mut self.scratch, value) {
                Ok(len) => break len,
                Err(true) if self.grow_scratch() => continue,
                Err(_) => return self.full_or_too_large(len, value),
            }
        };
        let count = if len == 0 { 1 } else { read_u32(whole, 0) + 1 };
        whole[0..4].copy_from_slice(&count.to_le_bytes());
        // Length (u32) and reserved zero word in one 8-byte little-endian store.
        whole[header..start].copy_from_slice(&(archive_len as u32 as u64).to_le_bytes());
        Ok(Some(start + archive_len))
    }

    #[cold]
    fn full_or_too_large<T: Data>(&mut self, len: usize, value: &T) -> Result<Option<usize>, RecordError> {
        if len > 0 {
            return Ok(None);
        }
        // An empty buffer could not hold it: measure the archive for the error message.
        let mut out = vec![0u8; MAX_RECORD_BYTES * 2];
        loop {
            match serialize_into(&mut out, &mut self.scratch, value) {
                Ok(size_bytes) => return Err(RecordError::TooLarge { size_bytes, max_bytes: MAX_RECORD_BYTES }),
                Err(true) if self.grow_scratch() => {}
                Err(_) if out.len() < 1 << 30 => out.resize(out.len() * 4, 0),
                Err(_) => {
                    return Err(RecordError::Serialize {
                        reason: "archive larger than 1 GiB or needing more than 64 MiB of scratch space".into(),
                    })
                }
            }
        }
    }
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Number of records in a buffer written by [`RecordWriter`] (one load, no walk).
#[inline]
pub fn record_count(bytes: &[u8]) -> usize {
    if bytes.len() < HEADER_BYTES {
        0
    } else {
        read_u32(bytes, 0) as usize
    }
}

/// Iterates the archived records of one buffer in place.
pub struct RecordIter<'a, T: Data> {
    bytes: &'a [u8],
    offset: usize,
    _type: PhantomData<fn() -> T>,
}

impl<T: Data> std::fmt::Debug for RecordIter<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordIter").field("offset", &self.offset).field("len", &self.bytes.len()).finish()
    }
}

impl<'a, T: Data> RecordIter<'a, T> {
    /// Reads records written by a [`RecordWriter`] of the same type `T`. Nothing is validated
    /// here, so the in-process path pays nothing per record beyond the header walk.
    ///
    /// # Safety
    ///
    /// `bytes` must be the written part of a buffer filled by [`RecordWriter::write`] with
    /// records of type `T` in this process, or bytes from elsewhere (another process, a file)
    /// that [`validate_buffer::<T>`] accepted. Record lengths are bounds-checked (a header
    /// pointing past the end panics, which only a broken writer causes), but the archives
    /// themselves are read without validation. `bytes` must start at a 16-byte aligned address
    /// (checked).
    pub unsafe fn new(bytes: &'a [u8]) -> Self {
        assert_eq!(bytes.as_ptr() as usize % RECORD_ALIGN, 0, "record buffer must be 16-byte aligned");
        Self { bytes, offset: 0, _type: PhantomData }
    }
}

impl<'a, T: Data> Iterator for RecordIter<'a, T> {
    type Item = &'a T::Archived;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let header = header_offset(self.offset);
        if header >= self.bytes.len() {
            return None;
        }
        let start = header + HEADER_BYTES;
        let end = start + read_u32(self.bytes, header) as usize;
        assert!(end <= self.bytes.len(), "record header points past the end of its buffer");
        self.offset = end;
        let archive = &self.bytes[start..end];
        // SAFETY: the archive was produced by `RecordWriter::write` for the same `T` (the
        // contract of `RecordIter::new`), starts 16-byte aligned (buffer alignment + header
        // placement), and lies entirely inside the buffer (checked above).
        Some(unsafe { rkyv::access_unchecked::<T::Archived>(archive) })
    }
}

/// Checks a buffer received from an untrusted source (another process) before any archive in
/// it is read in place, and returns its record count. The walk follows the layout described in
/// the module documentation and never panics or reads out of bounds: the count word, the
/// reserved words, every header and archive length against the end of the buffer, no stray
/// bytes after the last record, the count against the records found; then each archive is
/// checked with rkyv's validator ([`RecordValidator`]) within its own bytes, so a relative
/// pointer can never reach into another record or past the buffer. After `Ok`, the bytes may be
/// read with [`RecordIter`] and every record deserialized with [`deserialize`].
///
/// A buffer that does not start 16-byte aligned is refused ([`BufferError::Misaligned`]);
/// pool buffers always are.
///
/// The low-level validator (`rkyv::api::low::access::<T::Archived, Failure>`) is used rather
/// than `rkyv::access` (the high-level validator with `rancor::Error`). Both cost the same on
/// record archives (measured below, within 4 %), but records hold no shared pointers, so the
/// high validator's shared-pointer registry is never needed, and `Failure` builds no error
/// value, so a peer flooding invalid buffers causes no allocation per error;
/// [`BufferError::InvalidArchive`] names the record, offset and type instead.
///
/// Cost per full 32 KB buffer (criterion on the 2-core development VM, `cargo bench -p
/// corestream-bench --bench micro -- "validate buffer"`): 1024 `(u64, u64)` records 3.9 µs
/// (3.8 ns per record; the rkyv checks alone are 1.1 µs with either validator, the rest is the
/// header walk, a dependent load per record as in [`RecordIter`]); 682 `(String, u64)` records
/// with 19-byte strings 5.2 µs (7.7 ns per record, mostly the string's pointer and UTF-8
/// checks, which hide the walk).
pub fn validate_buffer<T: Data>(bytes: &[u8]) -> Result<u32, BufferError> {
    let len = bytes.len();
    if len < HEADER_BYTES {
        return Err(BufferError::TooShort { len });
    }
    let address_mod_16 = bytes.as_ptr() as usize % RECORD_ALIGN;
    if address_mod_16 != 0 {
        return Err(BufferError::Misaligned { address_mod_16 });
    }
    let declared = read_u32(bytes, 0);
    if declared == 0 {
        return Err(BufferError::Empty);
    }
    if read_u32(bytes, 4) != 0 {
        return Err(BufferError::ReservedNotZero { offset: 4 });
    }
    let mut found = 0u32;
    let mut offset = HEADER_BYTES;
    loop {
        let header = header_offset(offset);
        if header >= len {
            break;
        }
        let start = header + HEADER_BYTES;
        if start > len {
            return Err(BufferError::RecordPastEnd { record: found, end: start, len });
        }
        if read_u32(bytes, header + 4) != 0 {
            return Err(BufferError::ReservedNotZero { offset: header + 4 });
        }
        let end = start.saturating_add(read_u32(bytes, header) as usize);
        if end > len {
            return Err(BufferError::RecordPastEnd { record: found, end, len });
        }
        if rkyv::api::low::access::<T::Archived, Failure>(&bytes[start..end]).is_err() {
            return Err(BufferError::InvalidArchive {
                record: found,
                offset: start,
                type_name: std::any::type_name::<T>(),
            });
        }
        found = found.saturating_add(1);
        offset = end;
    }
    if offset < len {
        return Err(BufferError::TrailingBytes { offset, trailing: len - offset });
    }
    if found != declared {
        return Err(BufferError::CountMismatch { declared, found });
    }
    Ok(found)
}

/// A type-erased [`validate_buffer`] for one record type: what a remote input channel keeps to
/// check the buffers it receives.
pub type BufferValidator = fn(&[u8]) -> Result<u32, BufferError>;

/// Deserializes an archived record into an owned value.
#[inline]
pub fn deserialize<T: Data>(archived: &T::Archived) -> T {
    match deserialize_using::<T, _, Failure>(archived, &mut ()) {
        Ok(value) => value,
        Err(_) => panic!("record failed to deserialize (corrupt archive in a trusted buffer)"),
    }
}

/// Output size `to_bytes` starts with; it doubles while the archive does not fit.
const TO_BYTES_MIN: usize = 256;
/// Largest archive `to_bytes` produces.
const TO_BYTES_MAX: usize = 1 << 30;

/// Serializes one value into a standalone archive (root at the end, as rkyv lays it out), with
/// the serializer and scratch area [`RecordWriter`] uses. The output grows until the archive
/// fits, up to 1 GiB. Read it back with [`from_bytes`].
pub fn to_bytes<T: Data>(value: &T) -> Result<Vec<u8>, RecordError> {
    to_bytes_sized(value, 0)
}

/// As [`to_bytes`], starting from an output of `expected` bytes: the serializer writes into a
/// fixed area and starts over in a twice larger one when the archive does not fit, so a large
/// value whose size is known roughly is serialized once instead of about log2(size) times.
pub fn to_bytes_sized<T: Data>(value: &T, expected: usize) -> Result<Vec<u8>, RecordError> {
    let mut scratch = vec![MaybeUninit::uninit(); SCRATCH_BYTES_MIN];
    let first = expected.min(TO_BYTES_MAX).max(2 * std::mem::size_of::<T::Archived>()).max(TO_BYTES_MIN);
    let mut out = vec![0u8; first];
    loop {
        match serialize_into(&mut out, &mut scratch, value) {
            Ok(len) => {
                out.truncate(len);
                return Ok(out);
            }
            Err(true) if scratch.len() < SCRATCH_BYTES_MAX => {
                let len = (scratch.len() * 4).min(SCRATCH_BYTES_MAX);
                scratch.resize(len, MaybeUninit::uninit());
            }
            Err(_) if out.len() < TO_BYTES_MAX => out.resize((out.len() * 2).min(TO_BYTES_MAX), 0),
            Err(_) => {
                return Err(RecordError::Serialize {
                    reason: "archive larger than 1 GiB or needing more than 64 MiB of scratch space".into(),
                })
            }
        }
    }
}

/// Deserializes a value from an archive written by [`to_bytes`]. The archive is read without
/// validation. Archives must start 16-byte aligned; an unaligned slice (a plain `Vec<u8>`
/// guarantees no alignment) is first copied into an [`rkyv::util::AlignedVec`].
///
/// # Safety
///
/// `bytes` must be exactly the output of `to_bytes::<T>` for the same `T`, produced by this
/// build or kept in a trusted place since (or validated before): a corrupt or foreign archive
/// is undefined behaviour.
pub unsafe fn from_bytes<T: Data>(bytes: &[u8]) -> T {
    if (bytes.as_ptr() as usize) & (RECORD_ALIGN - 1) != 0 {
        let mut aligned = rkyv::util::AlignedVec::<RECORD_ALIGN>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        // SAFETY: the same archive (the caller's guarantee), now at a 16-byte aligned address.
        return unsafe { from_bytes::<T>(&aligned) };
    }
    assert!(bytes.len() >= std::mem::size_of::<T::Archived>(), "archive shorter than its root");
    // SAFETY: `bytes` is an archive of `T` written by `to_bytes` (the caller's guarantee), so its
    // root lies at the end; it starts 16-byte aligned (checked above) and is long enough for the root.
    let archived = unsafe { rkyv::access_unchecked::<T::Archived>(bytes) };
    deserialize::<T>(archived)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::BufferPool;

    fn write_all<T: Data>(pool: &BufferPool, records: &[T]) -> Vec<crate::Buffer> {
        let mut writer = RecordWriter::new();
        let mut out = Vec::new();
        let mut buf = pool.take().unwrap();
        for r in records {
            loop {
                match writer.write(&mut buf, r).unwrap() {
                    Written::Done => break,
                    Written::BufferFull => {
                        let full = std::mem::replace(&mut buf, pool.take().unwrap());
                        out.push(full.freeze());
                    }
                }
            }
        }
        out.push(buf.freeze());
        out
    }

    fn iter<T: Data>(b: &crate::Buffer) -> RecordIter<'_, T> {
        // SAFETY: every buffer in these tests was filled by `RecordWriter::write` with `T`s.
        unsafe { RecordIter::new(b.as_slice()) }
    }

    fn read_all<T: Data>(bufs: &[crate::Buffer]) -> Vec<T> {
        bufs.iter().flat_map(|b| iter::<T>(b).map(deserialize::<T>)).collect()
    }

    #[test]
    fn pairs_round_trip_across_buffers() {
        let pool = BufferPool::new(64);
        let records: Vec<(u64, u64)> = (0..5000).map(|i| (i, i * 3)).collect();
        let bufs = write_all(&pool, &records);
        assert!(bufs.len() > 1, "5000 pairs need more than one buffer");
        assert_eq!(read_all::<(u64, u64)>(&bufs), records);
        // 8-byte header + 16-byte archive, padded to 32 bytes: exactly 1024 pairs per buffer.
        assert_eq!(bufs[0].len(), BUFFER_SIZE);
        assert_eq!(iter::<(u64, u64)>(&bufs[0]).count(), 1024);
        let counted: usize = bufs.iter().map(|b| record_count(b.as_slice())).sum();
        assert_eq!(counted, 5000, "the count in each buffer's first word matches its records");
    }

    #[test]
    fn strings_round_trip_in_place() {
        let pool = BufferPool::new(8);
        let records = vec!["a".to_string(), String::new(), "ünïcödé words".repeat(30)];
        let bufs = write_all(&pool, &records);
        let archived: Vec<&str> = iter::<String>(&bufs[0]).map(|a| a.as_str()).collect();
        assert_eq!(archived, records.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn oversized_record_is_refused_with_its_size() {
        let pool = BufferPool::new(2);
        let mut writer = RecordWriter::new();
        let mut buf = pool.take().unwrap();
        let big = vec![7u8; 40_000];
        let err = writer.write(&mut buf, &big).unwrap_err();
        match err {
            RecordError::TooLarge { size_bytes, max_bytes } => {
                assert!(size_bytes >= 40_000);
                assert_eq!(max_bytes, MAX_RECORD_BYTES);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(buf.is_empty(), "a refused record leaves the buffer untouched");
    }

    #[test]
    fn records_needing_more_scratch_than_the_default_are_written() {
        let pool = BufferPool::new(4);
        let mut writer = RecordWriter::new();
        // rkyv keeps one resolver per string in scratch while it serializes the vector.
        let value: Vec<String> = (0..1500).map(|i| format!("s{i}")).collect();
        let mut buf = pool.take().unwrap();
        assert_eq!(writer.write(&mut buf, &value).unwrap(), Written::Done);
        assert!(writer.scratch.len() > SCRATCH_BYTES_MIN, "the scratch area grew");
        let frozen = buf.freeze();
        assert_eq!(read_all::<Vec<String>>(std::slice::from_ref(&frozen)), vec![value]);
    }

    #[test]
    fn largest_record_fits_an_empty_buffer() {
        let pool = BufferPool::new(2);
        let mut writer = RecordWriter::new();
        let mut buf = pool.take().unwrap();
        // Vec<u8> archive: 8-byte relative pointer + len, then the bytes.
        let value = vec![1u8; MAX_RECORD_BYTES - 16];
        assert_eq!(writer.write(&mut buf, &value).unwrap(), Written::Done);
        let frozen = buf.freeze();
        let back: Vec<Vec<u8>> = read_all(std::slice::from_ref(&frozen));
        assert_eq!(back, vec![value]);
    }

    #[test]
    fn padding_before_headers_is_zeroed_in_a_reused_buffer() {
        let pool = BufferPool::new(1);
        let mut buf = pool.take().unwrap();
        buf.whole_mut().fill(0xa5);
        let mut writer = RecordWriter::new();
        let records: Vec<(String, u8)> = (0..200).map(|i| ("x".repeat(i % 23), (i % 100) as u8)).collect();
        for r in &records {
            assert_eq!(writer.write(&mut buf, r).unwrap(), Written::Done);
        }
        let bytes = buf.as_slice();
        let mut offset = HEADER_BYTES;
        while offset < bytes.len() {
            let header = header_offset(offset);
            assert!(bytes[offset..header].iter().all(|&b| b == 0), "stale padding before the header at {header}");
            assert_eq!(read_u32(bytes, header + 4), 0);
            offset = header + HEADER_BYTES + read_u32(bytes, header) as usize;
        }
        assert_eq!(read_u32(bytes, 4), 0);
        assert!(!bytes.contains(&0xa5), "no stale byte anywhere in the written part, archives included");
        assert_eq!(validate_buffer::<(String, u8)>(bytes), Ok(200));
    }

    #[test]
    fn padding_is_zeroed_at_the_very_end_of_a_buffer() {
        let pool = BufferPool::new(1);
        let mut buf = pool.take().unwrap();
        buf.whole_mut().fill(0xa5);
        let mut writer = RecordWriter::new();
        // 16 + (BUFFER_SIZE - 36) data bytes + 8-byte root: the archive ends 12 bytes short of
        // the end, so a zero-sized record's header takes the last 8 bytes after 4 of padding.
        assert_eq!(writer.write(&mut buf, &vec![1u8; BUFFER_SIZE - 36]).unwrap(), Written::Done);
        assert_eq!(buf.len(), BUFFER_SIZE - 12);
        assert_eq!(writer.write(&mut buf, &()).unwrap(), Written::Done);
        assert_eq!(buf.len(), BUFFER_SIZE);
        assert_eq!(&buf.as_slice()[BUFFER_SIZE - 12..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn standalone_archives_round_trip() {
        let value: Vec<(u64, String, Option<i64>)> =
            (0..3000).map(|i| (i, format!("k{i}"), (i % 3 == 0).then_some(-(i as i64)))).collect();
        let bytes = to_bytes(&value).unwrap();
        // SAFETY: `bytes` was written by `to_bytes` for this type just above.
        let back: Vec<(u64, String, Option<i64>)> = unsafe { from_bytes(&bytes) };
        assert_eq!(back, value);
        // Misaligned copy of the same archive: read through an aligned copy.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        // SAFETY: the same archive, only moved to an odd address.
        let back: Vec<(u64, String, Option<i64>)> = unsafe { from_bytes(&shifted[1..]) };
        assert_eq!(back, value);
        // SAFETY: written by `to_bytes::<u32>` just here.
        assert_eq!(unsafe { from_bytes::<u32>(&to_bytes(&7u32).unwrap()) }, 7);
        // SAFETY: written by `to_bytes::<()>` just here.
        unsafe { from_bytes::<()>(&to_bytes(&()).unwrap()) };
    }
}
