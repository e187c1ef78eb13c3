//! The real `sextant-scheduler-ext` binary stops gracefully on SIGTERM, as
//! the kubelet stops a pod: it exits 0 and says so, instead of dying of the
//! signal.
//!
//! The binary is pointed at a kubeconfig whose API server is a closed
//! loopback port: building the client needs no connection, the watches only
//! retry, and the extender serves all the while.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

/// A kubeconfig naming an API server nothing listens on.
fn unreachable_kubeconfig() -> std::path::PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = closed.local_addr().expect("bound").port();
    drop(closed);
    let path = std::env::temp_dir().join(format!(
        "sextant-scheduler-ext-shutdown-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: none
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: none
  context:
    cluster: none
    user: none
current-context: none
users:
- name: none
  user:
    token: unused
"
        ),
    )
    .expect("write kubeconfig");
    path
}

#[test]
fn sigterm_stops_the_extender_gracefully_with_exit_code_zero() {
    let kubeconfig = unreachable_kubeconfig();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sextant-scheduler-ext"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--insecure-http",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sextant-scheduler-ext");

    // Read its log on a thread: every line, and a signal once it serves.
    let stderr = child.stderr.take().expect("stderr piped");
    let (serving_tx, serving_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving the scheduler extender") {
                let _ = serving_tx.send(());
            }
            log.push(line);
        }
        log
    });

    let serving = serving_rx.recv_timeout(Duration::from_secs(60));
    if serving.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let log = reader.join().unwrap_or_default();
        let _ = std::fs::remove_file(&kubeconfig);
        panic!("the extender never served:\n{}", log.join("\n"));
    }

    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed");

    // Wait for the exit, but never for ever.
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    let exited = done_rx.recv_timeout(Duration::from_secs(20)).is_ok();
    if !exited {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
    let status = waiter.join().expect("waiter").expect("wait for the child");
    let log = reader.join().expect("log reader").join("\n");
    let _ = std::fs::remove_file(&kubeconfig);

    assert!(exited, "still running 20s after SIGTERM:\n{log}");
    assert!(
        status.success(),
        "exit status {status} after SIGTERM (a signal death means no graceful stop):\n{log}"
    );
    assert!(
        log.contains("signal received, stopping gracefully") && log.contains("SIGTERM"),
        "no graceful-stop line in the log:\n{log}"
    );
}

#[test]
fn without_its_serving_certificate_the_extender_refuses_to_start_and_says_why() {
    // The TLS files are read before any Kubernetes client is built.
    let out = Command::new(env!("CARGO_BIN_EXE_sextant-scheduler-ext"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("NO_COLOR", "1")
        .output()
        .expect("run sextant-scheduler-ext");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without TLS files:\n{log}");
    assert!(
        log.contains("reading /nonexistent/tls.crt"),
        "no reason given:\n{log}"
    );
}
