//! `docs/configuration.md`, generated from the chart's `values.schema.json`
//! (types, constraints, descriptions) and `values.yaml` (defaults), so the
//! reference cannot say something the chart does not do. Keys follow
//! `values.yaml`'s order; keys only the schema knows come after, sorted.

use std::fmt::Write as _;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// Where the generated reference lives, relative to the repository root.
pub const DOC_PATH: &str = "docs/configuration.md";

/// How to regenerate it; every drift message says this.
pub const REGENERATE: &str =
    "run `make docs` (SEXTANT_BLESS=1 cargo test -p sextant-e2e config_reference)";

/// The whole Markdown page.
pub fn config_reference(schema: &Json, values: &Yaml) -> String {
    let mut out = String::new();
    out.push_str("# Configuration reference\n\n");
    out.push_str(
        "<!-- Generated from charts/sextant/values.schema.json and values.yaml by \
         `make docs`; do not edit by hand. -->\n\n",
    );
    out.push_str(
        "Every value of the `charts/sextant` chart: its type and constraints and its \
         description come from `values.schema.json`, which validates every install \
         and rejects unknown keys; its default comes from `values.yaml`. The value \
         sets per provider are in `charts/sextant/ci/` ([install guide](install.md)).\n",
    );
    let mut general = Vec::new();
    let mut sections = Vec::new();
    for key in ordered_keys(schema, values) {
        let prop = &schema["properties"][&key];
        if prop.get("properties").is_some() {
            sections.push(key);
        } else {
            general.push(key);
        }
    }
    if !general.is_empty() {
        out.push_str("\n## General\n\n");
        table_head(&mut out);
        for key in general {
            let prop = &schema["properties"][&key];
            row(&mut out, &key, prop, values.get(key.as_str()));
        }
    }
    for key in sections {
        let prop = &schema["properties"][&key];
        let _ = writeln!(out, "\n## `{key}`\n");
        if let Some(d) = prop["description"].as_str() {
            let _ = writeln!(out, "{}\n", one_line(d));
        }
        table_head(&mut out);
        rows(&mut out, &key, prop, values.get(key.as_str()));
    }
    out
}

/// Properties of the schema (recursively) without a description, as dotted paths.
pub fn missing_descriptions(schema: &Json) -> Vec<String> {
    fn walk(node: &Json, path: &str, out: &mut Vec<String>) {
        for (key, prop) in node["properties"].as_object().into_iter().flatten() {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let described = prop["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                out.push(here.clone());
            }
            walk(prop, &here, out);
        }
    }
    let mut out = Vec::new();
    walk(schema, "", &mut out);
    out
}

fn table_head(out: &mut String) {
    out.push_str("| key | type | default | description |\n| --- | --- | --- | --- |\n");
}

/// Rows for the properties of the object `node` at `path`, nested objects
/// as a row of their own followed by their keys.
fn rows(out: &mut String, path: &str, node: &Json, values: Option<&Yaml>) {
    let empty = Yaml::Null;
    let values = values.unwrap_or(&empty);
    for key in ordered_keys(node, values) {
        let prop = &node["properties"][&key];
        let here = format!("{path}.{key}");
        let value = values.get(key.as_str());
        row(out, &here, prop, value);
        if prop.get("properties").is_some() {
            rows(out, &here, prop, value);
        }
    }
}

fn row(out: &mut String, path: &str, prop: &Json, value: Option<&Yaml>) {
    let default = if prop.get("properties").is_some() {
        "see below".to_owned()
    } else {
        value.map(default_cell).unwrap_or_else(|| "—".to_owned())
    };
    let description = prop["description"]
        .as_str()
        .map(one_line)
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| `{path}` | {} | {default} | {description} |",
        type_cell(prop)
    );
}

/// `values.yaml`'s keys of this object first, in its order, then the schema's others.
fn ordered_keys(node: &Json, values: &Yaml) -> Vec<String> {
    let Some(props) = node["properties"].as_object() else {
        return Vec::new();
    };
    let mut keys: Vec<String> = values
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
        .filter(|k| props.contains_key(*k))
        .map(str::to_owned)
        .collect();
    let rest: Vec<String> = props
        .keys()
        .filter(|k| !keys.contains(k))
        .cloned()
        .collect();
    keys.extend(rest);
    keys
}

