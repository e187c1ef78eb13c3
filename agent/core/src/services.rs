//! ClusterIP services for the datapath, pure: Services and EndpointSlices
//! translated into frontends and their ready backends ([`desired`]), and
//! what to write to go from the installed service maps to that
//! ([`diff`]). The agent's watch feeds the first and applies the second.
//!
//! ```text
//!  Services + EndpointSlices ─▶ desired ─▶ want ─┐
//!  installed (last applied) ─────────────────────┴─▶ diff ─▶ ServiceSpec writes (empty backends: remove)
//! ```

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use sextant_agent_api::{Backend, Frontend, Proto, ServiceSpec};

/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The object's name, else its `generateName` (kube's `ResourceExt::name_any`).
fn name_any(meta: &ObjectMeta) -> String {
    meta.name
        .clone()
        .or_else(|| meta.generate_name.clone())
        .unwrap_or_default()
}

/// Desired datapath state: every ClusterIP frontend and its ready backends.
pub fn desired(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> BTreeMap<Frontend, Vec<Backend>> {
    let mut out = BTreeMap::new();
    // Slices by their Service, so the translation is linear in the objects
    // (a scan of every slice per Service is quadratic at cluster scale).
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices.iter().map(|s| s.as_ref()) {
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        if s.address_type == "IPv4" {
            let ns = s.metadata.namespace.as_deref().unwrap_or_default();
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let none = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None") or not yet assigned
        };
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = name_any(&svc.metadata);
        let own = by_service
            .get(&(ns.as_str(), name.as_str()))
            .unwrap_or(&none);
        for port in spec.ports.iter().flatten() {
            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Proto::Tcp,
                "UDP" => Proto::Udp,
                _ => continue,
            };
            let Ok(fport) = u16::try_from(port.port) else {
                continue;
            };
            let mut backends = Vec::new();
            for slice in own {
                let Some(bport) = slice.ports.iter().flatten().find(|p| {
                    p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or("")
                        && p.protocol.as_deref().unwrap_or("TCP")
                            == port.protocol.as_deref().unwrap_or("TCP")
                }) else {
                    continue;
                };
                let Some(Ok(bport)) = bport.port.map(u16::try_from) else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for a in &ep.addresses {
                        if let Ok(ip) = a.parse::<Ipv4Addr>() {
                            backends.push(Backend { ip, port: bport });
                        }
                    }
                }
            }
            backends.sort();
            backends.dedup();
            out.insert(
                Frontend {
                    vip,
                    port: fport,
                    proto,
                },
                backends,
            );
        }
    }
    out
}

/// What to write to go from `installed` to `want`: changed or new frontends
/// with their backends, and removed frontends with no backends.
pub fn diff(
    installed: &BTreeMap<Frontend, Vec<Backend>>,
    want: &BTreeMap<Frontend, Vec<Backend>>,
) -> Vec<ServiceSpec> {
    let mut out: Vec<ServiceSpec> = want
        .iter()
        .filter(|(fe, b)| installed.get(fe) != Some(b))
        .map(|(fe, b)| ServiceSpec {
            frontend: *fe,
            backends: b.clone(),
        })
        .collect();
    out.extend(
        installed
            .keys()
            .filter(|fe| !want.contains_key(fe))
            .map(|fe| ServiceSpec {
                frontend: *fe,
                backends: Vec::new(),
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mk_slice, mk_svc};

    #[test]
    fn cluster_ip_gets_only_ready_backends_on_the_target_port() {
        let want = desired(
            &[
                mk_svc("web", "10.96.0.10", 80),
                mk_svc("headless", "None", 80),
            ],
            &[mk_slice(
                "web",
                &[("10.0.0.5", true), ("10.0.0.6", false), ("10.0.0.7", true)],
                8080,
            )],
        );
        assert_eq!(want.len(), 1);
        let (fe, b) = want.iter().next().expect("one frontend");
        assert_eq!(fe.vip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(fe.port, 80);
        assert_eq!(
            b,
            &vec![
                Backend {
                    ip: Ipv4Addr::new(10, 0, 0, 5),
                    port: 8080
                },
                Backend {
                    ip: Ipv4Addr::new(10, 0, 0, 7),
                    port: 8080
                },
            ]
        );
    }

    #[test]
    fn diff_writes_changes_and_removes_gone_frontends() {
        let a = desired(
            &[mk_svc("a", "10.96.0.1", 80)],
            &[mk_slice("a", &[("10.0.0.5", true)], 80)],
        );
        let b = desired(&[mk_svc("b", "10.96.0.2", 80)], &[]);
        let ops = diff(&a, &b);
        assert_eq!(ops.len(), 2);
        assert!(
            ops.iter()
                .any(|s| s.frontend.vip == Ipv4Addr::new(10, 96, 0, 2))
        );
        assert!(
            ops.iter()
                .any(|s| s.frontend.vip == Ipv4Addr::new(10, 96, 0, 1) && s.backends.is_empty())
        );
        assert!(diff(&a, &a).is_empty());
    }
}
