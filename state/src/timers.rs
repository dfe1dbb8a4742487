//! The timer service of one keyed operator subtask, as Flink's `InternalTimerService`: timers
//! per `(key, namespace, timestamp)` in two time domains (event time, fired as the watermark
//! passes them; processing time, fired as the clock does). The operator pops due timers itself
//! (`pop_event_timer(watermark)`), so firing happens on the task's thread, between batches.
//!
//! Each domain is a hash set of live timers (deduplication, deletion) plus buckets of
//! registrations by timestamp, each in registration order (windows register thousands of timers
//! at the same few timestamps, so popping is O(1) instead of a heap's O(log n) cache misses);
//! deletion is lazy (the bucket entry stays and is skipped), and the buckets are compacted when
//! stale entries outnumber live ones. Invariants (property-tested): the front of the first bucket
//! is always live; a timer fires at most once per
//! registration, never after it was deleted, never before its time, and timers fire in
//! nondecreasing timestamp order (ties in registration order, so runs are deterministic).
//! Snapshots group live timers by key group, so they rescale like keyed state.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;
use rkyv::{Archive, Deserialize, Serialize};

use crate::codec;
use crate::error::StateError;
use crate::keyed::{Namespace, StateKey};
use crate::keygroup::{assign_key_group, KeyGroupRange};

/// A timer: fires for `key` in `namespace` at `timestamp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timer<K, N> {
    pub timestamp: i64,
    pub key: K,
    pub namespace: N,
}

/// Pending timers of one subtask, by key group.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct TimerSnapshot {
    pub max_parallelism: u32,
    /// Key groups with at least one pending timer, ascending.
    pub key_groups: Vec<TimerKeyGroupSnapshot>,
}

/// Pending timers of one key group: an archive of `(event time, processing time)` timers, each
/// a `Vec<(timestamp, key, namespace)>` in firing order.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct TimerKeyGroupSnapshot {
    pub key_group: u32,
    pub value_type: String,
    pub checksum: u64,
    pub bytes: Vec<u8>,
}

type ArchivedTimers<K, N> = (Vec<(i64, K, N)>, Vec<(i64, K, N)>);

/// The timers of one domain at a snapshot: `(timestamp, registration sequence, key, namespace)`.
type FrozenQueue<K, N> = Vec<(i64, u64, K, N)>;

/// Groups `timers` by key group, each group in firing order (timestamp, then registration).
fn by_key_group<K: StateKey, N: Namespace>(
    timers: FrozenQueue<K, N>,
    max_parallelism: u32,
) -> BTreeMap<u32, Vec<(i64, K, N)>> {
    let mut groups: BTreeMap<u32, FrozenQueue<K, N>> = BTreeMap::new();
    for timer in timers {
        groups.entry(assign_key_group(&timer.2, max_parallelism)).or_default().push(timer);
    }
    groups
        .into_iter()
        .map(|(key_group, mut timers)| {
            timers.sort_unstable_by_key(|&(ts, seq, _, _)| (ts, seq));
            (key_group, timers.into_iter().map(|(ts, _, k, n)| (ts, k, n)).collect())
        })
        .collect()
}

/// The pending timers of a service as they were at [`TimerService::freeze_with`], owned and
/// sendable: the asynchronous part of a snapshot encodes them.
#[derive(Debug)]
pub struct FrozenTimers<K, N> {
    max_parallelism: u32,
    event: FrozenQueue<K, N>,
    processing: FrozenQueue<K, N>,
}

impl crate::codec::part::SizeHint for TimerSnapshot {
    fn archive_size_hint(&self) -> usize {
        let bytes: usize = self.key_groups.iter().map(|g| g.bytes.len() + g.value_type.len() + 64).sum();
        bytes + bytes / 8 + 4096
    }
}

