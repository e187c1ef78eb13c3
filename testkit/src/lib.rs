//! No silent skips: a test or benchmark that needs something this machine
//! may lack (root, the real control plane, a cloud emulator, a daemon) asks
//! [`require`] first. When the thing is there the test runs; when it is not
//! the test fails with the reason, unless `SEXTANT_SKIP` names the test's
//! [`Tier`]. A skipped test says so loudly and appends a line to the skip
//! ledger, which `scripts/skip-summary.sh` prints at the end of `make test`.
//!
//! `SEXTANT_SKIP` is a comma-separated list of tier names (`kernel`,
//! `cluster`, `cloud`, `daemon`, or `all`); a tier it names is skipped
//! whether or not it could run here, so the summary lists every test that
//! did not run. An unknown name fails the test rather than skipping nothing.

pub mod prometheus;

use std::{
    fmt,
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
};

/// The variable naming the tiers to skip.
pub const SKIP_VAR: &str = "SEXTANT_SKIP";
/// The variable overriding where skips are recorded.
pub const LEDGER_VAR: &str = "SEXTANT_SKIP_LEDGER";
/// The ledger's file name in the target directory.
pub const LEDGER_FILE: &str = "sextant-skipped.txt";

/// What a test needs beyond the Rust toolchain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Root, network namespaces, veths, BPF and the kernel tools a lab
    /// drives (iproute2, iptables, the CNI reference plugins).
    Kernel,
    /// The real Kubernetes control plane (kube-apiserver, etcd).
    Cluster,
    /// Cloud API servers and emulators (moto).
    Cloud,
    /// Other real daemons a test talks to (BIRD, Prometheus, ...).
    Daemon,
}

impl Tier {
    /// Every tier, in the order the docs list them.
    pub const ALL: [Tier; 4] = [Tier::Kernel, Tier::Cluster, Tier::Cloud, Tier::Daemon];

    /// The name `SEXTANT_SKIP` uses.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Kernel => "kernel",
            Tier::Cluster => "cluster",
            Tier::Cloud => "cloud",
            Tier::Daemon => "daemon",
        }
    }

    /// What the tier stands for, for failure messages.
    pub fn needs(self) -> &'static str {
        match self {
            Tier::Kernel => "root, network namespaces, BPF",
            Tier::Cluster => "a real Kubernetes control plane",
            Tier::Cloud => "a cloud API server or emulator",
            Tier::Daemon => "a real daemon such as BIRD or Prometheus",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a test should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything it needs is here and its tier is not skipped.
    Run,
    /// `SEXTANT_SKIP` names its tier; the reason says why it did not run.
    Skip(String),
    /// It cannot run and nobody asked to skip it: the message to fail with.
    Fail(String),
}

/// The tiers a `SEXTANT_SKIP` value names; unset or empty names none.
pub fn skipped_tiers(value: Option<&str>) -> Result<Vec<Tier>, String> {
    let mut tiers = Vec::new();
    for word in value.unwrap_or("").split(',').map(str::trim) {
        match word {
            "" => {}
            "all" => tiers.extend(Tier::ALL),
            _ => match Tier::ALL.into_iter().find(|t| t.name() == word) {
                Some(t) => tiers.push(t),
                None => {
                    return Err(format!(
                        "{SKIP_VAR}={:?}: unknown tier {word:?} (tiers: kernel, cluster, cloud, daemon, all)",
                        value.unwrap_or("")
                    ));
                }
            },
        }
    }
    tiers.sort();
    tiers.dedup();
    Ok(tiers)
}

/// The pure decision: `why_unavailable` is `None` when the test could run
/// here, `skip_value` is the value of `SEXTANT_SKIP`.
pub fn decide(
    tier: Tier,
    why_unavailable: Option<&str>,
    skip_value: Option<&str>,
    test: &str,
) -> Decision {
    let skipped = match skipped_tiers(skip_value) {
        Ok(tiers) => tiers.contains(&tier),
        Err(e) => return Decision::Fail(format!("{test}: {e}")),
    };
    match (skipped, why_unavailable) {
        (true, Some(why)) => Decision::Skip(why.to_owned()),
        (true, None) => Decision::Skip(format!(
            "could run here, skipped because {SKIP_VAR} names {tier}"
        )),
        (false, Some(why)) => Decision::Fail(format!(
            "{test} cannot run: {why}. It needs the {tier} tier ({}); set {SKIP_VAR}={tier} to skip this tier (each skip is recorded; `make test` lists them at the end)",
            tier.needs()
        )),
        (false, None) => Decision::Run,
    }
}

/// Decides from the environment; a skip is printed and recorded in the
/// ledger. Benchmarks use this to print their own failure line and exit.
pub fn check(tier: Tier, why_unavailable: Option<String>, test: &str) -> Decision {
    let skip_value = std::env::var(SKIP_VAR).ok();
    let decision = decide(
        tier,
        why_unavailable.as_deref(),
        skip_value.as_deref(),
        test,
    );
    if let Decision::Skip(why) = &decision {
        let why = why.replace('\n', " ");
        eprintln!("SKIPPED ({SKIP_VAR}={tier}): {test}: {why}");
        let path = ledger_path();
        if let Err(e) = record(&path, &format!("{tier}: {test}: {why}")) {
            eprintln!(
                "SKIPPED ({SKIP_VAR}={tier}): {test}: could not record the skip in {}: {e}",
                path.display()
            );
        }
    }
    decision
}

