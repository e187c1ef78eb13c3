//! `sextantctl lab` on this machine: the real agent, CNI and datapath serve
//! pods from a NodeNetwork that node IPAM filled from the `sim` cloud. Root;
//! without it the test fails with the reason, unless `SEXTANT_SKIP=kernel`.

use std::{path::PathBuf, process::Command};

use sextant_testkit::Tier;

/// `target/<profile>` of this test binary (it runs from `deps/`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(PathBuf::from))
        .unwrap_or_default()
}

#[test]
fn lab_pods_get_ips_the_sim_cloud_assigned_to_the_instance_enis() {
    let test = format!(
        "{}: {}",
        file!(),
        sextant_testkit::current_test(
            "lab_pods_get_ips_the_sim_cloud_assigned_to_the_instance_enis"
        )
    );
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return;
    }
    // The agent's and the lab's binaries are other packages': build them (a
    // no-op when fresh).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "-p",
        "sextant-agent",
        "-p",
        "sextant-lab",
        "--bins",
    ]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let st = build.status().expect("running cargo build");
    assert!(
        st.success(),
        "cargo build -p sextant-agent -p sextant-lab --bins: {st}"
    );
    let lab_bin = target_dir().join("sextant-lab");
    assert!(lab_bin.exists(), "{} missing", lab_bin.display());

    let out = sextantctl::lab::run(4, &lab_bin).expect("the lab runs");
    assert_eq!(out.pods.len(), 4, "{out:?}");
    for (pod, src) in &out.pods {
        let (eni, subnet) = src.as_ref().unwrap_or_else(|| {
            panic!(
                "{} has {}, not an address of the sim instance",
                pod.pod, pod.ip
            )
        });
        assert!(
            eni.starts_with("eni-") && subnet.starts_with("subnet-"),
            "{eni} {subnet}"
        );
        assert_eq!(pod.ip.octets()[..2], [10, 91], "{}", pod.ip);
    }
    assert!(out.all_from_sim());
}
