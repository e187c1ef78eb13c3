//! `docs/configuration.md` is what `config_reference` makes of the chart's
//! values schema and defaults, and the schema describes every value.
//! `SEXTANT_BLESS=1` (`make docs`) rewrites the page instead of comparing.

use anyhow::{Context, Result};
use sextant_e2e::{
    chart::{chart_dir, repo_root},
    config_reference::{DOC_PATH, REGENERATE, config_reference, missing_descriptions},
};

fn schema() -> Result<serde_json::Value> {
    let path = chart_dir().join("values.schema.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn values() -> Result<serde_yaml::Value> {
    let path = chart_dir().join("values.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))
}

#[test]
fn config_reference_doc_is_generated_from_the_schema() -> Result<()> {
    let want = config_reference(&schema()?, &values()?);
    let path = repo_root().join(DOC_PATH);
    if std::env::var_os("SEXTANT_BLESS").is_some() {
        std::fs::write(&path, &want).with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(h, w)| h != w)
            .unwrap_or(have.lines().count().min(want.lines().count()));
        panic!(
            "{DOC_PATH} differs from what values.schema.json and values.yaml generate \
             (first at line {}: have {:?}, want {:?}); {REGENERATE}",
            first + 1,
            have.lines().nth(first).unwrap_or("<end>"),
            want.lines().nth(first).unwrap_or("<end>"),
        );
    }
    Ok(())
}

#[test]
fn every_schema_property_has_a_description() -> Result<()> {
    let missing = missing_descriptions(&schema()?);
    assert!(
        missing.is_empty(),
        "values.schema.json properties without a description (it becomes docs/configuration.md): {missing:?}"
    );
    Ok(())
}

#[test]
fn config_reference_covers_every_default_in_values_yaml() -> Result<()> {
    let doc = config_reference(&schema()?, &values()?);
    // Every leaf of values.yaml has a row, so nothing the chart reads goes undocumented.
    fn leaves(v: &serde_yaml::Value, path: &str, out: &mut Vec<String>) {
        match v.as_mapping() {
            Some(m) if !m.is_empty() && !path.ends_with("resources") => {
                for (k, v) in m {
                    let k = k.as_str().unwrap_or_default();
                    let here = if path.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{path}.{k}")
                    };
                    leaves(v, &here, out);
                }
            }
            _ => out.push(path.to_owned()),
        }
    }
    let mut all = Vec::new();
    leaves(&values()?, "", &mut all);
    // Free-form maps (labels) are documented as one row.
    let missing: Vec<&String> = all
        .iter()
        .filter(|p| {
            let row = |p: &str| doc.contains(&format!("| `{p}` |"));
            !row(p) && !p.rsplit_once('.').is_some_and(|(parent, _)| row(parent))
        })
        .collect();
    assert!(missing.is_empty(), "values without a row: {missing:?}");
    assert!(doc.contains("| `dashboards.enabled` | boolean | `true` |"));
    Ok(())
}
