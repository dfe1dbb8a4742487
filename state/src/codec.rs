//! How snapshot contents become bytes and back: rkyv archives made by
//! [`corestream_netstack::record::to_bytes`], each with the name of the type it holds and an
//! xxh3 checksum. Reading trusts the archive (no validation), so the two checks here are what
//! stands between a restore and a foreign or damaged archive: the type name must match the
//! reader's (best effort: `std::any::type_name` is not guaranteed unique) and the checksum must
//! match the bytes.

use corestream_netstack::record::{from_bytes, to_bytes};
use corestream_netstack::Data;

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
    let bytes = to_bytes(value).map_err(|e| StateError::Serialization { what: what(), reason: e.to_string() })?;
    Ok(Encoded { value_type: value_type::<T>().to_owned(), checksum: checksum(&bytes), bytes })
}

/// Checks an archive's type name and checksum, then reads it.
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
    // SAFETY: the bytes carry the type name of `T` and the checksum recorded when `encode::<T>`
    // (that is, `to_bytes::<T>`) wrote them; snapshots are trusted beyond these two checks (the
    // contract of `KeyedStateBackend::restore` and `TimerService::restore`).
    Ok(unsafe { from_bytes::<T>(bytes) })
}
