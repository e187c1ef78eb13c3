//! `sextant-cni`: the CNI plugin (spec 1.0 / 1.1: ADD, DEL, CHECK, STATUS,
//! VERSION). It parses the runtime's environment and stdin into typed values
//! and forwards to the agent over its socket with a deadline; DEL falls back
//! to removing the host veth itself when the agent is down.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sextant_agent_api::{
    self as api, AgentState, CniReply, CniRequest, Health, SOCKET_PATH, blocking::call_json,
};

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// Default deadline for the agent's answer, seconds.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// Default deadline for the agent's answer to ADD, seconds: above the agent's
/// default wait for a fixed IP (`--fixed-ip-wait-seconds`, 30) plus wiring.
pub const DEFAULT_ADD_TIMEOUT_SECONDS: u64 = 60;

/// Network configuration from stdin.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version the runtime speaks.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin type (`sextant-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Agent socket; default `/var/run/sextant/api/agent.sock`.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Deadline for the agent's answer, seconds; default 10, and 60 for ADD
    /// (which may wait for a pod's fixed IP, 30 s by default, to reach the node).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// The operation and its parameters from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` (`K=V;K=V`).
    pub args: String,
}

impl CniEnv {
    /// Reads the CNI variables of this process.
    pub fn from_process() -> Self {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        CniEnv {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
        }
    }

    fn arg(&self, key: &str) -> String {
        self.args
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default()
    }
}

/// A CNI error result (printed on stdout, exit status 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniError {
    /// Spec version echoed back.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Well-known code (1 version, 4 env, 6 decode, 7 config, 11 retry, 50 unavailable) or 100+.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    fn new(version: &str, code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            cni_version: version.to_string(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// Runs one CNI invocation; `Ok(Some(json))` is printed on stdout.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": "1.1.0",
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            "1.1.0",
            6,
            "failed to decode network configuration",
            e.to_string(),
        )
    })?;
    let version = conf.cni_version.clone();
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            "1.1.0",
            1,
            format!("unsupported cniVersion {version}"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(
            &version,
            7,
            "network configuration has no name",
            "",
        ));
    }
    let socket = conf
        .agent_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(SOCKET_PATH));
    let default_timeout = if env.command == "ADD" {
        DEFAULT_ADD_TIMEOUT_SECONDS
    } else {
        DEFAULT_TIMEOUT_SECONDS
    };
    let deadline = Duration::from_secs(
        conf.timeout_seconds
            .unwrap_or(default_timeout)
            .clamp(1, 300),
    );
    let need = |name: &str, v: &str| {
        if v.is_empty() {
            Err(CniError::new(
                &version,
                4,
                format!("{name} is required"),
                "",
            ))
        } else {
            Ok(())
        }
    };
    let req = CniRequest {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        netns: env.netns.clone(),
        pod_namespace: env.arg("K8S_POD_NAMESPACE"),
        pod_name: env.arg("K8S_POD_NAME"),
    };
    let agent_err = |e: api::Error| {
        let code = match &e {
            api::Error::Connect { .. } => 11,
            _ => 100,
        };
        CniError::new(
            &version,
            code,
            "sextant agent refused",
            sextant_kit::ErrorChain(&e).to_string(),
        )
    };
    match env.command.as_str() {
        "ADD" => {
            need("CNI_CONTAINERID", &req.container_id)?;
            need("CNI_IFNAME", &req.ifname)?;
            need("CNI_NETNS", &req.netns)?;
            let r: CniReply = call_json(&socket, "POST", "/v1/cni/add", Some(&req), deadline)
                .map_err(agent_err)?;
            Ok(Some(add_result(&version, &req, &r)))
        }
        "DEL" => {
            need("CNI_CONTAINERID", &req.container_id)?;
            need("CNI_IFNAME", &req.ifname)?;
            match call_json::<Value>(&socket, "POST", "/v1/cni/del", Some(&req), deadline) {
                Ok(_) => Ok(None),
                Err(e) if e.is_unreachable() => {
                    // Agent down: clean what we can; its reconciliation frees the IP later.
                    let cleaned = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| crate::Error::io("starting a runtime", e))
                        .and_then(|rt| {
                            rt.block_on(async {
                                let h = super::veth::connect()?;
                                super::veth::teardown(&h, &req.container_id, &req.ifname).await
                            })
                        });
                    if let Err(e) = cleaned {
                        eprintln!(
                            "sextant-cni: agent down and local cleanup failed: {}",
                            sextant_kit::ErrorChain(&e)
                        );
                    }
                    Ok(None)
                }
                Err(e) => Err(agent_err(e)),
            }
        }
        "CHECK" => {
            need("CNI_CONTAINERID", &req.container_id)?;
            need("CNI_IFNAME", &req.ifname)?;
            let _: CniReply = call_json(&socket, "POST", "/v1/cni/check", Some(&req), deadline)
                .map_err(agent_err)?;
            Ok(None)
        }
        "STATUS" => {
            let h: Health = call_json(&socket, "GET", "/v1/healthz", None::<&()>, deadline)
                .map_err(|e| {
                    CniError::new(
                        &version,
                        50,
                        "sextant agent not available",
                        sextant_kit::ErrorChain(&e).to_string(),
                    )
                })?;
            status_verdict(&version, &h).map(|()| None)
        }
        "" => Err(CniError::new(&version, 4, "CNI_COMMAND is required", "")),
        other => Err(CniError::new(
            &version,
            4,
            format!("unknown CNI_COMMAND {other}"),
            "",
        )),
    }
}

