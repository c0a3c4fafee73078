//! The one cell a reload swaps values through: [`Live`] holds a value that
//! is replaced whole (`RwLock<Arc<T>>`); readers take an `Arc` snapshot and
//! keep it as long as they need it, so an image in progress finishes on the
//! model it started with. A leaf: the stages read their settings through it
//! without knowing who swaps them ([`crate::app::reload`]).

use std::sync::{Arc, RwLock};

/// A value swapped whole on reload; readers take an `Arc` snapshot.
pub struct Live<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Live<T> {
    /// Holds `value`.
    pub fn new(value: T) -> Live<T> {
        Live { value: RwLock::new(Arc::new(value)) }
    }

    /// The current value (a snapshot: a later swap does not change it).
    pub fn get(&self) -> Arc<T> {
        self.value.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Replaces the value; snapshots already taken keep the old one.
    pub fn set(&self, value: T) {
        *self.value.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(value);
    }
}

impl<T> std::fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live(..)")
    }
}