impl<K: StateKey, N: Namespace> FrozenTimers<K, N> {
    /// The archives of the timers, by key group.
    pub fn encode(self) -> Result<TimerSnapshot, StateError> {
        let mut event = by_key_group(self.event, self.max_parallelism);
        let mut processing = by_key_group(self.processing, self.max_parallelism);
        let groups: std::collections::BTreeSet<u32> = event.keys().chain(processing.keys()).copied().collect();
        let mut key_groups = Vec::with_capacity(groups.len());
        for key_group in groups {
            let timers: ArchivedTimers<K, N> =
                (event.remove(&key_group).unwrap_or_default(), processing.remove(&key_group).unwrap_or_default());
            let expected =
                (timers.0.len() + timers.1.len()) * std::mem::size_of::<<(i64, K, N) as Archive>::Archived>();
            let encoded = codec::encode_sized(&timers, expected + expected / 4 + 64, || {
                format!("the timers of key group {key_group}")
            })?;
            key_groups.push(TimerKeyGroupSnapshot {
                key_group,
                value_type: encoded.value_type,
                checksum: encoded.checksum,
                bytes: encoded.bytes,
            });
        }
        Ok(TimerSnapshot { max_parallelism: self.max_parallelism, key_groups })
    }
}

/// Stale bucket entries tolerated beyond the number of live timers before a compaction.
const STALE_SLACK: usize = 64;

/// The timers of one time domain.
struct TimerQueue<K, N> {
    /// Live timers with the sequence number of their (only live) bucket entry.
    live: HashTable<(Timer<K, N>, u64)>,
    hasher: DefaultHashBuilder,
    /// Registrations by timestamp, each bucket in registration order. Entries whose sequence
    /// number is no longer live (deleted, or re-registered) are stale and skipped. Invariant:
    /// the front entry of the first bucket is live.
    buckets: BTreeMap<i64, VecDeque<(u64, K, N)>>,
    stale: usize,
    next_seq: u64,
}

#[inline]
fn timer_hash<K: Hash, N: Hash>(hasher: &DefaultHashBuilder, timestamp: i64, key: &K, namespace: &N) -> u64 {
    hasher.hash_one((timestamp, key, namespace))
}

impl<K: StateKey, N: Namespace> TimerQueue<K, N> {
    fn new() -> Self {
        Self {
            live: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            buckets: BTreeMap::new(),
            stale: 0,
            next_seq: 0,
        }
    }

    fn len(&self) -> usize {
        self.live.len()
    }

    fn register(&mut self, timer: Timer<K, N>) -> bool {
        let Self { live, hasher, buckets, next_seq, .. } = self;
        let hash = timer_hash(hasher, timer.timestamp, &timer.key, &timer.namespace);
        let rehash = |(t, _): &(Timer<K, N>, u64)| timer_hash(hasher, t.timestamp, &t.key, &t.namespace);
        match live.entry(hash, |(t, _)| *t == timer, rehash) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                let seq = *next_seq;
                *next_seq += 1;
                buckets.entry(timer.timestamp).or_default().push_back((
                    seq,
                    timer.key.clone(),
                    timer.namespace.clone(),
                ));
                v.insert((timer, seq));
                true
            }
        }
    }

    fn delete(&mut self, key: &K, namespace: &N, timestamp: i64) -> bool {
        let hash = timer_hash(&self.hasher, timestamp, key, namespace);
        let eq = |(t, _): &(Timer<K, N>, u64)| t.timestamp == timestamp && t.key == *key && t.namespace == *namespace;
        let Ok(entry) = self.live.find_entry(hash, eq) else { return false };
        entry.remove();
        self.stale += 1;
        self.clean_front();
        if self.stale > self.live.len() + STALE_SLACK {
            self.compact();
        }
        true
    }

    /// Whether a bucket entry is the live registration of its timer.
    fn is_live(&self, timestamp: i64, seq: u64, key: &K, namespace: &N) -> bool {
        let hash = timer_hash(&self.hasher, timestamp, key, namespace);
        self.live.find(hash, |(_, s)| *s == seq).is_some()
    }

    /// Drops stale entries from the front of the first bucket (and empty buckets). Without
    /// stale entries every entry is live, and nothing needs looking up.
    fn clean_front(&mut self) {
        if self.stale == 0 {
            return;
        }
        while let Some(mut first) = self.buckets.first_entry() {
            let ts = *first.key();
            let bucket = first.get_mut();
            while let Some((seq, key, ns)) = bucket.front() {
                let hash = timer_hash(&self.hasher, ts, key, ns);
                if self.live.find(hash, |(_, s)| s == seq).is_some() {
                    return;
                }
                bucket.pop_front();
                self.stale -= 1;
            }
            first.remove();
        }
    }

    #[cold]
    fn compact(&mut self) {
        let mut buckets = std::mem::take(&mut self.buckets);
        for (ts, bucket) in buckets.iter_mut() {
            bucket.retain(|(seq, key, ns)| self.is_live(*ts, *seq, key, ns));
        }
        buckets.retain(|_, b| !b.is_empty());
        self.buckets = buckets;
        self.stale = 0;
        debug_assert_eq!(self.buckets.values().map(VecDeque::len).sum::<usize>(), self.live.len());
    }

    fn pop(&mut self, limit: i64) -> Option<Timer<K, N>> {
        loop {
            let mut first = self.buckets.first_entry()?;
            let timestamp = *first.key();
            if timestamp > limit {
                return None;
            }
            let bucket = first.get_mut();
            let Some((seq, key, namespace)) = bucket.pop_front() else {
                first.remove();
                continue;
            };
            if bucket.is_empty() {
                first.remove();
            }
            let hash = timer_hash(&self.hasher, timestamp, &key, &namespace);
            match self.live.find_entry(hash, |(_, s)| *s == seq) {
                Ok(entry) => {
                    entry.remove();
                    self.clean_front();
                    return Some(Timer { timestamp, key, namespace });
                }
                Err(_) => self.stale -= 1,
            }
        }
    }

    fn next_time(&self) -> Option<i64> {
        self.buckets.keys().next().copied()
    }

    /// Live timers by key group, each group in firing order, with `extra` timers ordered after
    /// every live one of the same timestamp (in the order given).
    /// The live timers and `extra` (as if registered after every live one), copied.
    fn freeze<'a>(&'a self, extra: impl IntoIterator<Item = (i64, &'a K, &'a N)>) -> FrozenQueue<K, N> {
        let mut timers = Vec::with_capacity(self.live.len());
        timers.extend(self.live.iter().map(|(t, seq)| (t.timestamp, *seq, t.key.clone(), t.namespace.clone())));
        let extra = (self.next_seq..)
            .zip(extra)
            .map(|(seq, (timestamp, key, namespace))| (timestamp, seq, key.clone(), namespace.clone()));
        timers.extend(extra);
        timers
    }

    fn clear(&mut self) {
        self.live.clear();
        self.buckets.clear();
        self.stale = 0;
    }
}

