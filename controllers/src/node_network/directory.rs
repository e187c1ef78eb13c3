//! The NodeNetworks the NodeNetwork controller caches, readable from outside
//! the controller: the simulated cloud of `--provider sim` looks instances
//! up in them (an instance is what the NodeNetwork naming it says). Empty
//! until the controller starts leading and hands over its store
//! ([`NodeNetworkDirectory::set`]). Without the `sim` feature nothing reads
//! it.

use std::sync::{Arc, PoisonError, RwLock};

use kube::runtime::reflector::Store;
use sextant_crds::NodeNetwork;

/// A handle on the NodeNetwork controller's cache; clones share it.
#[derive(Clone, Default)]
pub struct NodeNetworkDirectory(Arc<RwLock<Option<Store<NodeNetwork>>>>);

impl NodeNetworkDirectory {
    /// Looks NodeNetworks up in `store` from now on.
    pub fn set(&self, store: Store<NodeNetwork>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(store);
    }

    /// The NodeNetwork whose `spec.instanceId` is `instance_id`, if the
    /// store is set and has one.
    #[cfg(feature = "sim")]
    pub(crate) fn by_instance(&self, instance_id: &str) -> Option<Arc<NodeNetwork>> {
        let store = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        store.find(|nn| nn.spec.instance_id.as_deref() == Some(instance_id))
    }
}
