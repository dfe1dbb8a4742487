//! How an operator's state becomes named parts of a checkpoint ([`OperatorStateParts`]) and
//! back. Every part's bytes are framed by [`corestream_state::part`] (magic, version, type,
//! checksum, then an rkyv archive) and validated before they are read, so a damaged part is a
//! [`PartError`] naming it, never a panic. A part name may occur more than once after a rescale
//! (key-group parts of several old subtasks); readers take every occurrence.

use corestream_netstack::Data;
use corestream_state::{part, StateError};

use crate::checkpoint::{OperatorStateParts, PartLayout, PendingParts};

/// A state part that could not be written or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("state part '{part}': {cause}")]
    State { part: String, cause: StateError },
    #[error("state part '{part}' has layout {found:?}, expected {expected:?}; the checkpoint belongs to another job")]
    Layout { part: String, found: PartLayout, expected: PartLayout },
    #[error("state part '{part}' occurs {count} times, expected at most once")]
    Repeated { part: String, count: usize },
}

impl PartError {
    pub(crate) fn state(part: &str, cause: StateError) -> Self {
        PartError::State { part: part.to_owned(), cause }
    }
}

/// Adds the framed archive of `value` as part `name`.
pub(crate) fn put<T: Data>(
    into: &mut PendingParts,
    name: &str,
    layout: PartLayout,
    value: &T,
) -> Result<(), PartError> {
    let bytes = part::encode(value).map_err(|e| PartError::state(name, e))?;
    into.push(name, layout, bytes);
    Ok(())
}

/// Adds part `name`, the framed archive of what `make` returns, made off the task's thread
/// (from a frozen copy `make` owns); an error names the part.
pub(crate) fn put_deferred<T: Data + part::SizeHint>(
    into: &mut PendingParts,
    name: &'static str,
    layout: PartLayout,
    make: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) {
    let encode = move |_: &mut crate::checkpoint::pending::PartFiles<'_>| {
        make()
            .and_then(|value| part::encode_sized(&value, value.archive_size_hint()))
            .map_err(|e| PartError::state(name, e).to_string())
    };
    into.push_deferred(name, layout, Box::new(encode));
}

/// Adds part `name` holding an incremental snapshot of an LSM backend: off the task's thread,
/// `frozen` uploads its new files to the checkpoint storage's shared area, and the files the
/// snapshot uses are recorded for the task's acknowledgement.
pub(crate) fn put_files(into: &mut PendingParts, name: &'static str, frozen: corestream_state::lsm::FrozenFiles) {
    let encode = move |files: &mut crate::checkpoint::pending::PartFiles<'_>| {
        let snapshot = frozen.upload(files.store).map_err(|e| PartError::state(name, e).to_string())?;
        files.used.extend(snapshot.shared_files());
        part::encode_sized(&snapshot, part::SizeHint::archive_size_hint(&snapshot))
            .map_err(|e| PartError::state(name, e).to_string())
    };
    into.push_deferred(name, PartLayout::KeyGroups, Box::new(encode));
}

/// Every occurrence of part `name` with layout `layout`, read back.
pub(crate) fn get_all<T: Data>(from: &OperatorStateParts, name: &str, layout: PartLayout) -> Result<Vec<T>, PartError> {
    from.parts
        .iter()
        .filter(|p| p.name == name)
        .map(|p| {
            if p.layout != layout {
                return Err(PartError::Layout { part: name.to_owned(), found: p.layout, expected: layout });
            }
            part::decode::<T>(&p.bytes).map_err(|e| PartError::state(name, e))
        })
        .collect()
}

/// Part `name` (at most one occurrence), read back.
pub(crate) fn get_one<T: Data>(
    from: &OperatorStateParts,
    name: &str,
    layout: PartLayout,
) -> Result<Option<T>, PartError> {
    let mut all = get_all::<T>(from, name, layout)?;
    match all.len() {
        0 | 1 => Ok(all.pop()),
        count => Err(PartError::Repeated { part: name.to_owned(), count }),
    }
}

/// Adds the event times `watermarks` as operator list part `name` (one element per value, so
/// a rescale deals them like any list state).
pub(crate) fn put_watermarks(into: &mut PendingParts, name: &str, watermarks: &[i64]) -> Result<(), PartError> {
    let elements =
        watermarks.iter().map(corestream_netstack::record::to_bytes).collect::<Result<Vec<_>, _>>().map_err(|e| {
            PartError::state(name, StateError::Serialization { what: "i64".into(), reason: e.to_string() })
        })?;
    let list = crate::operators::operator_state::ListStateBytes { value_type: "i64".into(), elements };
    into.push(name, PartLayout::OperatorList, list.encode(name)?);
    Ok(())
}

/// The lowest event time of every part `name` [`put_watermarks`] wrote, if there is any.
pub(crate) fn get_min_watermark(from: &OperatorStateParts, name: &str) -> Result<Option<i64>, PartError> {
    let mut min = None;
    for p in from.parts.iter().filter(|p| p.name == name) {
        if p.layout != PartLayout::OperatorList {
            return Err(PartError::Layout {
                part: name.to_owned(),
                found: p.layout,
                expected: PartLayout::OperatorList,
            });
        }
        let list = crate::operators::operator_state::ListStateBytes::decode(name, &p.bytes)?;
        for e in &list.elements {
            let w = part::decode_archive::<i64>(e).map_err(|e| PartError::state(name, e))?;
            min = Some(min.map_or(w, |m: i64| m.min(w)));
        }
    }
    Ok(min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_damage_names_the_part() {
        let mut parts = PendingParts::default();
        put(&mut parts, "numbers", PartLayout::Subtask, &vec![1u64, 2, 3]).unwrap();
        assert_eq!(get_one::<Vec<u64>>(&parts, "numbers", PartLayout::Subtask).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(get_one::<Vec<u64>>(&parts, "other", PartLayout::Subtask).unwrap(), None);
        let err = get_one::<Vec<u64>>(&parts, "numbers", PartLayout::Broadcast).unwrap_err();
        assert!(matches!(err, PartError::Layout { .. }), "{err}");
        put(&mut parts, "numbers", PartLayout::Subtask, &vec![4u64]).unwrap();
        assert!(matches!(
            get_one::<Vec<u64>>(&parts, "numbers", PartLayout::Subtask),
            Err(PartError::Repeated { count: 2, .. })
        ));
        assert_eq!(get_all::<Vec<u64>>(&parts, "numbers", PartLayout::Subtask).unwrap(), vec![vec![1, 2, 3], vec![4]]);
        parts.parts[0].bytes[30] ^= 1;
        let err = get_all::<Vec<u64>>(&parts, "numbers", PartLayout::Subtask).unwrap_err();
        assert!(err.to_string().starts_with("state part 'numbers'"), "{err}");
    }
}
