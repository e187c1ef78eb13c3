//! ClusterIP services for the datapath: a pure translation of Services and
//! EndpointSlices into frontends and their ready backends, a pure diff
//! against what is installed, and the watch loop that applies it.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tracing::warn;

use sextant_agent_api::{Backend, Frontend, Proto, ServiceSpec};

use crate::agent::Agent;

/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Desired datapath state: every ClusterIP frontend and its ready backends.
pub fn desired(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> BTreeMap<Frontend, Vec<Backend>> {
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(vip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue; // headless ("None") or not yet assigned
        };
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let own: Vec<&EndpointSlice> = slices
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| {
                s.namespace().unwrap_or_default() == ns
                    && s.labels().get(SERVICE_NAME_LABEL) == Some(&name)
                    && s.address_type == "IPv4"
            })
            .collect();
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
            for slice in &own {
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

/// Watches Services and EndpointSlices cluster-wide and keeps the datapath's
/// service maps equal to [`desired`].
pub async fn watch(agent: Arc<Agent>, client: Client) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
    let svcs = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .map(|_| ());
    let eps = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(eps_writer)
    .map(|_| ());
    let mut events = std::pin::pin!(futures::stream::select(svcs, eps));
    let mut installed = BTreeMap::new();
    while events.next().await.is_some() {
        // Let a burst of events land before recomputing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let want = desired(&svc_store.state(), &eps_store.state());
        for spec in diff(&installed, &want) {
            if let Err(e) = agent.set_service(&spec) {
                warn!(error = %sextant_kit::ErrorChain(&e), vip = %spec.frontend.vip, "programming service");
            }
        }
        installed = want;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        core::v1::{ServicePort, ServiceSpec as K8sServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort},
    };
    use kube::api::ObjectMeta;

    use super::*;

    pub(super) fn mk_svc(name: &str, ip: &str, port: i32) -> Arc<Service> {
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

    pub(super) fn mk_slice(svc: &str, eps: &[(&str, bool)], port: i32) -> Arc<EndpointSlice> {
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

#[cfg(test)]
mod kube_tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::{
        tests::{mk_slice, mk_svc},
        *,
    };
    use crate::agent::Config;

    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = crate::datapath::remove_pins(&self.0);
        }
    }

    /// Services and EndpointSlices listed from the API server end up in the
    /// datapath's service map.
    #[tokio::test]
    async fn watched_cluster_ip_is_programmed_into_the_datapath() {
        let test = format!(
            "{}: {}",
            file!(),
            sextant_testkit::current_test("watched_cluster_ip_is_programmed_into_the_datapath")
        );
        if !sextant_testkit::require(
            sextant_testkit::Tier::Kernel,
            sextant_testkit::root_unavailable(),
            &test,
        ) {
            return;
        }
        let root = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/sextant-test-svcwatch-{}",
            std::process::id()
        ));
        let _pins = Pins(root.clone());
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(Config {
            state_dir: dir.path().to_path_buf(),
            bpf_root: Some(root),
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let svc = mk_svc("web", "10.96.5.5", 80);
        let slice = mk_slice("web", &[("10.0.0.9", true), ("10.0.0.10", true)], 8080);

        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        let watch = tokio::spawn(super::watch(agent.clone(), client));
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while agent.health().datapath.services == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "service never programmed"
            );
            let Ok(Some((req, send))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            else {
                continue;
            };
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            if query.contains("watch=true") {
                held.push(send);
                continue;
            }
            let body = match path.as_str() {
                "/api/v1/services" => json!({"apiVersion": "v1", "kind": "ServiceList",
                    "metadata": {"resourceVersion": "1"}, "items": [svc.as_ref()]}),
                "/apis/discovery.k8s.io/v1/endpointslices" => {
                    json!({"apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"}, "items": [slice.as_ref()]})
                }
                other => panic!("unexpected request {other}?{query}"),
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(body.to_string().into_bytes()))
                    .expect("response"),
            );
        }
        assert_eq!(agent.health().datapath.services, 1);
        watch.abort();
    }
}
