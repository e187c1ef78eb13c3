//! Compiles the BPF C in `bpf/` with `clang -target bpf` into `OUT_DIR`,
//! where `src/datapath.rs` embeds it.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    for f in ["bpf/datapath.c", "bpf/datapath.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    // The multiarch dir holds <asm/types.h>, which <linux/types.h> needs.
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", "bpf/datapath.c", "-o"])
        .arg(out.join("datapath.o"))
        .status()
        .unwrap_or_else(|e| {
            panic!("running {clang} for bpf/datapath.c: {e} (scripts/setup.sh installs clang)")
        });
    assert!(status.success(), "{clang} failed to compile bpf/datapath.c");
}
