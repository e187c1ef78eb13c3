//! The images the chart runs, checked against the `Dockerfile` that builds
//! them and the workspace's bin targets, without a Docker engine:
//!
//! ```text
//! rendered chart ──containers: image, command, runAsUser──┐
//! Dockerfile ──target stage: COPY --from, USER, ENTRYPOINT─┼──▶ check_images ──▶ problems
//! cargo metadata ──package ──▶ bin targets─────────────────┘
//! ```
//!
//! An image `<repository>/<target>:<tag>` is the Dockerfile stage named
//! `<target>`. Every command a container runs must be a binary that stage
//! copies in (or a tool of its Debian base), every binary copied must be a
//! bin target of the package its build stage compiles, and the image's
//! numeric `USER` must be the user the chart runs it as.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::{
    chart::{Object, Rendered, repo_root},
    dockerfile::{Dockerfile, Stage},
};

/// What every image is built from.
pub const BUILDER_BASE: &str = "rust:1-bookworm";
/// What every image runs on.
pub const RUNTIME_BASE: &str = "debian:bookworm-slim";
/// Commands of [`RUNTIME_BASE`] a chart script may call (coreutils and dash).
pub const BASE_TOOLS: [&str; 10] = [
    "/bin/sh", "sh", "install", "mv", "cp", "ln", "rm", "mkdir", "cat", "chmod",
];

/// One container of a rendered workload, with the user it runs as.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChartContainer {
    /// `Deployment/sextant-operator`, `DaemonSet/sextant-agent`.
    pub workload: String,
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    /// Container `runAsUser`, else the pod's.
    pub run_as_user: Option<i64>,
    /// Container `runAsGroup`, else the pod's.
    pub run_as_group: Option<i64>,
    /// Container `runAsNonRoot`, else the pod's.
    pub run_as_non_root: Option<bool>,
}

/// Every container and init container of the Deployments and DaemonSets.
pub fn chart_containers(r: &Rendered) -> Vec<ChartContainer> {
    let mut out = Vec::new();
    for (_, obj) in &r.objects {
        let (workload, spec) = match obj {
            Object::Deployment(d) => (
                format!("Deployment/{}", d.metadata.name.as_deref().unwrap_or("")),
                d.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
            ),
            Object::DaemonSet(d) => (
                format!("DaemonSet/{}", d.metadata.name.as_deref().unwrap_or("")),
                d.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
            ),
            _ => continue,
        };
        let Some(spec) = spec else { continue };
        let all = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter());
        for c in all {
            out.push(container(&workload, spec, c));
        }
    }
    out
}

fn container(workload: &str, pod: &PodSpec, c: &Container) -> ChartContainer {
    let psc = pod.security_context.as_ref();
    let csc = c.security_context.as_ref();
    ChartContainer {
        workload: workload.to_owned(),
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c.command.clone(),
        run_as_user: csc
            .and_then(|s| s.run_as_user)
            .or(psc.and_then(|s| s.run_as_user)),
        run_as_group: csc
            .and_then(|s| s.run_as_group)
            .or(psc.and_then(|s| s.run_as_group)),
        run_as_non_root: csc
            .and_then(|s| s.run_as_non_root)
            .or(psc.and_then(|s| s.run_as_non_root)),
    }
}

/// The Dockerfile target an image reference names: `ghcr.io/sextant/sextant-agent:0.1.0` -> `sextant-agent`.
pub fn image_target(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last)
}

/// Bin targets of every workspace package, from `cargo metadata --no-deps`.
pub fn workspace_bins() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(&cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(repo_root().join("Cargo.toml"))
        .output()
        .with_context(|| format!("running {cargo} metadata"))?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata's JSON")?;
    let mut bins = BTreeMap::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let set: BTreeSet<String> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
            .collect();
        bins.insert(name, set);
    }
    Ok(bins)
}

