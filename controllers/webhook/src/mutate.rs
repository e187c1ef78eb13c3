//! The pure decision: which JSONPatch makes a pod ask for one `sextant.io/ip`.

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use serde_json::{Value, json};

use sextant_crds::wellknown::{ANNOTATION_SKIP_IP_RESOURCE, IP_RESOURCE};

/// Why a pod is left as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `hostNetwork: true`: the pod uses the node's IP, not a pod IP.
    HostNetwork,
    /// The pod carries [`ANNOTATION_SKIP_IP_RESOURCE`]` = "true"` and its
    /// namespace lets pods opt out ([`PodOptOut::Allowed`]).
    OptedOut,
    /// Some container (regular, init or ephemeral) already has the resource
    /// in limits or requests: the pod is already counted.
    AlreadyPresent,
    /// No spec or no containers: nothing to attach the resource to (the API
    /// server rejects such a pod on its own).
    NoContainers,
}

impl Skip {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Skip::HostNetwork => "skipped_host_network",
            Skip::OptedOut => "skipped_opted_out",
            Skip::AlreadyPresent => "skipped_already_present",
            Skip::NoContainers => "skipped_no_containers",
        }
    }
}

/// Whether the pod's own `sextant.io/skip-ip-resource` label or annotation
/// counts. A pod author could otherwise take an IP without being counted by
/// the device plugin and the extender, so only namespaces an administrator
/// labels `sextant.io/allow-pod-ip-opt-out=true` honour it; the chart sends
/// those namespaces' reviews to [`OPT_OUT_PATH`](crate::server::OPT_OUT_PATH).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodOptOut {
    /// The namespace allows pods to opt out.
    Allowed,
    /// The pod is counted whatever it carries.
    Refused,
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    /// Apply this patch; `opt_out_refused` when the pod asked to opt out in
    /// a namespace that does not allow it (the review says so in a warning).
    Patch {
        /// The JSONPatch.
        patch: Patch,
        /// The pod carried the opt-out the namespace does not honour.
        opt_out_refused: bool,
    },
    /// Leave the pod as it is.
    Skip(Skip),
}

/// Adds `sextant.io/ip: "1"` to the limits and requests of the pod's first
/// regular container, creating `resources`, `limits` or `requests` where
/// missing.
///
/// One container only: the scheduler sums regular containers, so one unit
/// per pod is one IP per pod. Init containers are never touched: a pod's
/// effective request is max(init, sum(regular)), so the regular container's
/// unit already covers them, and a unit on both would not count twice but
/// would make kubelet allocate a device to each.
pub fn mutate(pod: &Pod, opt_out: PodOptOut) -> Mutation {
    let Some(spec) = pod.spec.as_ref() else {
        return Mutation::Skip(Skip::NoContainers);
    };
    if spec.host_network == Some(true) {
        return Mutation::Skip(Skip::HostNetwork);
    }
    let asked_out = opted_out(pod);
    if asked_out && opt_out == PodOptOut::Allowed {
        return Mutation::Skip(Skip::OptedOut);
    }
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| &c.resources);
    let has_resource = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| &c.resources)
        .chain(ephemeral)
        .any(|r| r.as_ref().is_some_and(asks_for_resource));
    if has_resource {
        return Mutation::Skip(Skip::AlreadyPresent);
    }
    match spec.containers.first() {
        Some(c) => Mutation::Patch {
            patch: Patch(add_resource(c, 0)),
            opt_out_refused: asked_out,
        },
        None => Mutation::Skip(Skip::NoContainers),
    }
}

fn opted_out(pod: &Pod) -> bool {
    let set = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(ANNOTATION_SKIP_IP_RESOURCE))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    };
    set(&pod.metadata.annotations) || set(&pod.metadata.labels)
}