/// Event-time and processing-time timers of one keyed operator subtask.
pub struct TimerService<K, N> {
    max_parallelism: u32,
    key_groups: KeyGroupRange,
    event_time: TimerQueue<K, N>,
    processing_time: TimerQueue<K, N>,
}

impl<K: StateKey, N: Namespace> TimerService<K, N> {
    pub fn new(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        assert!(
            max_parallelism > 0 && key_groups.end <= max_parallelism,
            "key groups {key_groups:?} of {max_parallelism}"
        );
        Self { max_parallelism, key_groups, event_time: TimerQueue::new(), processing_time: TimerQueue::new() }
    }

    pub fn key_groups(&self) -> KeyGroupRange {
        self.key_groups
    }

    fn debug_check_key(&self, key: &K) {
        debug_assert!(
            self.key_groups.contains(assign_key_group(key, self.max_parallelism)),
            "timer for a key outside key groups {:?}",
            self.key_groups
        );
    }

    /// Registers a timer; `false` if the same `(key, namespace, timestamp)` is already pending.
    pub fn register_event_time_timer(&mut self, key: K, namespace: N, timestamp: i64) -> bool {
        self.debug_check_key(&key);
        self.event_time.register(Timer { timestamp, key, namespace })
    }

    /// Deletes a pending timer; `false` if there was none.
    pub fn delete_event_time_timer(&mut self, key: &K, namespace: &N, timestamp: i64) -> bool {
        self.event_time.delete(key, namespace, timestamp)
    }

    /// Registers a timer; `false` if the same `(key, namespace, timestamp)` is already pending.
    pub fn register_processing_time_timer(&mut self, key: K, namespace: N, timestamp: i64) -> bool {
        self.debug_check_key(&key);
        self.processing_time.register(Timer { timestamp, key, namespace })
    }

    /// Deletes a pending timer; `false` if there was none.
    pub fn delete_processing_time_timer(&mut self, key: &K, namespace: &N, timestamp: i64) -> bool {
        self.processing_time.delete(key, namespace, timestamp)
    }

