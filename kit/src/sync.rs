//! Locks that outlive a panicking holder.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the guard even when an earlier holder panicked: every
/// value Sextant keeps behind a mutex is valid between statements, and a
/// panicked reconcile must not take the whole process down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_value() {
        let m = std::sync::Arc::new(Mutex::new(7));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("holder dies");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }
}
