//! State handles: what operators hold. Each handle is scoped to the current key of the backend
//! that created it and to its own namespace (`set_namespace`; handles of [`VoidNamespace`]
//! start in `()`, others must be given a namespace before their first access). Clearing a
//! namespace of the current key is `set_namespace` then `clear`.
//!
//! A handle must not be used from inside a closure passed to another access of the same state
//! (`update_with`): the table is borrowed for the access and a nested one panics.
//!
//! [`VoidNamespace`]: super::VoidNamespace

use std::cell::RefCell;
use std::rc::Rc;

use super::tables::{AggregatingTable, ListTable, MapTable, ReducingTable, ValueTable};
use super::{KeyContext, Namespace, Scope, StateKey, StateValue};

macro_rules! namespace_methods {
    () => {
        /// Scopes the following accesses to `ns` (for the current key).
        #[inline]
        pub fn set_namespace(&mut self, ns: N) {
            self.scope.set_namespace(ns);
        }

        /// The current namespace. Panics if none has been set.
        #[inline]
        pub fn namespace(&self) -> &N {
            self.scope.namespace()
        }
    };
}

/// One value per key and namespace.
pub struct ValueState<K, N, V> {
    scope: Scope<K, N>,
    table: Rc<RefCell<dyn ValueTable<K, N, V>>>,
}

impl<K: StateKey, N: Namespace, V: StateValue> ValueState<K, N, V> {
    pub(crate) fn new(ctx: Rc<KeyContext<K>>, table: Rc<RefCell<dyn ValueTable<K, N, V>>>) -> Self {
        Self { scope: Scope::new(ctx), table }
    }

    namespace_methods!();

    #[inline]
    pub fn value(&self) -> Option<V> {
        self.scope.with(|at| self.table.borrow_mut().get(at))
    }

    #[inline]
    pub fn update(&mut self, value: V) {
        self.scope.with(|at| self.table.borrow_mut().put(at, value));
    }

    #[inline]
    pub fn clear(&mut self) {
        self.scope.with(|at| self.table.borrow_mut().remove(at));
    }

    /// Read-modify-write in place: `f` sees the current value (`None` if absent or expired);
    /// what it leaves is stored (`None` clears the state).
    #[inline]
    pub fn update_with<R>(&mut self, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        let mut f = Some(f);
        let mut out = None;
        self.scope.with(|at| {
            self.table.borrow_mut().update_with(at, &mut |value| {
                if let Some(f) = f.take() {
                    out = Some(f(value));
                }
            })
        });
        out.expect("a state table calls the update function exactly once")
    }

    /// For the current key: `target` keeps its value if it has one, else takes the first
    /// source's that has one; the sources are cleared.
    pub fn merge_namespaces(&mut self, target: &N, sources: &[N]) {
        let sources = Scope::<K, N>::hashed(sources);
        self.scope.with_namespace(target, |at| self.table.borrow_mut().merge(at, &sources));
    }
}

/// A list of values per key and namespace.
pub struct ListState<K, N, V> {
    scope: Scope<K, N>,
    table: Rc<RefCell<dyn ListTable<K, N, V>>>,
}

impl<K: StateKey, N: Namespace, V: StateValue> ListState<K, N, V> {
    pub(crate) fn new(ctx: Rc<KeyContext<K>>, table: Rc<RefCell<dyn ListTable<K, N, V>>>) -> Self {
        Self { scope: Scope::new(ctx), table }
    }

    namespace_methods!();

    /// The elements, in the order they were added (empty if none).
    pub fn get(&self) -> Vec<V> {
        self.scope.with(|at| self.table.borrow_mut().get(at))
    }

    /// Appends `value`; returns true when this created the list.
    #[inline]
    pub fn add(&mut self, value: V) -> bool {
        self.scope.with(|at| self.table.borrow_mut().add(at, value))
    }

    pub fn add_all(&mut self, values: impl IntoIterator<Item = V>) {
        let mut values = values.into_iter();
        self.scope.with(|at| self.table.borrow_mut().add_all(at, &mut values));
    }

    /// Replaces the elements (an empty vector clears the state).
    pub fn update(&mut self, values: Vec<V>) {
        self.scope.with(|at| self.table.borrow_mut().replace(at, values));
    }

    pub fn clear(&mut self) {
        self.scope.with(|at| self.table.borrow_mut().remove(at));
    }

    pub fn len(&self) -> usize {
        self.scope.with(|at| self.table.borrow_mut().len(at))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For the current key: appends the sources' elements (in the order given) to `target`'s;
    /// the sources are cleared.
    pub fn merge_namespaces(&mut self, target: &N, sources: &[N]) {
        let sources = Scope::<K, N>::hashed(sources);
        self.scope.with_namespace(target, |at| self.table.borrow_mut().merge(at, &sources));
    }
}

/// A map per key and namespace.
pub struct MapState<K, N, UK, UV> {
    scope: Scope<K, N>,
    table: Rc<RefCell<dyn MapTable<K, N, UK, UV>>>,
}

impl<K: StateKey, N: Namespace, UK: StateKey, UV: StateValue> MapState<K, N, UK, UV> {
    pub(crate) fn new(ctx: Rc<KeyContext<K>>, table: Rc<RefCell<dyn MapTable<K, N, UK, UV>>>) -> Self {
        Self { scope: Scope::new(ctx), table }
    }

