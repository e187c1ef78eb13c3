//! Migration: CiliumNetworkPolicy documents to SextantNetworkPolicy ones,
//! refused when Sextant could not enforce them as written.

use serde_json::{Map, Value};
use sextant_crds::{SextantNetworkPolicy, wellknown::API_VERSION};

use crate::{
    error::{Error, Result},
    parse::from_sextant,
};

/// Annotation `kubectl apply` keeps; it records the Cilium object and would
/// make the next `kubectl apply` of the Sextant one compute a wrong patch.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The policies in one YAML/JSON document: the document itself, or the
/// `items` of a `CiliumNetworkPolicyList` / `List`. Empty documents yield nothing.
pub fn policy_documents(doc: &Value) -> Vec<Value> {
    if doc.is_null() {
        return vec![];
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    match (kind, doc.get("items").and_then(Value::as_array)) {
        ("CiliumNetworkPolicyList" | "List", Some(items)) => items.clone(),
        _ => vec![doc.clone()],
    }
}

/// One CiliumNetworkPolicy as a SextantNetworkPolicy: `apiVersion` and
/// `kind` replaced, `metadata` reduced to name, namespace, labels and
/// annotations, `spec`/`specs` copied verbatim, `status` dropped. Fails,
/// listing every problem, when the policy uses anything Sextant does not
/// enforce or is malformed.
pub fn cilium_to_sextant(doc: &Value) -> Result<Value> {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if (api_version, kind) != ("cilium.io/v2", "CiliumNetworkPolicy") {
        return Err(Error::UnknownKind {
            api_version: api_version.to_owned(),
            kind: if kind == "CiliumClusterwideNetworkPolicy" {
                "CiliumClusterwideNetworkPolicy (cluster-wide policies are not supported)"
                    .to_owned()
            } else {
                kind.to_owned()
            },
        });
    }
    let mut meta = Map::new();
    if let Some(m) = doc.get("metadata").and_then(Value::as_object) {
        for key in ["name", "namespace", "labels"] {
            if let Some(v) = m.get(key) {
                meta.insert(key.to_owned(), v.clone());
            }
        }
        if let Some(Value::Object(ann)) = m.get("annotations") {
            let kept: Map<String, Value> = ann
                .iter()
                .filter(|(k, _)| k.as_str() != LAST_APPLIED)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !kept.is_empty() {
                meta.insert("annotations".to_owned(), Value::Object(kept));
            }
        }
    }
    let mut out = Map::new();
    out.insert("apiVersion".to_owned(), API_VERSION.into());
    out.insert("kind".to_owned(), "SextantNetworkPolicy".into());
    out.insert("metadata".to_owned(), Value::Object(meta));
    for key in ["spec", "specs"] {
        if let Some(v) = doc.get(key) {
            out.insert(key.to_owned(), v.clone());
        }
    }
    let out = Value::Object(out);
    let typed: SextantNetworkPolicy =
        serde_json::from_value(out.clone()).map_err(|source| Error::Decode {
            what: format!(
                "CiliumNetworkPolicy {}",
                doc.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ),
            source,
        })?;
    from_sextant(&typed)?;
    Ok(out)
}
