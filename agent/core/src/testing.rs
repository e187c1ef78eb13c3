//! Small builders for tests of the pool and of what is built on it, and
//! of the service translation (feature `testing` for other crates' tests).

use std::{net::Ipv4Addr, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{
    pool::{AllocKey, AllocRequest, DEFAULT_COOLDOWN_MS, Pool},
    services::SERVICE_NAME_LABEL,
};

/// A request of container `id` for `eth0` of pod `default/pod-<id>`.
pub fn mk_req(id: &str) -> AllocRequest {
    AllocRequest {
        key: AllocKey {
            container_id: id.to_string(),
            ifname: "eth0".to_string(),
        },
        netns: format!("/var/run/netns/{id}"),
        pod_namespace: "default".to_string(),
        pod_name: format!("pod-{id}"),
    }
}

/// A pool of `10.0.0.1..=10.0.0.n` with the default cooldown.
pub fn mk_pool(n: u8) -> Pool {
    let mut p = Pool::new(DEFAULT_COOLDOWN_MS);
    p.set_pool((1..=n).map(|i| Ipv4Addr::new(10, 0, 0, i)));
    p
}

/// Service `default/<name>` with ClusterIP `ip` and TCP port `http` = `port`.
pub fn mk_svc(name: &str, ip: &str, port: i32) -> Arc<Service> {
    Arc::new(Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(K8sServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// EndpointSlice of Service `default/<svc>`: `(ip, ready)` endpoints on TCP port `http` = `port`.
pub fn mk_slice(svc: &str, eps: &[(&str, bool)], port: i32) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{svc}-abc")),
            namespace: Some("default".into()),
            labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(
            eps.iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    })
}
