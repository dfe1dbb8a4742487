//! State descriptors: the name a state is registered under, its TTL and, for reducing and
//! aggregating state, its function. Registering a descriptor's name a second time with the same
//! kind, types and TTL returns a handle to the same state; the function of the first
//! registration stays in use (functions cannot be compared).

use std::marker::PhantomData;
use std::rc::Rc;

use super::ttl::StateTtlConfig;

/// Folds inputs into an accumulator, as Flink's `AggregateFunction`.
pub trait AggregateFunction<IN, ACC, OUT>: 'static {
    fn create_accumulator(&self) -> ACC;
    /// Adds one input to the accumulator, in place.
    fn add(&self, value: &IN, acc: &mut ACC);
    fn get_result(&self, acc: &ACC) -> OUT;
    /// Merges `b` into `a` (merging windows).
    fn merge(&self, a: &mut ACC, b: ACC);
}

/// The reduce function of a [`ReducingStateDescriptor`], in place.
pub(crate) type ReduceFn<V> = Rc<dyn Fn(&mut V, V)>;

/// Describes a [`ValueState`](super::ValueState).
pub struct ValueStateDescriptor<V> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    _value: PhantomData<fn() -> V>,
}

impl<V> ValueStateDescriptor<V> {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ttl: None, _value: PhantomData }
    }

    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        Self { ttl: Some(ttl), ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}

/// Describes a [`ListState`](super::ListState).
pub struct ListStateDescriptor<V> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    _value: PhantomData<fn() -> V>,
}

impl<V> ListStateDescriptor<V> {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ttl: None, _value: PhantomData }
    }

    /// TTL applies to each element.
    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        Self { ttl: Some(ttl), ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}

/// Describes a [`MapState`](super::MapState).
pub struct MapStateDescriptor<UK, UV> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    _entries: PhantomData<fn() -> (UK, UV)>,
}

impl<UK, UV> MapStateDescriptor<UK, UV> {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), ttl: None, _entries: PhantomData }
    }

    /// TTL applies to each map entry.
    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        Self { ttl: Some(ttl), ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}

/// Describes a [`ReducingState`](super::ReducingState) and its reduce function.
pub struct ReducingStateDescriptor<V> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) reduce: ReduceFn<V>,
}

impl<V: 'static> ReducingStateDescriptor<V> {
    /// `f(acc, value)` is the new accumulated value.
    pub fn new(name: impl Into<String>, f: impl Fn(&V, &V) -> V + 'static) -> Self {
        Self::new_in_place(name, move |acc: &mut V, value: V| *acc = f(acc, &value))
    }

    /// `f(acc, value)` folds `value` into `acc` in place: no clone or move of the accumulated
    /// value, which matters when it owns memory (strings, vectors).
    pub fn new_in_place(name: impl Into<String>, f: impl Fn(&mut V, V) + 'static) -> Self {
        Self { name: name.into(), ttl: None, reduce: Rc::new(f) }
    }
}

impl<V> ReducingStateDescriptor<V> {
    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        Self { ttl: Some(ttl), ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}

/// Describes an [`AggregatingState`](super::AggregatingState) and its aggregate function.
pub struct AggregatingStateDescriptor<IN, ACC, OUT> {
    pub(crate) name: String,
    pub(crate) ttl: Option<StateTtlConfig>,
    pub(crate) agg: Rc<dyn AggregateFunction<IN, ACC, OUT>>,
}

impl<IN, ACC, OUT> AggregatingStateDescriptor<IN, ACC, OUT> {
    pub fn new(name: impl Into<String>, agg: impl AggregateFunction<IN, ACC, OUT> + 'static) -> Self {
        Self { name: name.into(), ttl: None, agg: Rc::new(agg) }
    }

    pub fn with_ttl(self, ttl: StateTtlConfig) -> Self {
        Self { ttl: Some(ttl), ..self }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ttl(&self) -> Option<&StateTtlConfig> {
        self.ttl.as_ref()
    }
}