/// CNI STATUS from the agent's health: an error only when the agent cannot
/// serve ADDs at all (50). An empty pool is not one: ADDs wait and are
/// reported as pending while the operator attaches addresses, and an error
/// here would have the runtime mark the node's network NotReady.
fn status_verdict(version: &str, h: &Health) -> Result<(), CniError> {
    match h.state {
        AgentState::Ready | AgentState::Degraded => Ok(()),
        other => Err(CniError::new(
            version,
            50,
            format!("sextant agent is {other}"),
            h.ipam.status.clone(),
        )),
    }
}

/// The ADD result in `version`'s shape (0.4.0's `ips` entries name their IP version).
fn add_result(version: &str, req: &CniRequest, r: &CniReply) -> Value {
    let mut ip = json!({ "address": format!("{}/32", r.ip), "gateway": r.gateway.to_string(), "interface": 1 });
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": r.host_ifname, "mac": r.host_mac },
            { "name": req.ifname, "mac": r.pod_mac, "sandbox": req.netns },
        ],
        "ips": [ ip ],
        "routes": [ { "dst": "0.0.0.0/0", "gw": r.gateway.to_string() } ],
        "dns": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> CniEnv {
        CniEnv {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0".into(),
        }
    }

    #[test]
    fn version_needs_no_config() {
        let v = run(&env("VERSION"), b"").expect("ok").expect("json");
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn bad_stdin_is_a_decode_error() {
        let e = run(&env("ADD"), b"{nope").expect_err("error");
        assert_eq!(e.code, 6);
        assert!(e.msg.contains("decode"));
    }

    #[test]
    fn unsupported_version_is_refused() {
        let e = run(
            &env("ADD"),
            br#"{"cniVersion":"0.1.0","name":"n","type":"sextant-cni"}"#,
        )
        .expect_err("error");
        assert_eq!(e.code, 1);
    }

    #[test]
    fn add_with_agent_down_asks_to_retry() {
        let dir = tempfile::tempdir().expect("dir");
        let conf = json!({"cniVersion":"1.0.0","name":"n","type":"sextant-cni",
            "agentSocket": dir.path().join("none.sock"), "timeoutSeconds": 1});
        let e = run(&env("ADD"), conf.to_string().as_bytes()).expect_err("error");
        assert_eq!(e.code, 11, "{e:?}");
    }

    fn health(state: AgentState, pool: usize, free: usize) -> Health {
        let mut h = Health {
            state,
            ..Default::default()
        };
        h.ipam.pool = pool;
        h.ipam.free = free;
        h
    }

    /// CNI 1.1 STATUS errors mean "the network is down": containerd marks
    /// the node's network NotReady and the node gets tainted. A node whose
    /// pool is used up is not down: its ADDs wait (reported as pending)
    /// while the operator attaches more addresses.
    #[test]
    fn status_with_an_empty_pool_is_not_a_network_outage() {
        assert!(status_verdict("1.1.0", &health(AgentState::Ready, 4, 0)).is_ok());
        assert!(status_verdict("1.1.0", &health(AgentState::Ready, 0, 0)).is_ok());
        assert!(
            status_verdict("1.1.0", &health(AgentState::Degraded, 4, 1)).is_ok(),
            "kernel routing still serves ADDs"
        );
        let e = status_verdict("1.1.0", &health(AgentState::Restoring, 4, 4))
            .expect_err("cannot serve ADD yet");
        assert_eq!(e.code, 50);
    }

    /// Each advertised version is answered in its own result shape: 0.4.0's
    /// `ips` entries carry `"version": "4"`, which 1.0 dropped.
    #[test]
    fn add_results_match_the_shape_of_their_version() {
        let req = CniRequest {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            pod_namespace: "default".into(),
            pod_name: "web-0".into(),
        };
        let reply = CniReply {
            ip: "10.0.0.7".parse().expect("ip"),
            gateway: "169.254.1.1".parse().expect("ip"),
            host_ifname: "sx0".into(),
            host_mac: "02:00:00:00:00:01".into(),
            pod_mac: "02:00:00:00:00:02".into(),
        };
        for version in SUPPORTED_VERSIONS {
            let r = add_result(version, &req, &reply);
            assert_eq!(r["cniVersion"], version);
            assert_eq!(r["ips"][0]["address"], "10.0.0.7/32");
            if version.starts_with("0.") {
                assert_eq!(r["ips"][0]["version"], "4", "{version}: {r}");
            } else {
                assert!(r["ips"][0].get("version").is_none(), "{version}: {r}");
            }
        }
        assert!(
            !SUPPORTED_VERSIONS.contains(&"1.0.0-rc"),
            "not a CNI version"
        );
    }

    #[test]
    fn cni_args_are_parsed() {
        assert_eq!(env("ADD").arg("K8S_POD_NAME"), "web-0");
        assert_eq!(env("ADD").arg("MISSING"), "");
    }
}