fn type_cell(prop: &Json) -> String {
    let base = match &prop["type"] {
        Json::String(t) => t.clone(),
        Json::Array(ts) => ts
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_owned(),
    };
    let mut cell = match base.as_str() {
        "array" => match prop["items"]["type"].as_str() {
            Some(item) => format!("array of {item}"),
            None => base,
        },
        "object" => match prop["additionalProperties"]["type"].as_str() {
            Some(item) => format!("map of {item}"),
            None => base,
        },
        _ => base,
    };
    let mut notes = Vec::new();
    if let Some(choices) = prop["enum"].as_array() {
        let choices: Vec<String> = choices.iter().map(|c| code(&scalar(c))).collect();
        notes.push(format!("one of {}", choices.join(", ")));
    }
    match (prop["minimum"].as_f64(), prop["maximum"].as_f64()) {
        (Some(lo), Some(hi)) => notes.push(format!("{lo} to {hi}")),
        (Some(lo), None) => notes.push(format!(">= {lo}")),
        (None, Some(hi)) => notes.push(format!("<= {hi}")),
        (None, None) => {}
    }
    if prop["minLength"].as_u64().is_some_and(|n| n > 0) {
        notes.push("non-empty".to_owned());
    }
    if let Some(p) = prop["pattern"].as_str() {
        notes.push(format!("matching {}", code(p)));
    }
    if !notes.is_empty() {
        let _ = write!(cell, " ({})", notes.join("; "));
    }
    cell
}

fn scalar(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn default_cell(v: &Yaml) -> String {
    match v {
        Yaml::String(s) if s.is_empty() => code("\"\""),
        Yaml::String(s) => code(s),
        Yaml::Null => code("null"),
        other => match serde_json::to_value(other) {
            Ok(json) => code(&json.to_string()),
            Err(_) => code(&format!("{other:?}")),
        },
    }
}

/// A Markdown code span that survives a table cell.
fn code(s: &str) -> String {
    format!("`{}`", s.replace('|', "\\|"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Json {
        serde_json::json!({
            "type": "object",
            "properties": {
                "zeta": {"type": "string", "description": "Only in the schema."},
                "mode": {"type": "string", "enum": ["a", "b"], "description": "A | B."},
                "svc": {
                    "type": "object",
                    "description": "The service.",
                    "properties": {
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535, "description": "Port."},
                        "every": {"type": "string", "pattern": "^[0-9]+(s|m)$", "description": "Period."},
                        "tls": {
                            "type": "object",
                            "description": "TLS.",
                            "properties": {"on": {"type": "boolean"}}
                        },
                        "tags": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Tags."}
                    }
                }
            }
        })
    }

    const VALUES: &str =
        "mode: b\nsvc:\n  tags: {a: \"1\"}\n  port: 8080\n  every: 5m\n  tls:\n    on: false\n";

    #[test]
    fn sections_follow_values_order_with_defaults_and_constraints() {
        let values: Yaml = serde_yaml::from_str(VALUES).expect("yaml");
        let doc = config_reference(&schema(), &values);
        let lines: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(
            lines,
            [
                "| `mode` | string (one of `a`, `b`) | `b` | A \\| B. |",
                "| `zeta` | string | — | Only in the schema. |",
                "| `svc.tags` | map of string | `{\"a\":\"1\"}` | Tags. |",
                "| `svc.port` | integer (1 to 65535) | `8080` | Port. |",
                "| `svc.every` | string (matching `^[0-9]+(s\\|m)$`) | `5m` | Period. |",
                "| `svc.tls` | object | see below | TLS. |",
                "| `svc.tls.on` | boolean | `false` |  |",
            ]
        );
        assert!(doc.contains("\n## `svc`\n\nThe service.\n"), "{doc}");
    }

    #[test]
    fn finds_properties_without_descriptions_at_any_depth() {
        assert_eq!(missing_descriptions(&schema()), ["svc.tls.on"]);
    }
}
