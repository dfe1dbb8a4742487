//! How snapshot contents become bytes and back: rkyv archives made by
//! [`corestream_netstack::record::to_bytes`], each with the name of the type it holds and an
//! xxh3 checksum. Reading never trusts the bytes: the type name must match the reader's (best
//! effort: `std::any::type_name` is not guaranteed unique), the checksum must match the bytes,
//! and the archive is validated with rkyv's bytecheck (the validator records from other
//! processes go through) before anything is read, so a damaged or foreign archive is a
//! [`StateError`], never undefined behaviour or a panic.

use corestream_netstack::record::to_bytes_sized;
use corestream_netstack::Data;
use rkyv::rancor::Failure;
use rkyv::util::AlignedVec;

use crate::error::StateError;

/// An archive of one `T` with its type name and checksum.
pub(crate) struct Encoded {
    pub value_type: String,
    pub checksum: u64,
    pub bytes: Vec<u8>,
}

/// Checksum of snapshot bytes.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The type name recorded with archives of `T`.
pub(crate) fn value_type<T>() -> &'static str {
    std::any::type_name::<T>()
}

pub(crate) fn encode<T: Data>(value: &T, what: impl FnOnce() -> String) -> Result<Encoded, StateError> {
    encode_sized(value, 0, what)
}

/// As [`encode`], for an archive of about `expected` bytes (see `to_bytes_sized`).
pub(crate) fn encode_sized<T: Data>(
    value: &T,
    expected: usize,
    what: impl FnOnce() -> String,
) -> Result<Encoded, StateError> {
    let bytes = to_bytes_sized(value, expected)
        .map_err(|e| StateError::Serialization { what: what(), reason: e.to_string() })?;
    Ok(Encoded { value_type: value_type::<T>().to_owned(), checksum: checksum(&bytes), bytes })
}

/// Checks an archive's type name and checksum, then validates and reads it.
pub(crate) fn decode<T: Data>(
    value_type_found: &str,
    checksum_found: u64,
    bytes: &[u8],
    what: impl Fn() -> String,
    key_group: u32,
) -> Result<T, StateError> {
    let expected = value_type::<T>();
    if value_type_found != expected {
        return Err(StateError::Corrupt {
            what: what(),
            key_group,
            reason: format!("it holds {value_type_found}, expected {expected}"),
        });
    }
    if checksum(bytes) != checksum_found {
        return Err(StateError::Corrupt { what: what(), key_group, reason: "checksum mismatch".into() });
    }
    read_validated::<T>(bytes).map_err(|reason| StateError::Corrupt { what: what(), key_group, reason })
}

/// Validates an archive of `T` made by `to_bytes` (copied to a 16-byte aligned buffer first when
/// it is not aligned) and deserializes it; the error says what was wrong.
pub(crate) fn read_validated<T: Data>(bytes: &[u8]) -> Result<T, String> {
    const ALIGN: usize = 16;
    if !bytes.is_empty() && (bytes.as_ptr() as usize) & (ALIGN - 1) != 0 {
        let mut aligned = AlignedVec::<ALIGN>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        return read_validated::<T>(&aligned);
    }
    let archived = rkyv::api::low::access::<T::Archived, Failure>(bytes)
        .map_err(|_| format!("the bytes are not a valid archive of {}", value_type::<T>()))?;
    rkyv::api::deserialize_using::<T, _, Failure>(archived, &mut ())
        .map_err(|_| format!("the archive of {} could not be deserialized", value_type::<T>()))
}

/// Framing of one standalone snapshot part (an operator's keyed state, its timers, an operator
/// state): a 24-byte header, then the rkyv archive of the value.
///
/// | bytes | contents |
/// |---|---|
/// | 0..4 | magic `CSST` |
/// | 4..8 | format version (little-endian `u32`, 1) |
/// | 8..16 | xxh3 of the type name of the archived value (little-endian `u64`) |
/// | 16..24 | xxh3 of bytes 24.. (little-endian `u64`) |
/// | 24.. | `to_bytes` of the value |
///
/// The checksum makes any damage to the part an error (validation alone accepts a flipped bit
/// inside a valid string or number); the type hash refuses a part of another type.
pub mod part {
    use super::*;

