//! The agent API's requests as the agent accepts them. The server decodes
//! each body into its wire type (`sextant-agent-api`, serde) and converts
//! it with `TryFrom` into a parsed type whose invariants the agent then
//! relies on; a refusal is a typed error naming the field.
//!
//! ```text
//!  body ─serde─▶ CniRequest ─TryFrom─▶ CniCall (containerId, ifname checked) ─▶ Agent::cni_del / cni_check
//!                          └─TryFrom─▶ CniAdd  (… and netns)                 ─▶ Agent::cni_add
//!  body ─serde─▶ ServiceSpec, PolicySnapshot (no further invariants)
//! ```

use std::ops::Deref;

use serde::de::DeserializeOwned;
use sextant_agent_api::CniRequest;

use crate::error::{Error, Result};

/// Longest Linux interface name (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = 15;

/// Decodes a request body into its wire type.
pub(crate) fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::RequestBody { source })
}

/// A CNI request with a container id and a valid interface name.
#[derive(Clone, Debug)]
pub struct CniCall(CniRequest);

impl TryFrom<CniRequest> for CniCall {
    type Error = Error;

    fn try_from(req: CniRequest) -> Result<Self> {
        if req.container_id.is_empty() {
            return Err(Error::MissingField {
                field: "containerId",
            });
        }
        if req.ifname.is_empty() {
            return Err(Error::MissingField { field: "ifname" });
        }
        if req.ifname.len() > IFNAME_MAX || req.ifname.contains('/') {
            return Err(Error::InvalidIfname { ifname: req.ifname });
        }
        Ok(CniCall(req))
    }
}

impl Deref for CniCall {
    type Target = CniRequest;

    fn deref(&self) -> &CniRequest {
        &self.0
    }
}

/// A CNI ADD: a [`CniCall`] that also names the pod's network namespace.
#[derive(Clone, Debug)]
pub struct CniAdd(CniCall);

impl TryFrom<CniRequest> for CniAdd {
    type Error = Error;

    fn try_from(req: CniRequest) -> Result<Self> {
        let call = CniCall::try_from(req)?;
        if call.netns.is_empty() {
            return Err(Error::MissingField { field: "netns" });
        }
        Ok(CniAdd(call))
    }
}

impl Deref for CniAdd {
    type Target = CniRequest;

    fn deref(&self) -> &CniRequest {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(container_id: &str, ifname: &str, netns: &str) -> CniRequest {
        serde_json::from_value(serde_json::json!({
            "containerId": container_id, "ifname": ifname, "netns": netns,
            "podNamespace": "default", "podName": "p",
        }))
        .expect("wire request")
    }

    #[test]
    fn cni_calls_need_an_id_and_a_linux_interface_name() {
        assert!(CniCall::try_from(req("c1", "eth0", "")).is_ok());
        assert!(matches!(
            CniCall::try_from(req("", "eth0", "")),
            Err(Error::MissingField {
                field: "containerId"
            })
        ));
        assert!(matches!(
            CniCall::try_from(req("c1", "", "")),
            Err(Error::MissingField { field: "ifname" })
        ));
        for bad in ["a-name-of-16-chr", "eth/0"] {
            let e = CniCall::try_from(req("c1", bad, "")).expect_err(bad);
            assert!(matches!(&e, Error::InvalidIfname { ifname } if ifname == bad));
            assert_eq!(e.metric_label(), "bad_request");
        }
    }

    #[test]
    fn an_add_also_needs_the_netns() {
        assert!(matches!(
            CniAdd::try_from(req("c1", "eth0", "")),
            Err(Error::MissingField { field: "netns" })
        ));
        let add = CniAdd::try_from(req("c1", "eth0", "/var/run/netns/p")).expect("add");
        assert_eq!(add.netns, "/var/run/netns/p");
    }

    #[test]
    fn a_body_that_does_not_decode_is_a_bad_request() {
        let e = body::<CniRequest>(b"{").expect_err("truncated");
        assert!(matches!(e, Error::RequestBody { .. }));
        assert!(e.is_bad_request());
    }
}