    /// Removes and returns the earliest event-time timer with `timestamp <= watermark` (ties in
    /// registration order).
    pub fn pop_event_timer(&mut self, watermark: i64) -> Option<Timer<K, N>> {
        self.event_time.pop(watermark)
    }

    /// Removes and returns the earliest processing-time timer with `timestamp <= now`.
    pub fn pop_processing_timer(&mut self, now: i64) -> Option<Timer<K, N>> {
        self.processing_time.pop(now)
    }

    pub fn next_event_time(&self) -> Option<i64> {
        self.event_time.next_time()
    }

    pub fn next_processing_time(&self) -> Option<i64> {
        self.processing_time.next_time()
    }

    pub fn num_event_time_timers(&self) -> usize {
        self.event_time.len()
    }

    pub fn num_processing_time_timers(&self) -> usize {
        self.processing_time.len()
    }

    /// The pending timers of both domains, by key group.
    pub fn snapshot(&self) -> Result<TimerSnapshot, StateError> {
        self.snapshot_with(std::iter::empty(), std::iter::empty())
    }

    /// As [`snapshot`](Self::snapshot), with timers an operator keeps outside the service
    /// (`(timestamp, key, namespace)` of event time, then of processing time) added as if they
    /// had been registered after every pending one. Nothing is deduplicated here; a restore
    /// registers each `(key, namespace, timestamp)` once.
    pub fn snapshot_with<'a>(
        &'a self,
        extra_event: impl IntoIterator<Item = (i64, &'a K, &'a N)>,
        extra_processing: impl IntoIterator<Item = (i64, &'a K, &'a N)>,
    ) -> Result<TimerSnapshot, StateError> {
        self.freeze_with(extra_event, extra_processing).encode()
    }

    /// The synchronous part of [`snapshot_with`](Self::snapshot_with): a copy of the pending
    /// timers (and the extra ones), which [`FrozenTimers::encode`] archives later.
    pub fn freeze_with<'a>(
        &'a self,
        extra_event: impl IntoIterator<Item = (i64, &'a K, &'a N)>,
        extra_processing: impl IntoIterator<Item = (i64, &'a K, &'a N)>,
    ) -> FrozenTimers<K, N> {
        FrozenTimers {
            max_parallelism: self.max_parallelism,
            event: self.event_time.freeze(extra_event),
            processing: self.processing_time.freeze(extra_processing),
        }
    }

    /// Replaces all timers with those of `snapshots` in this service's key groups (other key
    /// groups are ignored). Snapshots come from [`snapshot`](Self::snapshot) with the same
    /// types; type name and checksum are checked and archives validated, so damaged bytes are an
    /// error. Nothing changes if a check fails.
    pub fn restore(&mut self, snapshots: &[TimerSnapshot]) -> Result<(), StateError> {
        let max_p = self.max_parallelism;
        let mut seen = HashSet::new();
        let mut restored = Vec::new();
        for snapshot in snapshots {
            if snapshot.max_parallelism != max_p {
                return Err(StateError::MaxParallelismMismatch { snapshot: snapshot.max_parallelism, backend: max_p });
            }
            for group in &snapshot.key_groups {
                let key_group = group.key_group;
                if key_group >= max_p {
                    return Err(StateError::KeyGroupOutOfRange { key_group, max_parallelism: max_p });
                }
                if !seen.insert(key_group) {
                    return Err(StateError::DuplicateKeyGroup { key_group });
                }
                if !self.key_groups.contains(key_group) {
                    continue;
                }
                let what = || format!("the timers of key group {key_group}");
                let timers: ArchivedTimers<K, N> =
                    codec::decode(&group.value_type, group.checksum, &group.bytes, what, key_group)?;
                for (_, key, _) in timers.0.iter().chain(&timers.1) {
                    let found = assign_key_group(key, max_p);
                    if found != key_group {
                        let reason = format!("it holds a timer of a key of key group {found}");
                        return Err(StateError::Corrupt { what: what(), key_group, reason });
                    }
                }
                restored.push(timers);
            }
        }
        self.event_time.clear();
        self.processing_time.clear();
        for (event, processing) in restored {
            for (timestamp, key, namespace) in event {
                self.event_time.register(Timer { timestamp, key, namespace });
            }
            for (timestamp, key, namespace) in processing {
                self.processing_time.register(Timer { timestamp, key, namespace });
            }
        }
        Ok(())
    }
}
