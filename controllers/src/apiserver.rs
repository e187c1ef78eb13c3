//! What every controller of the operator shares about the API server: the
//! clock its reconciles read (injected, so tests pin it) and how a refused
//! optimistic-concurrency write looks.

/// The clock reconciles read; tests pin it.
pub(crate) use sextant_kit::lease::Clock;

/// Whether a kube error is a 409 Conflict: the object changed since it was
/// read (a write guarded by a resourceVersion was refused).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}
