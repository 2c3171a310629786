//! The synchronisation primitives shared between user handles and drivers, switched to loom's
//! models under `--cfg loom` so the races between them can be checked exhaustively.

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: the state behind our mutexes is kept consistent by
/// short critical sections that do not call user code, so a panic elsewhere cannot leave it
/// half-updated.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
