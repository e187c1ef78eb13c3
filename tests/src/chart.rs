//! Lint and render `charts/sextant` with the real Helm engine.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::{
    admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    },
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use serde::Deserialize;

/// Release name and namespace every render uses.
pub const RELEASE: &str = "sextant";
/// See [`RELEASE`].
pub const NAMESPACE: &str = "sextant-system";

/// The value sets documented in `docs/install.md`: `default` (values.yaml
/// alone) and `ci/<name>-values.yaml`.
pub const VALUE_SETS: [&str; 4] = ["default", "aws", "alibaba", "static"];

/// The repository root (this crate lives in `<repo>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/sextant")
}

/// The venv's interpreter: `$SEXTANT_VENV/bin/python` (the Makefile exports
/// it), else `<repo>/.venv/bin/python`.
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let venv = std::env::var_os("SEXTANT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"));
    python_in(&venv)
}

/// The interpreter of the venv at `venv`, or an error saying how to get one.
pub fn python_in(venv: &Path) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin/python");
    ensure!(
        python.exists(),
        "no Python venv at {}: the chart tests need the real Helm engine (PyPI helm-python-sdk); \
         run `make setup` (scripts/setup.sh) or set SEXTANT_VENV",
        venv.display()
    );
    Ok(python)
}

/// One Kubernetes object out of a rendered manifest, parsed into its type.
#[derive(Clone, Debug)]
pub enum Object {
    Deployment(Box<Deployment>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    ServiceAccount(Box<ServiceAccount>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    MutatingWebhookConfiguration(Box<MutatingWebhookConfiguration>),
    ValidatingAdmissionPolicy(Box<ValidatingAdmissionPolicy>),
    ValidatingAdmissionPolicyBinding(Box<ValidatingAdmissionPolicyBinding>),
    /// cert-manager `Issuer` / `Certificate` (no `k8s-openapi` type).
    CertManager(serde_json::Value),
    /// Prometheus Operator `PodMonitor` (no `k8s-openapi` type).
    PodMonitor(serde_json::Value),
}

impl Object {
    fn parse(doc: serde_json::Value) -> anyhow::Result<Self> {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        fn typed<T: serde::de::DeserializeOwned>(doc: serde_json::Value) -> anyhow::Result<Box<T>> {
            Ok(Box::new(serde_json::from_value(doc)?))
        }
        let obj = match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "Deployment") => Self::Deployment(typed(doc)?),
            ("apps/v1", "DaemonSet") => Self::DaemonSet(typed(doc)?),
            ("v1", "Service") => Self::Service(typed(doc)?),
            ("v1", "ServiceAccount") => Self::ServiceAccount(typed(doc)?),
            ("v1", "ConfigMap") => Self::ConfigMap(typed(doc)?),
            ("v1", "Secret") => Self::Secret(typed(doc)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => Self::ClusterRole(typed(doc)?),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                Self::ClusterRoleBinding(typed(doc)?)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => Self::Role(typed(doc)?),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => Self::RoleBinding(typed(doc)?),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                Self::MutatingWebhookConfiguration(typed(doc)?)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
                Self::ValidatingAdmissionPolicy(typed(doc)?)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
                Self::ValidatingAdmissionPolicyBinding(typed(doc)?)
            }
            ("cert-manager.io/v1", "Issuer" | "Certificate") => Self::CertManager(doc),
            ("monitoring.coreos.com/v1", "PodMonitor") => Self::PodMonitor(doc),
            _ => bail!("unexpected object {api_version} {kind}"),
        };
        Ok(obj)
    }
}

/// What Helm made of the chart for one value set.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The value set's name ([`VALUE_SETS`]) or `custom`.
    pub set: String,
    /// `helm lint --strict` findings: `(severity, path, message)`;
    /// severity 1 info, 2 warning, 3 error.
    pub lint: Vec<(u8, String, String)>,
    /// Every rendered object, with the template it came from.
    pub objects: Vec<(String, Object)>,
    /// The rendered text of every template, NOTES.txt included.
    pub text: BTreeMap<String, String>,
}