    namespace_methods!();

    #[inline]
    pub fn get(&self, user_key: &UK) -> Option<UV> {
        self.scope.with(|at| self.table.borrow_mut().get(at, user_key))
    }

    #[inline]
    pub fn put(&mut self, user_key: UK, value: UV) {
        self.scope.with(|at| self.table.borrow_mut().put(at, user_key, value));
    }

    /// Removes an entry; returns its value unless it had expired.
    pub fn remove(&mut self, user_key: &UK) -> Option<UV> {
        self.scope.with(|at| self.table.borrow_mut().remove_key(at, user_key))
    }

    #[inline]
    pub fn contains(&self, user_key: &UK) -> bool {
        self.scope.with(|at| self.table.borrow_mut().contains(at, user_key))
    }

    /// The entries, in no particular order.
    pub fn entries(&self) -> Vec<(UK, UV)> {
        self.scope.with(|at| self.table.borrow_mut().entries(at))
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> Vec<UK> {
        self.scope.with(|at| self.table.borrow_mut().keys(at))
    }

    pub fn is_empty(&self) -> bool {
        self.scope.with(|at| self.table.borrow_mut().is_empty(at))
    }

    pub fn clear(&mut self) {
        self.scope.with(|at| self.table.borrow_mut().remove(at));
    }
}

/// A value per key and namespace that every `add` reduces into.
pub struct ReducingState<K, N, V> {
    scope: Scope<K, N>,
    table: Rc<RefCell<dyn ReducingTable<K, N, V>>>,
}

impl<K: StateKey, N: Namespace, V: StateValue> ReducingState<K, N, V> {
    pub(crate) fn new(ctx: Rc<KeyContext<K>>, table: Rc<RefCell<dyn ReducingTable<K, N, V>>>) -> Self {
        Self { scope: Scope::new(ctx), table }
    }

    namespace_methods!();

    #[inline]
    pub fn get(&self) -> Option<V> {
        self.scope.with(|at| self.table.borrow_mut().get(at))
    }

    /// Reduces `value` into the state (or starts it with `value`); returns true when this
    /// created the state.
    #[inline]
    pub fn add(&mut self, value: V) -> bool {
        self.scope.with(|at| self.table.borrow_mut().add(at, value))
    }

    pub fn clear(&mut self) {
        self.scope.with(|at| self.table.borrow_mut().remove(at));
    }

    /// For the current key: reduces the sources' values into `target`; the sources are cleared.
    pub fn merge_namespaces(&mut self, target: &N, sources: &[N]) {
        let sources = Scope::<K, N>::hashed(sources);
        self.scope.with_namespace(target, |at| self.table.borrow_mut().merge(at, &sources));
    }
}

/// An accumulator per key and namespace that every `add` folds into.
pub struct AggregatingState<K, N, IN, ACC, OUT> {
    scope: Scope<K, N>,
    table: Rc<RefCell<dyn AggregatingTable<K, N, IN, ACC, OUT>>>,
}

impl<K: StateKey, N: Namespace, IN: 'static, ACC: StateValue, OUT: 'static> AggregatingState<K, N, IN, ACC, OUT> {
    pub(crate) fn new(ctx: Rc<KeyContext<K>>, table: Rc<RefCell<dyn AggregatingTable<K, N, IN, ACC, OUT>>>) -> Self {
        Self { scope: Scope::new(ctx), table }
    }

    namespace_methods!();

    /// The aggregate's result, `None` if nothing was added.
    #[inline]
    pub fn get(&self) -> Option<OUT> {
        self.scope.with(|at| self.table.borrow_mut().get(at))
    }

    /// The aggregate's result, clearing the state.
    #[inline]
    pub fn take(&mut self) -> Option<OUT> {
        self.scope.with(|at| self.table.borrow_mut().take(at))
    }

    /// Folds `value` into the accumulator (created first if absent); returns true when this
    /// created the state.
    #[inline]
    pub fn add(&mut self, value: &IN) -> bool {
        self.scope.with(|at| self.table.borrow_mut().add(at, value))
    }

    pub fn clear(&mut self) {
        self.scope.with(|at| self.table.borrow_mut().remove(at));
    }

    pub fn accumulator(&self) -> Option<ACC> {
        self.scope.with(|at| self.table.borrow_mut().accumulator(at))
    }

    pub fn set_accumulator(&mut self, acc: ACC) {
        self.scope.with(|at| self.table.borrow_mut().set_accumulator(at, acc));
    }

    /// For the current key: merges the sources' accumulators into `target` (session windows);
    /// the sources are cleared.
    pub fn merge_namespaces(&mut self, target: &N, sources: &[N]) {
        let sources = Scope::<K, N>::hashed(sources);
        self.scope.with_namespace(target, |at| self.table.borrow_mut().merge(at, &sources));
    }
}
