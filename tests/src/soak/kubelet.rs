//! A small kubelet for the soak: every half second it lists the pods of one
//! namespace and, per node, makes the node's agent hold exactly the pods
//! bound there. A new pod gets a netns of its own and a CNI ADD through its
//! node's agent API (the body `sextant-cni` sends, container id = pod UID);
//! a pod gone or terminating gets a CNI DEL and its netns removed. An ADD
//! that fails (agent down, address not there yet) is retried after
//! [`RETRY`], as the kubelet retries a sandbox. A node taken out
//! ([`Kubelet::remove_node`]) takes its sandboxes with it, without DEL.
//!
//! Every successful ADD is recorded by pod name, so the auditor can tell
//! whether a StatefulSet pod ever came back with another address.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use serde_json::json;

use super::node::{agent_call, ip};

/// How long a failed ADD waits before the next attempt.
pub const RETRY: Duration = Duration::from_secs(2);
/// How long one ADD may take (the agent's fixed-IP wait is shorter).
const ADD_TIMEOUT: Duration = Duration::from_secs(90);

/// One pod's sandbox: its netns and the address its ADD returned.
#[derive(Clone, Debug)]
pub struct Sandbox {
    /// Pod name.
    pub pod: String,
    /// Node it was added on.
    pub node: String,
    /// Its netns name.
    pub netns: String,
    /// The address.
    pub ip: Ipv4Addr,
}

/// What the driver has done so far.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Live sandboxes by pod UID.
    pub sandboxes: BTreeMap<String, Sandbox>,
    /// Every address a successful ADD gave each pod name, in order.
    pub history: BTreeMap<String, Vec<Ipv4Addr>>,
    /// ADDs that failed (retried).
    pub add_failures: u64,
    /// DELs that failed (retried).
    pub del_failures: u64,
    /// The last few failures, for the report.
    pub last_errors: Vec<String>,
    in_flight: BTreeSet<String>,
    not_before: BTreeMap<String, Instant>,
}

impl Ledger {
    fn error(&mut self, e: String) {
        self.last_errors.push(e);
        if self.last_errors.len() > 8 {
            self.last_errors.remove(0);
        }
    }
}

struct Inner {
    pods: Api<Pod>,
    namespace: String,
    /// Node name to its agent socket, while the agent may be called.
    nodes: Mutex<BTreeMap<String, PathBuf>>,
    ledger: Mutex<Ledger>,
}