impl Rendered {
    /// Objects of one type: `r.all(|o| match o { Object::Deployment(d) => Some(d), _ => None })`.
    pub fn all<'a, T: 'a>(&'a self, pick: impl Fn(&'a Object) -> Option<&'a T>) -> Vec<&'a T> {
        self.objects.iter().filter_map(|(_, o)| pick(o)).collect()
    }
}

#[derive(Deserialize)]
struct PyOut {
    lint: PyLint,
    manifests: Option<BTreeMap<String, String>>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct PyLint {
    #[serde(default)]
    messages: Vec<PyMessage>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct PyMessage {
    severity: u8,
    path: String,
    error: String,
}

/// Lints and renders every value set through one interpreter start.
const SNIPPET: &str = r#"
import json, sys
try:
    import helm_python as helm
except ImportError as e:
    sys.exit(f"helm_python is not importable ({e}); run `make setup` to install helm-python-sdk into the venv")
job = json.load(sys.stdin)
chart = helm.Chart.load(job["chart"])
out = []
for values in job["sets"]:
    values = helm.values_from_yaml(values) if values is not None else None
    lint = helm.lint(job["chart"], values, strict=True, namespace=job["namespace"])
    try:
        manifests = chart.render(values=values, name=job["release"], namespace=job["namespace"], is_install=True)
        out.append({"lint": lint, "manifests": manifests, "error": None})
    except helm.HelmError as e:
        out.append({"lint": lint, "manifests": None, "error": f"{type(e).__name__}: {e}"})
json.dump(out, sys.stdout)
"#;

/// Renders `(name, values YAML)` pairs; `None` is the chart's defaults.
/// A render error comes back as `Err` in that set's slot.
pub fn render_values(
    sets: &[(&str, Option<String>)],
) -> anyhow::Result<Vec<anyhow::Result<Rendered>>> {
    let python = venv_python()?;
    let job = serde_json::json!({
        "chart": chart_dir(),
        "release": RELEASE,
        "namespace": NAMESPACE,
        "sets": sets.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
    });
    let mut child = Command::new(&python)
        .args(["-c", SNIPPET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    child
        .stdin
        .take()
        .context("python stdin")?
        .write_all(job.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}",
        python.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<PyOut> =
        serde_json::from_slice(&out.stdout).context("helm_python's JSON answer")?;
    ensure!(results.len() == sets.len(), "one answer per value set");
    Ok(sets
        .iter()
        .zip(results)
        .map(|((name, _), r)| parse_rendered(name, r))
        .collect())
}

fn parse_rendered(set: &str, out: PyOut) -> anyhow::Result<Rendered> {
    if let Some(e) = out.error {
        bail!("rendering value set {set}: {e}");
    }
    let mut lint: Vec<_> = out
        .lint
        .messages
        .into_iter()
        .map(|m| (m.severity, m.path, m.error))
        .collect();
    lint.extend(out.lint.errors.into_iter().map(|e| (3, String::new(), e)));
    let text = out.manifests.unwrap_or_default();
    let mut objects = Vec::new();
    for (file, manifest) in &text {
        if !file.ends_with(".yaml") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(manifest) {
            let value = serde_json::Value::deserialize(doc)
                .with_context(|| format!("{set}: {file} is not valid YAML"))?;
            if value.is_null() {
                continue;
            }
            let obj = Object::parse(value).with_context(|| format!("{set}: {file}"))?;
            objects.push((file.clone(), obj));
        }
    }
    Ok(Rendered {
        set: set.to_owned(),
        lint,
        objects,
        text,
    })
}

/// Renders every documented value set ([`VALUE_SETS`]).
pub fn render_documented_sets() -> anyhow::Result<Vec<Rendered>> {
    let mut sets = Vec::new();
    for name in VALUE_SETS {
        let values = if name == "default" {
            None
        } else {
            let path = chart_dir().join(format!("ci/{name}-values.yaml"));
            Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )
        };
        sets.push((name, values));
    }
    render_values(&sets)?.into_iter().collect()
}
