//! State time-to-live, as Flink's `StateTtlConfig`: an entry expires `ttl` after it was last
//! written (or also read, with [`TtlUpdateType::OnReadAndWrite`]), measured on the processing
//! time the operator gives its backend (`KeyedStateBackend::set_current_time`). TTL applies to
//! each stored value: a value/reducing/aggregating state's value, each list element and each map
//! entry, as in Flink. Expired values are removed lazily, when an access finds them, and are
//! never written to a snapshot. Writes (`update`, `add`, `update_with`, merges) treat an expired
//! value as absent whatever the visibility.
//!
//! Whether a state has TTL is a choice of its cell type: [`Plain`] stores the bare value and its
//! checks are constants the compiler removes; [`Expiring`] adds the expiry time.

use std::time::Duration;

use super::StateValue;

/// When an entry's time-to-live restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TtlUpdateType {
    /// On creation and on every write.
    #[default]
    OnCreateAndWrite,
    /// On creation, every write and every read.
    OnReadAndWrite,
}

/// Whether a read may still see an expired entry that has not been removed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TtlVisibility {
    /// Expired entries are never returned.
    #[default]
    NeverReturnExpired,
    /// An expired entry is returned by the read that finds it, which also removes it.
    ReturnExpiredIfNotCleanedUp,
}

/// Time-to-live of a state's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateTtlConfig {
    pub ttl: Duration,
    pub update_type: TtlUpdateType,
    pub visibility: TtlVisibility,
}

impl StateTtlConfig {
    /// Entries live `ttl` after their last write; expired entries are never returned.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, update_type: TtlUpdateType::OnCreateAndWrite, visibility: TtlVisibility::NeverReturnExpired }
    }

    pub fn with_update_type(self, update_type: TtlUpdateType) -> Self {
        Self { update_type, ..self }
    }

    pub fn with_visibility(self, visibility: TtlVisibility) -> Self {
        Self { visibility, ..self }
    }

    /// Restarts the time-to-live on reads too.
    pub fn update_on_read_and_write(self) -> Self {
        self.with_update_type(TtlUpdateType::OnReadAndWrite)
    }

    /// Lets a read return an expired entry it finds (and removes).
    pub fn return_expired_if_not_cleaned_up(self) -> Self {
        self.with_visibility(TtlVisibility::ReturnExpiredIfNotCleanedUp)
    }

    /// The time-to-live in milliseconds, saturated to `i64`.
    pub fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The TTL rules of one access: the time and what the state's configuration asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    pub now_ms: i64,
    pub ttl_ms: i64,
    pub update_on_read: bool,
    pub return_expired: bool,
}

impl Clock {
    pub fn new(config: Option<&StateTtlConfig>, now_ms: i64) -> Self {
        match config {
            None => Self { now_ms, ttl_ms: i64::MAX, update_on_read: false, return_expired: false },
            Some(c) => Self {
                now_ms,
                ttl_ms: c.ttl_ms(),
                update_on_read: c.update_type == TtlUpdateType::OnReadAndWrite,
                return_expired: c.visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp,
            },
        }
    }
}

/// One stored value with whatever TTL bookkeeping its state needs.
pub(crate) trait ValueCell: Sized + 'static {
    type Value: StateValue;
    /// What a snapshot stores for the cell.
    type Persisted: StateValue;
    /// Whether cells of this type can expire at all.
    const EXPIRES: bool;

    /// A cell written now.
    fn new(value: Self::Value, clock: &Clock) -> Self;
    fn value(&self) -> &Self::Value;
    fn value_mut(&mut self) -> &mut Self::Value;
    fn into_value(self) -> Self::Value;
    fn is_expired(&self, clock: &Clock) -> bool;
    /// Restarts the time-to-live.
    fn touch(&mut self, clock: &Clock);
    fn persist(&self) -> Self::Persisted;
    fn restore(persisted: Self::Persisted) -> Self;

    /// Read bookkeeping: `true` if the cell is live (its TTL restarted if reads do that),
    /// `false` if it has expired (the caller removes it).
    #[inline]
    fn read(&mut self, clock: &Clock) -> bool {
        if self.is_expired(clock) {
            return false;
        }
        if clock.update_on_read {
            self.touch(clock);
        }
        true
    }
}

/// A value without TTL.
#[repr(transparent)]
pub(crate) struct Plain<V>(V);

impl<V: StateValue> ValueCell for Plain<V> {
    type Value = V;
    type Persisted = V;
    const EXPIRES: bool = false;

    #[inline]
    fn new(value: V, _: &Clock) -> Self {
        Self(value)
    }
    #[inline]
    fn value(&self) -> &V {
        &self.0
    }
    #[inline]
    fn value_mut(&mut self) -> &mut V {
        &mut self.0
    }
    #[inline]
    fn into_value(self) -> V {
        self.0
    }
    #[inline]
    fn is_expired(&self, _: &Clock) -> bool {
        false
    }
    #[inline]
    fn touch(&mut self, _: &Clock) {}
    #[inline]
    fn read(&mut self, _: &Clock) -> bool {
        true
    }
    fn persist(&self) -> V {
        self.0.clone()
    }
    fn restore(persisted: V) -> Self {
        Self(persisted)
    }
}

/// A value with the time (ms) at which it expires.
pub(crate) struct Expiring<V> {
    value: V,
    expires_at_ms: i64,
}

impl<V: StateValue> ValueCell for Expiring<V> {
    type Value = V;
    type Persisted = (V, i64);
    const EXPIRES: bool = true;

    #[inline]
    fn new(value: V, clock: &Clock) -> Self {
        Self { value, expires_at_ms: clock.now_ms.saturating_add(clock.ttl_ms) }
    }
    #[inline]
    fn value(&self) -> &V {
        &self.value
    }
    #[inline]
    fn value_mut(&mut self) -> &mut V {
        &mut self.value
    }
    #[inline]
    fn into_value(self) -> V {
        self.value
    }
    #[inline]
    fn is_expired(&self, clock: &Clock) -> bool {
        self.expires_at_ms <= clock.now_ms
    }
    #[inline]
    fn touch(&mut self, clock: &Clock) {
        self.expires_at_ms = clock.now_ms.saturating_add(clock.ttl_ms);
    }
    fn persist(&self) -> (V, i64) {
        (self.value.clone(), self.expires_at_ms)
    }
    fn restore((value, expires_at_ms): (V, i64)) -> Self {
        Self { value, expires_at_ms }
    }
}