/// True when the test should run; false after printing and recording a
/// skip; panics with the reason and the switch when it cannot run.
#[track_caller]
pub fn require(tier: Tier, why_unavailable: Option<String>, test: &str) -> bool {
    match check(tier, why_unavailable, test) {
        Decision::Run => true,
        Decision::Skip(_) => false,
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// The running test's name as libtest names its thread (`module::test`),
/// else `fallback` (benchmarks and other code on the main thread).
pub fn current_test(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => fallback.to_owned(),
    }
}

/// Why this process cannot do what needs root, or `None` as root.
pub fn root_unavailable() -> Option<String> {
    let uid = nix::unistd::Uid::effective();
    (!uid.is_root())
        .then(|| format!("needs root (network namespaces, veths, BPF); effective uid is {uid}"))
}

/// Where skips are recorded: `SEXTANT_SKIP_LEDGER`, else
/// `sextant-skipped.txt` in `CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn ledger_path() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    ledger_path_from(
        std::env::var(LEDGER_VAR).ok().as_deref(),
        std::env::var("CARGO_TARGET_DIR").ok().as_deref(),
        workspace,
    )
}

/// [`ledger_path`] from the two variables' values and the workspace root.
pub fn ledger_path_from(
    ledger: Option<&str>,
    target_dir: Option<&str>,
    workspace: &Path,
) -> PathBuf {
    if let Some(path) = ledger.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let target = match target_dir.filter(|p| !p.is_empty()) {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join(LEDGER_FILE)
}

/// Appends one line to the ledger (one write, so parallel tests and test
/// processes do not interleave within a line).
pub fn record(path: &Path, line: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: &str = "netns::pods_talk";

    #[test]
    fn an_unavailable_tier_fails_with_the_reason_and_the_switch_unless_skipped() {
        let Decision::Fail(msg) = decide(Tier::Kernel, Some("needs root"), None, TEST) else {
            panic!("must fail");
        };
        assert!(msg.contains(TEST) && msg.contains("needs root"), "{msg}");
        assert!(msg.contains("SEXTANT_SKIP=kernel"), "{msg}");
        assert!(matches!(
            decide(Tier::Kernel, Some("needs root"), Some(""), TEST),
            Decision::Fail(_)
        ));
        // Skipping another tier does not skip this one.
        assert!(matches!(
            decide(
                Tier::Kernel,
                Some("needs root"),
                Some("cluster,cloud"),
                TEST
            ),
            Decision::Fail(_)
        ));
    }

    #[test]
    fn a_named_tier_is_skipped_with_the_reason() {
        assert_eq!(
            decide(
                Tier::Kernel,
                Some("needs root"),
                Some(" cluster , kernel,"),
                TEST
            ),
            Decision::Skip("needs root".into())
        );
        assert_eq!(
            decide(Tier::Daemon, Some("bird missing"), Some("all"), TEST),
            Decision::Skip("bird missing".into())
        );
    }

    #[test]
    fn a_named_tier_is_skipped_even_when_it_could_run() {
        let Decision::Skip(why) = decide(Tier::Cluster, None, Some("cluster"), TEST) else {
            panic!("must skip");
        };
        assert!(why.contains("could run here"), "{why}");
    }

    #[test]
    fn an_available_tier_runs() {
        assert_eq!(decide(Tier::Kernel, None, None, TEST), Decision::Run);
        assert_eq!(
            decide(Tier::Kernel, None, Some("cloud"), TEST),
            Decision::Run
        );
    }

    #[test]
    fn an_unknown_tier_name_fails_instead_of_skipping_nothing() {
        let Decision::Fail(msg) = decide(Tier::Kernel, Some("needs root"), Some("kernal"), TEST)
        else {
            panic!("must fail");
        };
        assert!(msg.contains("\"kernal\""), "{msg}");
        assert!(matches!(
            decide(Tier::Kernel, None, Some("kernel,nope"), TEST),
            Decision::Fail(_)
        ));
    }

    #[test]
    fn skip_values_parse_to_a_set_of_tiers() {
        assert_eq!(skipped_tiers(None), Ok(vec![]));
        assert_eq!(
            skipped_tiers(Some("daemon,kernel,daemon")),
            Ok(vec![Tier::Kernel, Tier::Daemon])
        );
        assert_eq!(skipped_tiers(Some("all")), Ok(Tier::ALL.to_vec()));
    }

    #[test]
    fn the_ledger_lives_in_the_target_dir_unless_overridden() {
        let ws = Path::new("/ws");
        assert_eq!(
            ledger_path_from(None, None, ws),
            Path::new("/ws/target/sextant-skipped.txt")
        );
        assert_eq!(
            ledger_path_from(Some(""), Some("out"), ws),
            Path::new("/ws/out/sextant-skipped.txt")
        );
        assert_eq!(
            ledger_path_from(None, Some("/abs/t"), ws),
            Path::new("/abs/t/sextant-skipped.txt")
        );
        assert_eq!(
            ledger_path_from(Some("/tmp/l.txt"), Some("/abs/t"), ws),
            Path::new("/tmp/l.txt")
        );
    }

    #[test]
    fn the_current_test_is_named_after_its_thread() {
        assert_eq!(
            current_test("fallback"),
            "tests::the_current_test_is_named_after_its_thread"
        );
    }

    #[test]
    fn records_append_one_line_each() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/ledger.txt");
        record(&path, "kernel: a: why").expect("first");
        record(&path, "cluster: b: why").expect("second");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "kernel: a: why\ncluster: b: why\n"
        );
    }
}