fn asks_for_resource(r: &ResourceRequirements) -> bool {
    let has = |m: &Option<std::collections::BTreeMap<String, _>>| {
        m.as_ref().is_some_and(|m| m.contains_key(IP_RESOURCE))
    };
    has(&r.limits) || has(&r.requests)
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// The operations for container `index`; `PointerBuf` escapes the `/` in
/// `sextant.io/ip` as `~1`.
fn add_resource(c: &Container, index: usize) -> Vec<PatchOperation> {
    let i = index.to_string();
    let base = ["spec", "containers", i.as_str(), "resources"];
    let one = json!({ IP_RESOURCE: "1" });
    let Some(r) = c.resources.as_ref() else {
        return vec![add(&base, json!({ "limits": one, "requests": one }))];
    };
    let mut ops = Vec::with_capacity(2);
    for (field, present) in [
        ("limits", r.limits.is_some()),
        ("requests", r.requests.is_some()),
    ] {
        if present {
            let path = [&base[..], &[field, IP_RESOURCE]].concat();
            ops.push(add(&path, json!("1")));
        } else {
            let path = [&base[..], &[field]].concat();
            ops.push(add(&path, one.clone()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": "web-0", "namespace": "default" },
            "spec": spec,
        }))
        .expect("test pod parses")
    }

    /// The pod after applying what `mutate` says.
    fn apply(pod: &Pod) -> Value {
        let mut doc = serde_json::to_value(pod).expect("pod to json");
        if let Mutation::Patch { patch, .. } = mutate(pod, PodOptOut::Refused) {
            json_patch::patch(&mut doc, &patch).expect("patch applies");
        }
        doc
    }

    #[test]
    fn plain_pod_gets_resources_created() {
        let pod = mk_pod(json!({ "containers": [{ "name": "app", "image": "nginx" }] }));
        let out = apply(&pod);
        let r = &out["spec"]["containers"][0]["resources"];
        assert_eq!(r["limits"][IP_RESOURCE], "1");
        assert_eq!(r["requests"][IP_RESOURCE], "1");
    }

    #[test]
    fn existing_limits_and_requests_are_kept() {
        let pod = mk_pod(json!({ "containers": [{ "name": "app", "resources": {
            "limits": { "cpu": "1" }, "requests": { "memory": "1Gi" } } }] }));
        let Mutation::Patch { patch: p, .. } = mutate(&pod, PodOptOut::Refused) else {
            panic!("expected a patch");
        };
        let text = serde_json::to_string(&p).expect("patch to json");
        assert!(
            text.contains("/spec/containers/0/resources/limits/sextant.io~1ip"),
            "{text}"
        );
        let out = apply(&pod);
        let r = &out["spec"]["containers"][0]["resources"];
        assert_eq!(r["limits"], json!({ "cpu": "1", IP_RESOURCE: "1" }));
        assert_eq!(r["requests"], json!({ "memory": "1Gi", IP_RESOURCE: "1" }));
    }

    #[test]
    fn only_limits_present_creates_requests() {
        let pod = mk_pod(json!({ "containers": [{ "name": "app", "resources": {
            "limits": { "cpu": "1" } } }] }));
        let out = apply(&pod);
        let r = &out["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({ IP_RESOURCE: "1" }));
        assert_eq!(r["limits"], json!({ "cpu": "1", IP_RESOURCE: "1" }));
    }

    #[test]
    fn host_network_opted_out_and_present_are_skipped() {
        let host = mk_pod(json!({ "hostNetwork": true, "containers": [{ "name": "a" }] }));
        assert_eq!(
            mutate(&host, PodOptOut::Refused),
            Mutation::Skip(Skip::HostNetwork)
        );

        let mut opted = mk_pod(json!({ "containers": [{ "name": "a" }] }));
        opted.metadata.annotations =
            Some([(ANNOTATION_SKIP_IP_RESOURCE.to_owned(), "true".to_owned())].into());
        assert_eq!(
            mutate(&opted, PodOptOut::Allowed),
            Mutation::Skip(Skip::OptedOut)
        );
        let mut labelled = mk_pod(json!({ "containers": [{ "name": "a" }] }));
        labelled.metadata.labels =
            Some([(ANNOTATION_SKIP_IP_RESOURCE.to_owned(), "True".to_owned())].into());
        assert_eq!(
            mutate(&labelled, PodOptOut::Allowed),
            Mutation::Skip(Skip::OptedOut)
        );

        let present = mk_pod(json!({ "containers": [
            { "name": "a" },
            { "name": "b", "resources": { "requests": { IP_RESOURCE: "1" } } } ] }));
        assert_eq!(
            mutate(&present, PodOptOut::Refused),
            Mutation::Skip(Skip::AlreadyPresent)
        );
    }

    #[test]
    fn init_containers_are_never_patched_and_count_as_present() {
        let pod = mk_pod(json!({
            "initContainers": [{ "name": "init" }],
            "containers": [{ "name": "a" }, { "name": "b" }] }));
        let out = apply(&pod);
        assert!(out["spec"]["initContainers"][0].get("resources").is_none());
        assert!(out["spec"]["containers"][1].get("resources").is_none());
        assert_eq!(
            out["spec"]["containers"][0]["resources"]["limits"][IP_RESOURCE],
            "1"
        );

        let init_has = mk_pod(json!({
            "initContainers": [{ "name": "init", "resources": { "limits": { IP_RESOURCE: "1" } } }],
            "containers": [{ "name": "a" }] }));
        assert_eq!(
            mutate(&init_has, PodOptOut::Refused),
            Mutation::Skip(Skip::AlreadyPresent)
        );
    }

    #[test]
    fn patched_pod_is_left_alone_the_second_time() {
        let pod = mk_pod(json!({ "containers": [{ "name": "a" }] }));
        let once: Pod = serde_json::from_value(apply(&pod)).expect("patched pod parses");
        assert_eq!(
            mutate(&once, PodOptOut::Refused),
            Mutation::Skip(Skip::AlreadyPresent)
        );
    }

    #[test]
    fn pod_without_containers_is_skipped() {
        assert_eq!(
            mutate(&mk_pod(json!({ "containers": [] })), PodOptOut::Refused),
            Mutation::Skip(Skip::NoContainers)
        );
        assert_eq!(
            mutate(&Pod::default(), PodOptOut::Refused),
            Mutation::Skip(Skip::NoContainers)
        );
    }

    #[test]
    fn a_pods_own_opt_out_counts_only_where_the_namespace_allows_it() {
        let mut opted = mk_pod(json!({ "containers": [{ "name": "a" }] }));
        opted.metadata.annotations =
            Some([(ANNOTATION_SKIP_IP_RESOURCE.to_owned(), "true".to_owned())].into());
        let Mutation::Patch {
            opt_out_refused, ..
        } = mutate(&opted, PodOptOut::Refused)
        else {
            panic!("a pod's annotation alone must not take it out of IP accounting");
        };
        assert!(opt_out_refused);
        let plain = mk_pod(json!({ "containers": [{ "name": "a" }] }));
        assert!(matches!(
            mutate(&plain, PodOptOut::Refused),
            Mutation::Patch {
                opt_out_refused: false,
                ..
            }
        ));
    }
}
