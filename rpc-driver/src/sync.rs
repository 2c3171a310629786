//! The synchronisation primitives of rpc-driver, switched to loom's models under `--cfg loom` so
//! the races between user handles and drivers can be checked exhaustively.
//!
//! Every `Arc`, `Mutex` and atomic in the crate comes from here: `clippy.toml` disallows the
//! `std::sync` types everywhere else, so a new piece of shared state cannot bypass the model
//! checker by accident. State that loom need not (or cannot) model takes the std types from
//! [`unmodeled`], which says so at the point of use.
//!
//! The std types are named through type aliases rather than re-exports: clippy's
//! `disallowed-types` sees through a `use`, not through an alias.
#![allow(clippy::disallowed_types)]

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

/// A reference-counted pointer; loom's model under `--cfg loom`.
#[cfg(not(loom))]
pub(crate) type Arc<T> = std::sync::Arc<T>;
/// A mutex; loom's model under `--cfg loom`.
#[cfg(not(loom))]
pub(crate) type Mutex<T> = std::sync::Mutex<T>;
/// The guard of a locked [`Mutex`].
#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

/// Atomics; loom's models under `--cfg loom`.
pub(crate) mod atomic {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
    pub(crate) use std::sync::atomic::Ordering;

    /// An atomic `bool`.
    #[cfg(not(loom))]
    pub(crate) type AtomicBool = std::sync::atomic::AtomicBool;
    /// An atomic `u64`.
    #[cfg(not(loom))]
    pub(crate) type AtomicU64 = std::sync::atomic::AtomicU64;
    /// An atomic `usize`.
    #[cfg(not(loom))]
    pub(crate) type AtomicUsize = std::sync::atomic::AtomicUsize;
}

/// The std types, never modelled: for state outside what loom checks (process-wide registries,
/// counters read only for stats and logs, values created outside a loom model such as
/// statics), and for the parts of the crate not built under loom. Each use says why.
pub(crate) mod unmodeled {
    /// `std::sync::Arc`, also under `--cfg loom`.
    pub(crate) type Arc<T> = std::sync::Arc<T>;
    /// `std::sync::Weak`: loom has no weak pointers. Only env, which is not built under loom,
    /// holds one.
    #[cfg(not(loom))]
    pub(crate) type Weak<T> = std::sync::Weak<T>;
    /// `std::sync::Mutex`, also under `--cfg loom`.
    pub(crate) type Mutex<T> = std::sync::Mutex<T>;
    /// `std::sync::OnceLock`: loom has none.
    pub(crate) type OnceLock<T> = std::sync::OnceLock<T>;
    /// Atomics that stay std's under `--cfg loom`.
    pub(crate) mod atomic {
        /// `std::sync::atomic::AtomicBool` (only tests need one).
        #[cfg(test)]
        pub(crate) type AtomicBool = std::sync::atomic::AtomicBool;
        /// `std::sync::atomic::AtomicU64`.
        pub(crate) type AtomicU64 = std::sync::atomic::AtomicU64;
    }
}

/// Locks `mutex`, ignoring poisoning: the state behind our mutexes is kept consistent by
/// short critical sections that do not call user code, so a panic elsewhere cannot leave it
/// half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