/// The running driver; stops when dropped.
pub struct Kubelet {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Kubelet {
    /// Starts driving the pods of `namespace`.
    pub fn start(client: Client, namespace: &str) -> Kubelet {
        let inner = Arc::new(Inner {
            pods: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            nodes: Mutex::default(),
            ledger: Mutex::default(),
        });
        let task = tokio::spawn({
            let inner = inner.clone();
            async move {
                loop {
                    if let Err(e) = inner.sync().await {
                        lock(&inner.ledger).error(format!("listing pods: {e:#}"));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        });
        Kubelet { inner, task }
    }

    /// Node `name`'s agent answers at `socket`.
    pub fn add_node(&self, name: &str, socket: PathBuf) {
        lock(&self.inner.nodes).insert(name.to_owned(), socket);
    }

    /// Node `name` is gone: its sandboxes are forgotten (its netns took
    /// their veths; their netns are removed here).
    pub fn remove_node(&self, name: &str) {
        lock(&self.inner.nodes).remove(name);
        let mut ledger = lock(&self.inner.ledger);
        let gone: Vec<String> = ledger
            .sandboxes
            .iter()
            .filter(|(_, s)| s.node == name)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(s) = ledger.sandboxes.remove(&uid) {
                let _ = ip(&["netns", "del", &s.netns]);
            }
        }
    }

    /// Runs `f` on the ledger.
    pub fn with_ledger<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(&lock(&self.inner.ledger))
    }

    /// Whether every pod bound to a known node has a sandbox, no sandbox
    /// is left for a pod gone, and nothing is in flight; the pods it
    /// still waits for otherwise.
    pub async fn settled(&self) -> anyhow::Result<Result<(), String>> {
        let pods = self.inner.pods.list(&ListParams::default()).await?;
        let nodes = lock(&self.inner.nodes).clone();
        let ledger = lock(&self.inner.ledger);
        let mut waiting = Vec::new();
        let mut live = BTreeSet::new();
        for p in &pods.items {
            let (Some(uid), Some(node)) = (
                p.metadata.uid.clone(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                waiting.push(format!(
                    "{} unscheduled",
                    p.metadata.name.clone().unwrap_or_default()
                ));
                continue;
            };
            if p.metadata.deletion_timestamp.is_some() || !nodes.contains_key(&node) {
                continue;
            }
            live.insert(uid.clone());
            if !ledger.sandboxes.contains_key(&uid) {
                waiting.push(format!(
                    "{} on {node} without a sandbox",
                    p.metadata.name.clone().unwrap_or_default()
                ));
            }
        }
        for (uid, s) in &ledger.sandboxes {
            if !live.contains(uid) {
                waiting.push(format!("{} ({uid}) gone but not deleted", s.pod));
            }
        }
        if !ledger.in_flight.is_empty() {
            waiting.push(format!("{} CNI calls in flight", ledger.in_flight.len()));
        }
        Ok(if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting.join(", "))
        })
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        for s in lock(&self.inner.ledger).sandboxes.values() {
            let _ = ip(&["netns", "del", &s.netns]);
        }
    }
}

impl Inner {
    /// One pass: ADD what is bound and missing, DEL what is gone.
    async fn sync(self: &Arc<Self>) -> anyhow::Result<()> {
        let pods = self.pods.list(&ListParams::default()).await?;
        let nodes = lock(&self.nodes).clone();
        let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
        for p in pods.items {
            let (Some(uid), Some(name), Some(node)) = (
                p.metadata.uid.clone(),
                p.metadata.name.clone(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            if p.metadata.deletion_timestamp.is_none() {
                wanted.insert(uid, (name, node));
            }
        }
        let mut ledger = lock(&self.ledger);
        let now = Instant::now();
        for (uid, (name, node)) in &wanted {
            let Some(socket) = nodes.get(node) else {
                continue;
            };
            if ledger.sandboxes.contains_key(uid)
                || ledger.in_flight.contains(uid)
                || ledger.not_before.get(uid).is_some_and(|t| *t > now)
            {
                continue;
            }
            ledger.in_flight.insert(uid.clone());
            tokio::spawn(
                self.clone()
                    .add(uid.clone(), name.clone(), node.clone(), socket.clone()),
            );
        }
        let stale: Vec<(String, Sandbox)> = ledger
            .sandboxes
            .iter()
            .filter(|(uid, _)| !wanted.contains_key(*uid) && !ledger.in_flight.contains(*uid))
            .map(|(u, s)| (u.clone(), s.clone()))
            .collect();
        for (uid, sandbox) in stale {
            let Some(socket) = nodes.get(&sandbox.node) else {
                continue;
            };
            ledger.in_flight.insert(uid.clone());
            tokio::spawn(self.clone().del(uid, sandbox, socket.clone()));
        }
        Ok(())
    }

    fn body(&self, uid: &str, netns: &str, pod: &str) -> serde_json::Value {
        json!({
            "containerId": uid, "ifname": "eth0", "netns": format!("/var/run/netns/{netns}"),
            "podNamespace": self.namespace, "podName": pod,
        })
    }

    async fn add(self: Arc<Self>, uid: String, pod: String, node: String, socket: PathBuf) {
        let netns = format!("sxp-{}", &uid[..uid.len().min(12)]);
        let result = async {
            let _ = ip(&["netns", "del", &netns]);
            ip(&["netns", "add", &netns])?;
            let (code, v) = agent_call(
                &socket,
                "POST",
                "/v1/cni/add",
                Some(&self.body(&uid, &netns, &pod)),
                ADD_TIMEOUT,
            )
            .await?;
            anyhow::ensure!(code == 200, "ADD {pod} on {node}: {code} {v}");
            let ip: Ipv4Addr = v["ip"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("ADD {pod} on {node}: no ip in {v}"))?;
            Ok(ip)
        }
        .await;
        let mut ledger = lock(&self.ledger);
        ledger.in_flight.remove(&uid);
        match result {
            Ok(addr) => {
                ledger.history.entry(pod.clone()).or_default().push(addr);
                ledger.sandboxes.insert(
                    uid,
                    Sandbox {
                        pod,
                        node,
                        netns,
                        ip: addr,
                    },
                );
            }
            Err(e) => {
                let _ = ip(&["netns", "del", &netns]);
                ledger.add_failures += 1;
                ledger.error(format!("{e:#}"));
                ledger.not_before.insert(uid, Instant::now() + RETRY);
            }
        }
    }

    async fn del(self: Arc<Self>, uid: String, sandbox: Sandbox, socket: PathBuf) {
        let result = agent_call(
            &socket,
            "POST",
            "/v1/cni/del",
            Some(&self.body(&uid, &sandbox.netns, &sandbox.pod)),
            Duration::from_secs(30),
        )
        .await;
        let mut ledger = lock(&self.ledger);
        ledger.in_flight.remove(&uid);
        match result {
            Ok((200 | 204, _)) => {
                let _ = ip(&["netns", "del", &sandbox.netns]);
                ledger.sandboxes.remove(&uid);
            }
            Ok((code, v)) => {
                ledger.del_failures += 1;
                ledger.error(format!(
                    "DEL {} on {}: {code} {v}",
                    sandbox.pod, sandbox.node
                ));
            }
            Err(e) => {
                ledger.del_failures += 1;
                ledger.error(format!("DEL {} on {}: {e:#}", sandbox.pod, sandbox.node));
            }
        }
    }
}
