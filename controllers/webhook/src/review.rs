//! AdmissionReview in, AdmissionReview out: parses the body into typed
//! values at the edge and answers every input with an AdmissionResponse.
//! Pure: no IO, no clock.

use std::collections::{BTreeSet, HashMap};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use k8s_openapi::api::core::v1::Pod;
use kube_core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use serde::Serialize;
use serde_json::Value;
use sextant_crds::wellknown::{
    ANNOTATION_SKIP_IP_RESOURCE, IP_RESOURCE, LABEL_ALLOW_POD_IP_OPT_OUT,
};

use crate::mutate::{Mutation, PodOptOut, mutate};

const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// What the review needs besides the body.
#[derive(Clone, Debug)]
pub struct ReviewConfig {
    /// Namespaces whose pods are never mutated (defence in depth beside the
    /// webhook's `namespaceSelector`).
    pub skip_namespaces: BTreeSet<String>,
    /// Whether pods' own opt-out counts: set per request by the path the
    /// API server called (the namespace's admin label picks the path).
    pub pod_opt_out: PodOptOut,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        ReviewConfig {
            skip_namespaces: BTreeSet::new(),
            pod_opt_out: PodOptOut::Refused,
        }
    }
}

/// How a review ended, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed with a patch.
    Patched,
    /// Allowed with a patch although the pod asked to opt out: its namespace
    /// does not allow pods to.
    PatchedOptOutRefused,
    /// Allowed unchanged; the label says why.
    Skipped(&'static str),
    /// Not a pod CREATE (wrong resource, operation or subresource): allowed
    /// unchanged.
    Ignored,
    /// The body was not a well-formed AdmissionReview: refused with a message.
    Invalid,
}

impl Verdict {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Patched => "patched",
            Verdict::PatchedOptOutRefused => "patched_opt_out_refused",
            Verdict::Skipped(why) => why,
            Verdict::Ignored => "ignored",
            Verdict::Invalid => "invalid",
        }
    }
}

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], config: &ReviewConfig) -> (AdmissionReview<DynamicObject>, Verdict) {
    match decide(body, config) {
        Ok((response, verdict)) => (response.into_review(), verdict),
        Err(response) => (response.into_review(), Verdict::Invalid),
    }
}

/// Serializes a review the way the API server documents it: `patch` as a
/// base64 string (kube-core's `Vec<u8>` would go out as an array of numbers).
/// The types are plain data, so this cannot fail in practice, and if it did
/// the answer would still be an AdmissionReview.
pub fn to_json(review: &AdmissionReview<DynamicObject>) -> Vec<u8> {
    let wire = WireReview {
        api_version: &review.types.api_version,
        kind: &review.types.kind,
        response: review.response.as_ref().map(|r| WireResponse {
            uid: &r.uid,
            allowed: r.allowed,
            status: &r.result,
            patch: r.patch.as_deref().map(|p| BASE64.encode(p)),
            patch_type: r.patch.as_ref().map(|_| "JSONPatch"),
            audit_annotations: &r.audit_annotations,
            warnings: r.warnings.as_ref(),
        }),
    };
    serde_json::to_vec(&wire).unwrap_or_else(|e| {
        let fallback = AdmissionResponse::invalid(format!("encoding the response: {e}"));
        serde_json::to_vec(&fallback.into_review()).unwrap_or_default()
    })
}

/// An AdmissionReview answer as it goes on the wire.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview<'a> {
    api_version: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<WireResponse<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse<'a> {
    uid: &'a str,
    allowed: bool,
    status: &'a kube_core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    audit_annotations: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

fn invalid(uid: &str, message: String) -> Box<AdmissionResponse> {
    let mut r = AdmissionResponse::invalid(message);
    // With the uid the API server can match the answer to its request.
    r.uid = uid.to_owned();
    Box::new(r)
}

fn wrong_type(uid: &str, api_version: &str, kind: &str) -> Box<AdmissionResponse> {
    invalid(
        uid,
        format!(
            "expected apiVersion {API_VERSION} kind {KIND}, got apiVersion {api_version:?} kind {kind:?}"
        ),
    )
}

/// Why `body` is not an AdmissionReview<Pod>, as precisely as it can be said.
fn diagnose(body: &[u8], typed: &serde_json::Error) -> Box<AdmissionResponse> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid("", format!("request body is not JSON: {e}")),
    };
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default();
    if field("apiVersion") != API_VERSION || field("kind") != KIND {
        return wrong_type(uid, field("apiVersion"), field("kind"));
    }
    invalid(uid, format!("malformed AdmissionReview: {typed}"))
}

