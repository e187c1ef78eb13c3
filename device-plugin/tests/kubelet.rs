//! The plugin against a loopback stand-in for kubelet's Registration service
//! (the real v1beta1 proto over a unix socket in a temp dir) and a loopback
//! agent speaking docs/agent-api.md.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use sextant_device_plugin::{
    api::{
        AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest, Device,
        Empty, ListAndWatchResponse, PreferredAllocationRequest, RegisterRequest,
        device_plugin_client::DevicePluginClient,
        registration_server::{Registration, RegistrationServer},
    },
    devices::{Policy, device_id},
    metrics::Metrics,
    paths::{KUBELET_SOCKET, RESOURCE_NAME},
    registration::unix_channel,
    runtime::{Config, run},
};
use tokio::{
    net::UnixListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Code, Request, Response, Status, codec::Streaming, transport::Server};

const WAIT: Duration = Duration::from_secs(10);
const CALL: Duration = Duration::from_secs(2);
const PLUGIN_SOCKET: &str = "sextant-ip.sock";

/// What the stand-in kubelet saw at Register: the request, and the plugin's
/// options read back over the plugin's own socket while Register was still
/// open (so the plugin must be serving before it registers).
type Registered = (RegisterRequest, Result<bool, String>);

struct FakeKubelet {
    dir: PathBuf,
    seen: mpsc::UnboundedSender<Registered>,
}

#[tonic::async_trait]
impl Registration for FakeKubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        let options = async {
            let channel = unix_channel(&self.dir.join(&req.endpoint), CALL)
                .await
                .map_err(|e| e.to_string())?;
            let opts = DevicePluginClient::new(channel)
                .get_device_plugin_options(Empty {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            Ok(opts.get_preferred_allocation_available)
        }
        .await;
        let _ = self.seen.send((req, options));
        Ok(Response::new(Empty {}))
    }
}

/// Serves Registration on `dir/kubelet.sock` until the handle is aborted.
fn start_kubelet(dir: &Path) -> (JoinHandle<()>, mpsc::UnboundedReceiver<Registered>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let path = dir.join(KUBELET_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind kubelet.sock");
    let kubelet = FakeKubelet {
        dir: dir.to_owned(),
        seen: tx,
    };
    let task = tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(RegistrationServer::new(kubelet))
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    });
    (task, rx)
}

/// An agent serving `GET /v1/healthz` with a body the test sets.
#[derive(Clone)]
struct FakeAgent {
    reply: Arc<Mutex<(u16, String)>>,
}

impl FakeAgent {
    fn start(path: &Path) -> (FakeAgent, JoinHandle<()>) {
        let agent = FakeAgent {
            reply: Arc::new(Mutex::new((200, String::new()))),
        };
        let listener = UnixListener::bind(path).expect("bind agent.sock");
        let shared = agent.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (status, body) = if req.uri().path() == "/v1/healthz" {
                            shared.reply.lock().expect("lock").clone()
                        } else {
                            (404, "not found".into())
                        };
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() =
                            http::StatusCode::from_u16(status).expect("test status");
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (agent, task)
    }

    fn set(&self, state: &str, capacity: u64, unavailable: u64) {
        let body = serde_json::json!({
            "state": state,
            "ipam": {
                "status": "IPv4: 2/10 allocated",
                "allocated": 2, "pool": 10, "free": 7, "cooldown": 1,
                "capacity": capacity, "unavailable": unavailable
            },
            "datapath": { "loaded": true, "pinned": "/sys/fs/bpf/sextant", "endpoints": 2, "services": 0 }
        });
        *self.reply.lock().expect("lock") = (200, body.to_string());
    }

    fn fail(&self) {
        *self.reply.lock().expect("lock") = (500, "datapath not loaded".into());
    }
}

struct Lab {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    agent: FakeAgent,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    plugin: JoinHandle<sextant_device_plugin::Result<()>>,
}