    const MAGIC: [u8; 4] = *b"CSST";
    const VERSION: u32 = 1;
    const HEADER_BYTES: usize = 24;

    fn type_hash<T>() -> u64 {
        checksum(value_type::<T>().as_bytes())
    }

    fn read_u32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    fn read_u64(bytes: &[u8], at: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    }

    /// A value's archive size, roughly, known before serializing it.
    pub trait SizeHint {
        fn archive_size_hint(&self) -> usize;
    }

    /// The framed archive of `value`.
    pub fn encode<T: Data>(value: &T) -> Result<Vec<u8>, StateError> {
        encode_sized(value, 0)
    }

    /// As [`encode`], for an archive of about `expected` bytes.
    pub fn encode_sized<T: Data>(value: &T, expected: usize) -> Result<Vec<u8>, StateError> {
        let archive = to_bytes_sized(value, expected)
            .map_err(|e| StateError::Serialization { what: value_type::<T>().to_owned(), reason: e.to_string() })?;
        let mut bytes = Vec::with_capacity(HEADER_BYTES + archive.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&type_hash::<T>().to_le_bytes());
        bytes.extend_from_slice(&checksum(&archive).to_le_bytes());
        bytes.extend_from_slice(&archive);
        Ok(bytes)
    }

    /// Reads a bare archive of `T` made by `corestream_netstack::record::to_bytes` (an element
    /// inside a framed part, which the part's checksum already covers), validating it first.
    pub fn decode_archive<T: Data>(bytes: &[u8]) -> Result<T, StateError> {
        read_validated::<T>(bytes)
            .map_err(|reason| StateError::InvalidPart { type_name: value_type::<T>().to_owned(), reason })
    }

    /// Checks the framing of `bytes` (magic, version, type, checksum), validates the archive and
    /// reads it.
    pub fn decode<T: Data>(bytes: &[u8]) -> Result<T, StateError> {
        let invalid = |reason: String| StateError::InvalidPart { type_name: value_type::<T>().to_owned(), reason };
        if bytes.len() < HEADER_BYTES {
            return Err(invalid(format!("{} bytes, shorter than the {HEADER_BYTES}-byte header", bytes.len())));
        }
        if bytes[..4] != MAGIC {
            return Err(invalid("it does not start with the magic bytes CSST".into()));
        }
        let version = read_u32(bytes, 4);
        if version != VERSION {
            return Err(invalid(format!("format version {version}, this build reads version {VERSION}")));
        }
        if read_u64(bytes, 8) != type_hash::<T>() {
            return Err(invalid("it holds a value of another type".into()));
        }
        let archive = &bytes[HEADER_BYTES..];
        if checksum(archive) != read_u64(bytes, 16) {
            return Err(invalid("checksum mismatch".into()));
        }
        read_validated::<T>(archive).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_refuse_every_damage() {
        let value: Vec<(u64, String)> = (0..20).map(|i| (i, format!("value {i}"))).collect();
        let bytes = part::encode(&value).unwrap();
        assert_eq!(part::decode::<Vec<(u64, String)>>(&bytes).unwrap(), value);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(part::decode::<Vec<(u64, String)>>(&damaged).is_err(), "byte {at} flipped");
        }
        for len in 0..bytes.len() {
            assert!(part::decode::<Vec<(u64, String)>>(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let err = part::decode::<Vec<u32>>(&bytes).unwrap_err();
        assert!(err.to_string().contains("another type"), "{err}");
    }

    #[test]
    fn decode_validates_archives_with_a_matching_checksum() {
        let encoded = encode(&vec![String::from("abc"); 4], || "test".into()).unwrap();
        let mut bytes = encoded.bytes.clone();
        // A relative pointer pointing far outside the archive, with the checksum updated: only
        // validation stands between this and an out-of-bounds read.
        let len = bytes.len();
        bytes[len - 8..len - 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        let sum = checksum(&bytes);
        let got = decode::<Vec<String>>(&encoded.value_type, sum, &bytes, || "test".into(), 3);
        assert!(matches!(got, Err(StateError::Corrupt { key_group: 3, .. })), "{got:?}");
    }
}