fn decide(
    body: &[u8],
    config: &ReviewConfig,
) -> Result<(AdmissionResponse, Verdict), Box<AdmissionResponse>> {
    // One typed pass over the body; the slower reading for a precise message
    // only when that fails.
    let review: AdmissionReview<Pod> =
        serde_json::from_slice(body).map_err(|e| diagnose(body, &e))?;
    if review.types.api_version != API_VERSION || review.types.kind != KIND {
        let uid = review
            .request
            .as_ref()
            .map(|r| r.uid.as_str())
            .unwrap_or_default();
        return Err(wrong_type(
            uid,
            &review.types.api_version,
            &review.types.kind,
        ));
    }
    let uid = review
        .request
        .as_ref()
        .map(|r| r.uid.clone())
        .unwrap_or_default();
    let request: AdmissionRequest<Pod> = review
        .try_into()
        .map_err(|_| invalid(&uid, "AdmissionReview without a request".to_owned()))?;

    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let is_create = matches!(request.operation, Operation::Create);
    if !is_pod || !is_create || request.sub_resource.is_some() {
        let mut r = AdmissionResponse::from(&request);
        r.warnings = Some(vec![format!(
            "sextant webhook: {} {} not handled (only pod CREATE); allowed unchanged",
            request.kind.kind,
            operation_name(&request.operation),
        )]);
        return Ok((r, Verdict::Ignored));
    }
    if let Some(ns) = request.namespace.as_deref()
        && config.skip_namespaces.contains(ns)
    {
        return Ok((
            AdmissionResponse::from(&request),
            Verdict::Skipped("skipped_namespace"),
        ));
    }
    let Some(pod) = request.object.as_ref() else {
        return Err(invalid(&uid, "pod CREATE without an object".to_owned()));
    };
    match mutate(pod, config.pod_opt_out) {
        Mutation::Skip(why) => Ok((
            AdmissionResponse::from(&request),
            Verdict::Skipped(why.label()),
        )),
        Mutation::Patch {
            patch,
            opt_out_refused,
        } => {
            let mut r = AdmissionResponse::from(&request)
                .with_patch(patch)
                .map_err(|e| invalid(&uid, format!("encoding the patch: {e}")))?;
            if !opt_out_refused {
                return Ok((r, Verdict::Patched));
            }
            r.warnings = Some(vec![format!(
                "sextant webhook: {ANNOTATION_SKIP_IP_RESOURCE} is ignored: namespace {:?} \
                 does not carry {LABEL_ALLOW_POD_IP_OPT_OUT}=true, which only a cluster \
                 administrator sets; the pod asks for one {IP_RESOURCE}",
                request.namespace.as_deref().unwrap_or_default(),
            )]);
            Ok((r, Verdict::PatchedOptOutRefused))
        }
    }
}

/// The operation's name as the API spells it.
fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mk_review(kind: &str, operation: &str, namespace: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": KIND,
            "request": {
                "uid": "u-1",
                "kind": { "group": "", "version": "v1", "kind": kind },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "operation": operation,
                "namespace": namespace,
                "userInfo": {},
                "object": { "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" },
                            "spec": { "containers": [{ "name": "a" }] } }
            }
        }))
        .expect("encode")
    }

    fn answer(body: &[u8], config: &ReviewConfig) -> (Value, Verdict) {
        let (review, verdict) = review(body, config);
        let json: Value = serde_json::from_slice(&to_json(&review)).expect("answer is JSON");
        (json, verdict)
    }

    #[test]
    fn pod_create_is_patched_with_a_base64_patch() {
        let (json, verdict) = answer(
            &mk_review("Pod", "CREATE", "default"),
            &ReviewConfig::default(),
        );
        assert_eq!(verdict, Verdict::Patched);
        assert_eq!(json["response"]["uid"], "u-1");
        let b64 = json["response"]["patch"]
            .as_str()
            .expect("patch is a string");
        let bytes = BASE64.decode(b64).expect("base64");
        let ops: Value = serde_json::from_slice(&bytes).expect("patch JSON");
        assert_eq!(ops[0]["op"], "add");
        assert_eq!(ops[0]["path"], "/spec/containers/0/resources");
    }

    #[test]
    fn other_kinds_and_operations_are_allowed_unchanged() {
        for (kind, op) in [("Pod", "UPDATE"), ("Pod", "DELETE"), ("Service", "CREATE")] {
            let (json, verdict) = answer(&mk_review(kind, op, "default"), &ReviewConfig::default());
            assert_eq!(verdict, Verdict::Ignored, "{kind} {op}");
            assert_eq!(json["response"]["allowed"], true);
            assert!(json["response"].get("patch").is_none());
        }
    }

    #[test]
    fn skipped_namespaces_are_left_alone() {
        let config = ReviewConfig {
            skip_namespaces: ["kube-system".to_owned()].into(),
            ..ReviewConfig::default()
        };
        let (_, verdict) = answer(&mk_review("Pod", "CREATE", "kube-system"), &config);
        assert_eq!(verdict, Verdict::Skipped("skipped_namespace"));
    }

    #[test]
    fn garbage_is_invalid_with_a_message() {
        let (json, verdict) = answer(b"\x00\x01", &ReviewConfig::default());
        assert_eq!(verdict, Verdict::Invalid);
        assert_eq!(json["response"]["allowed"], false);
        assert!(
            json["response"]["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not JSON"))
        );
    }

    #[test]
    fn an_opt_out_the_namespace_does_not_allow_is_patched_with_a_warning() {
        let mut body: Value =
            serde_json::from_slice(&mk_review("Pod", "CREATE", "team-a")).expect("json");
        body["request"]["object"]["metadata"]["annotations"] =
            json!({ ANNOTATION_SKIP_IP_RESOURCE: "true" });
        let body = serde_json::to_vec(&body).expect("encode");
        let (json, verdict) = answer(&body, &ReviewConfig::default());
        assert_eq!(verdict, Verdict::PatchedOptOutRefused);
        assert!(json["response"]["patch"].is_string(), "{json}");
        let warning = json["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(
            warning.contains(LABEL_ALLOW_POD_IP_OPT_OUT) && warning.contains("team-a"),
            "{warning}"
        );
        let allowed = ReviewConfig {
            pod_opt_out: PodOptOut::Allowed,
            ..ReviewConfig::default()
        };
        let (json, verdict) = answer(&body, &allowed);
        assert_eq!(verdict, Verdict::Skipped("skipped_opted_out"));
        assert!(json["response"].get("patch").is_none());
    }
}