impl Lab {
    fn start(agent_setup: impl FnOnce(&FakeAgent)) -> Lab {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("device-plugins");
        std::fs::create_dir(&dir).expect("mkdir");
        let agent_socket = tmp.path().join("agent.sock");
        let (agent, _agent_task) = FakeAgent::start(&agent_socket);
        agent_setup(&agent);
        let config = Config {
            dir: dir.clone(),
            socket_name: PLUGIN_SOCKET.into(),
            agent_socket,
            poll_interval: Duration::from_millis(100),
            agent_timeout: Duration::from_millis(500),
            kubelet_timeout: Duration::from_secs(1),
            policy: Policy {
                max_devices: 4096,
                agent_down_after: 2,
            },
        };
        let metrics = Metrics::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let plugin = tokio::spawn(run(config, metrics.clone(), async {
            let _ = stopped.await;
        }));
        Lab {
            _tmp: tmp,
            dir,
            agent,
            metrics,
            stop: Some(stop),
            plugin,
        }
    }

    async fn client(&self) -> DevicePluginClient<tonic::transport::Channel> {
        let channel = unix_channel(&self.dir.join(PLUGIN_SOCKET), CALL)
            .await
            .expect("connect to the plugin socket");
        DevicePluginClient::new(channel)
    }

    async fn list_and_watch(&self) -> Streaming<ListAndWatchResponse> {
        self.client()
            .await
            .list_and_watch(Empty {})
            .await
            .expect("ListAndWatch")
            .into_inner()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(WAIT, &mut self.plugin)
            .await
            .expect("plugin stops in time")
            .expect("plugin task");
        assert!(result.is_ok(), "plugin ended with {result:?}");
        assert!(
            !self.dir.join(PLUGIN_SOCKET).exists(),
            "the plugin removes its socket on shutdown"
        );
    }

    async fn wait_for_metric(&self, needle: &str) {
        let found = tokio::time::timeout(WAIT, async {
            while !self.metrics_text().contains(needle) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "{needle} not in\n{}", self.metrics_text());
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry())
            .expect("encode metrics");
        text
    }
}

async fn next_registration(rx: &mut mpsc::UnboundedReceiver<Registered>) -> Registered {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("registration within the deadline")
        .expect("kubelet stand-in alive")
}

async fn next_list(stream: &mut Streaming<ListAndWatchResponse>) -> Vec<Device> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a device list within the deadline")
        .expect("stream healthy")
        .expect("stream open")
        .devices
}

fn health(devices: &[Device]) -> (usize, usize) {
    let healthy = devices.iter().filter(|d| d.health == "Healthy").count();
    (healthy, devices.len() - healthy)
}

