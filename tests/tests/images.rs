//! The `Dockerfile` builds exactly the images the chart runs: every command
//! a rendered container runs is a binary its image copies in (or a tool of
//! the Debian base), every binary copied is a bin target of the package its
//! build stage compiles, builds are multi-stage, and non-root images carry
//! the numeric USER the chart's securityContext runs them as. No Docker
//! engine is needed: the Dockerfile is read, not built.

use std::collections::BTreeSet;

use sextant_e2e::{
    chart::{render_documented_sets, repo_root},
    dockerfile::Dockerfile,
    images::{ChartContainer, chart_containers, check_images, image_target, workspace_bins},
};

fn dockerfile_text() -> String {
    let path = repo_root().join("Dockerfile");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every container of every documented value set, once each.
fn containers() -> Vec<ChartContainer> {
    let sets = render_documented_sets().unwrap_or_else(|e| panic!("chart did not render: {e:#}"));
    let all: BTreeSet<ChartContainer> = sets.iter().flat_map(chart_containers).collect();
    all.into_iter().collect()
}

fn problems_with(dockerfile: &str, containers: &[ChartContainer]) -> Vec<String> {
    let d = Dockerfile::parse(dockerfile).expect("Dockerfile parses");
    let bins = workspace_bins().expect("cargo metadata");
    check_images(&d, containers, &bins)
}

#[test]
fn dockerfile_builds_every_image_the_chart_runs_with_its_binaries_and_user() {
    let containers = containers();
    let images: BTreeSet<&str> = containers.iter().map(|c| image_target(&c.image)).collect();
    assert_eq!(
        images,
        BTreeSet::from([
            "sextant-agent",
            "sextant-device-plugin",
            "sextant-operator",
            "sextant-scheduler-ext",
            "sextant-webhook",
        ]),
        "the chart's images"
    );
    let problems = problems_with(&dockerfile_text(), &containers);
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));

    // The components that can run without root do, with the uid the chart sets.
    let d = Dockerfile::parse(&dockerfile_text()).expect("Dockerfile parses");
    for image in [
        "sextant-operator",
        "sextant-webhook",
        "sextant-scheduler-ext",
    ] {
        let stage = d.stage(image).expect("stage");
        assert_eq!(stage.user(), Some("65532:65532"), "{image}");
        for c in containers
            .iter()
            .filter(|c| image_target(&c.image) == image)
        {
            assert_eq!(c.run_as_non_root, Some(true), "{}", c.workload);
            assert_eq!(c.run_as_user, Some(65532), "{}", c.workload);
        }
    }
}

#[test]
fn a_renamed_binary_or_a_wrong_user_is_caught() {
    let containers = containers();
    let good = dockerfile_text();
    assert!(problems_with(&good, &containers).is_empty());

    // A bin the agent crate does not have: the COPY and the init script both fail.
    let renamed = good.replace("sextant-cni", "sextant-cni-plugin");
    let problems = problems_with(&renamed, &containers).join("\n");
    assert!(
        problems.contains("sextant-cni-plugin (from stage build-agent) is not a bin target"),
        "{problems}"
    );
    assert!(
        problems.contains("/usr/local/bin/sextant-cni, which the image does not contain"),
        "{problems}"
    );

    // The webhook image running as root against the chart's runAsUser 65532.
    let root = good.replace(
        "USER 65532:65532\nENTRYPOINT [\"/usr/local/bin/sextant-webhook\"]",
        "USER 0\nENTRYPOINT [\"/usr/local/bin/sextant-webhook\"]",
    );
    assert_ne!(root, good);
    let problems = problems_with(&root, &containers).join("\n");
    assert!(
        problems.contains("the chart runs it as uid 65532, the image's USER is 0"),
        "{problems}"
    );
    assert!(problems.contains("runAsNonRoot in the chart"), "{problems}");

    // A single-stage image that runs cargo itself.
    let single = good.replace(
        "FROM debian:bookworm-slim AS sextant-scheduler-ext\nCOPY --from=build-scheduler-ext /out/sextant-scheduler-ext /usr/local/bin/sextant-scheduler-ext",
        "FROM rust:1-bookworm AS sextant-scheduler-ext\nRUN cargo install --path scheduler-ext --root /usr/local",
    );
    assert_ne!(single, good);
    let problems = problems_with(&single, &containers).join("\n");
    assert!(problems.contains("not multi-stage"), "{problems}");
    assert!(
        problems.contains("runs on rust:1-bookworm, not debian:bookworm-slim"),
        "{problems}"
    );

    // An image nobody runs, and a chart image the Dockerfile lacks.
    let mut extra = containers.clone();
    extra.retain(|c| image_target(&c.image) != "sextant-webhook");
    extra.push(ChartContainer {
        workload: "Deployment/sextant-extra".into(),
        name: "extra".into(),
        image: "ghcr.io/sextant/sextant-extra:0.1.0".into(),
        command: None,
        run_as_user: None,
        run_as_group: None,
        run_as_non_root: None,
    });
    let problems = problems_with(&good, &extra).join("\n");
    assert!(
        problems.contains("the Dockerfile has no stage `sextant-extra`"),
        "{problems}"
    );
    assert!(
        problems.contains("`sextant-webhook` is built but no chart container runs it"),
        "{problems}"
    );
}

#[test]
fn agent_image_ships_what_the_cni_install_step_runs() {
    let d = Dockerfile::parse(&dockerfile_text()).expect("Dockerfile parses");
    let agent = d.stage("sextant-agent").expect("agent stage");
    let copied: BTreeSet<String> = agent.copied().into_iter().map(|c| c.dest).collect();
    assert_eq!(
        copied,
        BTreeSet::from([
            "/usr/local/bin/sextant-agent".to_owned(),
            "/usr/local/bin/sextant-cni".to_owned(),
        ])
    );
    // Its BPF object is compiled by agent/build.rs in the builder.
    let builder = d.stage("builder").expect("builder stage");
    let apt = builder.runs().collect::<Vec<_>>().join(" ");
    for pkg in [
        "clang",
        "llvm",
        "libbpf-dev",
        "libelf-dev",
        "zlib1g-dev",
        "pkg-config",
        "protobuf-compiler",
    ] {
        assert!(
            apt.split_whitespace().any(|w| w == pkg),
            "builder lacks {pkg}"
        );
    }
    assert_eq!(agent.user(), Some("0:0"), "the agent runs as root");
}

#[test]
fn dockerignore_keeps_build_output_venv_and_history_out_of_the_context() {
    let path = repo_root().join(".dockerignore");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let patterns: BTreeSet<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for p in ["target", ".venv", ".git"] {
        assert!(patterns.contains(p), ".dockerignore lacks {p}/");
    }
    // The build is --locked: the lock file must reach it.
    assert!(!patterns.contains("Cargo.lock"));
}