/// `USER uid[:gid]`, numeric only.
fn numeric_user(user: &str) -> Option<(i64, Option<i64>)> {
    let (uid, gid) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = uid.parse().ok()?;
    let gid = match gid {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((uid, gid))
}

/// Everything wrong with the images of `containers` as `dockerfile` builds
/// them; empty when they agree.
pub fn check_images(
    dockerfile: &Dockerfile,
    containers: &[ChartContainer],
    bins: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let targets: BTreeSet<&str> = dockerfile
        .targets()
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    let mut used = BTreeSet::new();
    let mut checked_stages = BTreeSet::new();
    for c in containers {
        let who = format!("{} container {} ({})", c.workload, c.name, c.image);
        let target = image_target(&c.image);
        let Some(stage) = dockerfile.stage(target) else {
            problems.push(format!("{who}: the Dockerfile has no stage `{target}`"));
            continue;
        };
        used.insert(target);
        if !targets.contains(target) {
            problems.push(format!(
                "{who}: stage `{target}` is an intermediate stage, not an image"
            ));
        }
        if checked_stages.insert(target) {
            problems.extend(check_stage(dockerfile, stage, bins));
        }
        let installed: BTreeSet<String> = stage.copied().into_iter().map(|c| c.dest).collect();
        problems.extend(check_command(&who, stage, &installed, c));
        problems.extend(check_user(&who, stage, c));
    }
    for t in targets.difference(&used) {
        problems.push(format!(
            "Dockerfile target `{t}` is built but no chart container runs it"
        ));
    }
    problems
}

/// Multi-stage build from [`BUILDER_BASE`] onto [`RUNTIME_BASE`]; every
/// binary copied is a bin target of the package built for it.
fn check_stage(
    dockerfile: &Dockerfile,
    stage: &Stage,
    bins: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let name = stage.name.as_deref().unwrap_or_default();
    let mut problems = Vec::new();
    let runtime = dockerfile.root_base(stage);
    if runtime != RUNTIME_BASE {
        problems.push(format!(
            "image `{name}` runs on {runtime}, not {RUNTIME_BASE}"
        ));
    }
    if stage.runs().any(|r| r.contains("cargo ")) {
        problems.push(format!(
            "image `{name}` runs cargo itself instead of copying from a build stage"
        ));
    }
    let copied = stage.copied();
    if copied.is_empty() {
        problems.push(format!(
            "image `{name}` copies nothing from a build stage (not multi-stage)"
        ));
    }
    for file in copied {
        let bin = file.source.rsplit('/').next().unwrap_or(&file.source);
        let Some(from) = dockerfile.stage(&file.from) else {
            problems.push(format!(
                "image `{name}`: COPY --from={} names no stage",
                file.from
            ));
            continue;
        };
        let builder = dockerfile.root_base(from);
        if builder != BUILDER_BASE {
            problems.push(format!(
                "image `{name}`: {bin} comes from a stage on {builder}, not {BUILDER_BASE}"
            ));
        }
        let lineage = dockerfile.lineage(from);
        let builds: Vec<_> = lineage.iter().flat_map(|s| s.cargo_builds()).collect();
        let built_by = builds.iter().find(|b| {
            b.packages
                .iter()
                .any(|p| bins.get(p).is_some_and(|set| set.contains(bin)))
                && (b.bins.is_empty() || b.bins.iter().any(|b| b == bin))
        });
        match built_by {
            None => problems.push(format!(
                "image `{name}`: {bin} (from stage {}) is not a bin target of any package \
                 its `cargo build -p ...` builds (built there: {:?}; bins of those packages: {:?})",
                file.from,
                builds,
                builds
                    .iter()
                    .flat_map(|b| &b.packages)
                    .map(|p| (p, bins.get(p)))
                    .collect::<Vec<_>>()
            )),
            Some(b) if !(b.release && b.locked) => problems.push(format!(
                "image `{name}`: {bin} is not built with --release --locked"
            )),
            Some(_) => {}
        }
        let produced = format!("target/release/{bin}");
        if !lineage
            .iter()
            .any(|s| s.runs().any(|r| r.contains(&produced)))
        {
            problems.push(format!(
                "image `{name}`: stage {} never takes {produced} out of the build",
                file.from
            ));
        }
    }
    problems
}

/// What the container runs exists in its image.
fn check_command(
    who: &str,
    stage: &Stage,
    installed: &BTreeSet<String>,
    c: &ChartContainer,
) -> Vec<String> {
    let mut problems = Vec::new();
    let argv = match &c.command {
        Some(cmd) => cmd.clone(),
        None => match stage.entrypoint() {
            Ok(Some(ep)) => ep,
            Ok(None) => {
                return vec![format!(
                    "{who}: no command in the chart and no ENTRYPOINT in the image"
                )];
            }
            Err(e) => return vec![format!("{who}: {e:#}")],
        },
    };
    let Some(program) = argv.first() else {
        return vec![format!("{who}: empty command")];
    };
    let is_shell = matches!(program.as_str(), "/bin/sh" | "/bin/bash" | "sh");
    if !is_shell {
        if !installed.contains(program) {
            problems.push(format!(
                "{who}: runs {program}, which the image does not contain (it has {installed:?})"
            ));
        }
        return problems;
    }
    if !BASE_TOOLS.contains(&program.as_str()) {
        problems.push(format!("{who}: {program} is not in {RUNTIME_BASE}"));
    }
    // `sh -ec <script>`: every program the script calls, and every path
    // under /usr/local/bin it names, must be in the image.
    let script_at = argv
        .iter()
        .position(|a| a.starts_with('-') && a.contains('c'))
        .map(|i| i + 1);
    let Some(script) = script_at.and_then(|i| argv.get(i)) else {
        return problems;
    };
    for line in script.lines() {
        let Some(word) = line.split_whitespace().next() else {
            continue;
        };
        if word.starts_with('#') {
            continue;
        }
        if !(installed.contains(word) || BASE_TOOLS.contains(&word)) {
            problems.push(format!(
                "{who}: its script runs {word}, which is neither copied into the image nor in {RUNTIME_BASE}"
            ));
        }
    }
    for word in script.split_whitespace() {
        if word.starts_with("/usr/local/bin/") && !installed.contains(word) {
            problems.push(format!(
                "{who}: its script uses {word}, which the image does not contain (it has {installed:?})"
            ));
        }
    }
    problems
}

/// The image's `USER` is numeric and is who the chart runs it as.
fn check_user(who: &str, stage: &Stage, c: &ChartContainer) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(user) = stage.user() else {
        return vec![format!(
            "{who}: the image sets no USER (say `USER 0:0` with the reason when it needs root)"
        )];
    };
    let Some((uid, gid)) = numeric_user(user) else {
        return vec![format!(
            "{who}: USER {user} is not numeric, so runAsNonRoot cannot verify it"
        )];
    };
    if let Some(want) = c.run_as_user
        && want != uid
    {
        problems.push(format!(
            "{who}: the chart runs it as uid {want}, the image's USER is {uid}"
        ));
    }
    if let (Some(want), Some(gid)) = (c.run_as_group, gid)
        && want != gid
    {
        problems.push(format!(
            "{who}: the chart runs it as gid {want}, the image's USER group is {gid}"
        ));
    }
    if c.run_as_non_root == Some(true) && uid == 0 {
        problems.push(format!(
            "{who}: runAsNonRoot in the chart but the image's USER is root"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_name_their_target() {
        assert_eq!(
            image_target("ghcr.io/sextant/sextant-agent:0.1.0"),
            "sextant-agent"
        );
        assert_eq!(
            image_target("localhost:5000/x/sextant-webhook@sha256:ab"),
            "sextant-webhook"
        );
        assert_eq!(image_target("sextant-operator"), "sextant-operator");
    }

    #[test]
    fn users_must_be_numeric() {
        assert_eq!(numeric_user("65532:65532"), Some((65532, Some(65532))));
        assert_eq!(numeric_user("0"), Some((0, None)));
        assert_eq!(numeric_user("nonroot"), None);
        assert_eq!(numeric_user("1000:staff"), None);
    }
}