async fn wait_for_socket(path: &Path) {
    tokio::time::timeout(WAIT, async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("socket appears");
}

#[tokio::test]
async fn registers_sextant_ip_only_after_serving_and_lists_agent_capacity() {
    let lab = Lab::start(|a| a.set("ready", 5, 1));
    let (_kubelet, mut registrations) = start_kubelet(&lab.dir);
    let (req, options) = next_registration(&mut registrations).await;
    assert_eq!(req.version, "v1beta1");
    assert_eq!(req.resource_name, RESOURCE_NAME);
    assert_eq!(req.endpoint, PLUGIN_SOCKET);
    assert_eq!(
        req.options.map(|o| o.get_preferred_allocation_available),
        Some(true)
    );
    assert_eq!(options, Ok(true), "plugin answered while Register was open");

    let mut stream = lab.list_and_watch().await;
    let devices = next_list(&mut stream).await;
    assert_eq!(health(&devices), (4, 1));
    assert_eq!(devices[0].id, device_id(0));
    assert_eq!(devices[4].id, device_id(4));
    assert_eq!(
        devices[4].health, "Unhealthy",
        "the highest ids turn unhealthy"
    );

    let text = lab.metrics_text();
    assert!(
        text.contains("sextant_device_plugin_capacity_devices 5"),
        "{text}"
    );
    assert!(
        text.contains("sextant_device_plugin_healthy_devices 4"),
        "{text}"
    );
    lab.wait_for_metric(r#"sextant_device_plugin_registrations_total{result="ok"} 1"#)
        .await;
    lab.stop().await;
}

#[tokio::test]
async fn list_and_watch_follows_capacity_changes_with_stable_ids() {
    let lab = Lab::start(|a| a.set("ready", 3, 0));
    let (_kubelet, mut registrations) = start_kubelet(&lab.dir);
    assert_eq!(next_registration(&mut registrations).await.1, Ok(true));
    let mut stream = lab.list_and_watch().await;
    let first = next_list(&mut stream).await;
    assert_eq!(health(&first), (3, 0));

    // Outlive the per-call deadline (1 s): the stream is not a call that times out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lab.agent.set("ready", 6, 2);
    let grown = next_list(&mut stream).await;
    assert_eq!(health(&grown), (4, 2));
    assert_eq!(first[..], grown[..3], "existing devices keep their ids");

    // Restoring: counts are not final, nothing changes; then ready again.
    lab.agent.set("restoring", 0, 0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    lab.agent.set("ready", 2, 0);
    let shrunk = next_list(&mut stream).await;
    assert_eq!(
        health(&shrunk),
        (2, 0),
        "restoring never published an empty list"
    );

    // Agent down for 2 polls: every device unhealthy.
    lab.agent.fail();
    let down = next_list(&mut stream).await;
    assert_eq!(health(&down), (0, 2));
    let text = lab.metrics_text();
    assert!(
        text.contains(r#"sextant_device_plugin_agent_polls_total{result="agent_status"}"#),
        "{text}"
    );
    lab.stop().await;
}

#[tokio::test]
async fn allocate_and_preferred_allocation_follow_the_advertised_devices() {
    let lab = Lab::start(|a| a.set("ready", 4, 0));
    let (_kubelet, mut registrations) = start_kubelet(&lab.dir);
    assert_eq!(next_registration(&mut registrations).await.1, Ok(true));
    let mut client = lab.client().await;

    let ok = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![device_id(3)],
            }],
        })
        .await
        .expect("Allocate of an advertised device")
        .into_inner();
    assert_eq!(ok.container_responses.len(), 1);

    let err = client
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: vec![device_id(9)],
            }],
        })
        .await
        .expect_err("unknown device is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ip-00009"), "{}", err.message());

    let preferred = client
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: vec![device_id(3), device_id(1), device_id(2)],
                must_include_device_i_ds: vec![device_id(3)],
                allocation_size: 2,
            }],
        })
        .await
        .expect("GetPreferredAllocation")
        .into_inner();
    assert_eq!(
        preferred.container_responses[0].device_i_ds,
        vec![device_id(3), device_id(1)]
    );

    client
        .pre_start_container(sextant_device_plugin::api::PreStartContainerRequest {
            devices_ids: vec![device_id(0)],
        })
        .await
        .expect("PreStartContainer");
    lab.stop().await;
}

#[tokio::test]
async fn registers_again_after_kubelet_restarts() {
    let lab = Lab::start(|a| a.set("ready", 3, 0));
    let (kubelet, mut registrations) = start_kubelet(&lab.dir);
    assert_eq!(next_registration(&mut registrations).await.1, Ok(true));

    // Kubelet restart: the process goes away, it deletes every socket in the
    // directory, and comes back with a new kubelet.sock.
    kubelet.abort();
    std::fs::remove_file(lab.dir.join(KUBELET_SOCKET)).expect("remove kubelet.sock");
    std::fs::remove_file(lab.dir.join(PLUGIN_SOCKET)).expect("remove plugin socket");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (kubelet, mut registrations) = start_kubelet(&lab.dir);
    let (req, options) = next_registration(&mut registrations).await;
    assert_eq!(req.resource_name, RESOURCE_NAME);
    assert_eq!(options, Ok(true), "served again before registering again");
    wait_for_socket(&lab.dir.join(PLUGIN_SOCKET)).await;
    let mut stream = lab.list_and_watch().await;
    assert_eq!(health(&next_list(&mut stream).await), (3, 0));

    // A kubelet.sock replaced while our socket stays: register again too.
    kubelet.abort();
    let (_kubelet, mut registrations) = start_kubelet(&lab.dir);
    assert_eq!(next_registration(&mut registrations).await.1, Ok(true));

    // The stand-in reports Register before its answer reaches the plugin.
    lab.wait_for_metric(r#"sextant_device_plugin_registrations_total{result="ok"} 3"#)
        .await;
    lab.stop().await;
}

#[tokio::test]
async fn waits_for_kubelet_and_registers_when_it_appears() {
    let lab = Lab::start(|a| a.set("ready", 2, 0));
    wait_for_socket(&lab.dir.join(PLUGIN_SOCKET)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_kubelet, mut registrations) = start_kubelet(&lab.dir);
    let (req, _) = next_registration(&mut registrations).await;
    assert_eq!(req.endpoint, PLUGIN_SOCKET);
    lab.stop().await;
}
