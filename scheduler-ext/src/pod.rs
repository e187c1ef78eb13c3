//! The pod being scheduled, as the extender sees it: who it is and, through
//! the index, which fixed address it must keep.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use sextant_crds::wellknown::ANNOTATION_FIXED_IP;

use crate::{
    error::{Error, Result},
    index::Index,
};

/// Identity of the pod being scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace (`default` when the pod carries none).
    pub namespace: String,
    /// Name; for StatefulSet pods also the FixedIP's name (`web-3`).
    pub name: String,
    /// The pod carries [`ANNOTATION_FIXED_IP`]`: "true"` (set in the
    /// StatefulSet's pod template next to the StatefulSet's own): it must
    /// have a FixedIP, and without one in the index the filter answers an
    /// error (scheduling retries) instead of treating the pod as a plain one.
    pub requires_fixed_ip: bool,
}

impl PodRef {
    /// Reads the pod's identity from the object kube-scheduler sent.
    pub fn from_pod(pod: &Pod) -> Result<PodRef> {
        let meta = &pod.metadata;
        let name = meta
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(Error::PodWithoutName)?;
        let namespace = meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let requires_fixed_ip = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_FIXED_IP))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(PodRef {
            namespace,
            name,
            requires_fixed_ip,
        })
    }
}

/// The address a fixed-IP pod must keep, and where it may live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedTarget {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Zone of the address's subnet.
    pub zone: Option<String>,
    /// Subnet of the address.
    pub subnet_id: Option<String>,
}

/// Looks up the pod's FixedIP: `None` for a plain pod, an error when the
/// lookup cannot be answered (bad address, annotated pod without FixedIP).
pub fn fixed_target(index: &Index, pod: &PodRef) -> Result<Option<FixedTarget>> {
    let Some(entry) = index.fixed_ip(&pod.namespace, &pod.name) else {
        if pod.requires_fixed_ip {
            return Err(Error::FixedIpMissing {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                annotation: ANNOTATION_FIXED_IP,
            });
        }
        return Ok(None);
    };
    let ip = entry.ip.parse().map_err(|source| Error::BadFixedIp {
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        ip: entry.ip.clone(),
        source,
    })?;
    Ok(Some(FixedTarget {
        ip,
        zone: entry.zone.clone(),
        subnet_id: entry.subnet_id.clone(),
    }))
}

#[cfg(test)]
mod tests;
