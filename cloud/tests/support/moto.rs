//! `moto_server` (PyPI `moto[server]`, from the repository's `.venv`) on a
//! free loopback port, for the test binaries that include this file with
//! `#[path = "support/moto.rs"] mod moto;`.

use std::{
    net::{TcpListener as StdListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// A `moto_server` child on a loopback port, killed on drop.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Moto {
    /// Starts `moto_server` with `env` added to its environment.
    pub fn start(env: &[(&str, &str)]) -> Result<Moto> {
        let venv = std::env::var_os("SEXTANT_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
        let bin = venv.join("bin/moto_server");
        if !bin.is_file() {
            panic!(
                "moto_server not found at {}: run `make test` (or `bash scripts/setup.sh`) \
                 to create .venv with moto[server], or point SEXTANT_VENV at a venv that has it",
                bin.display()
            );
        }
        // The port is free when we look; another process may take it before
        // moto binds, so a server that dies early is started again.
        for _ in 0..5 {
            let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Moto {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                    });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("moto_server did not answer on port {port} within 30 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!("moto_server exited at start five times")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
