//! Graceful stop on SIGTERM (what the kubelet sends) or SIGINT (Ctrl-C).

use std::future::Future;

/// A future that resolves on the first SIGTERM or SIGINT. The handlers are
/// installed when this is called, so a signal that comes before the future
/// is first polled is not lost.
pub fn signal() -> std::io::Result<impl Future<Output = Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => Signal::Terminate,
            _ = int.recv() => Signal::Interrupt,
        }
    })
}

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM.
    Terminate,
    /// SIGINT.
    Interrupt,
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_on_sigterm() {
        let stop = signal().unwrap();
        // SAFETY-free: kill(2) through the shell's own pid via std.
        let pid = std::process::id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), stop)
            .await
            .expect("SIGTERM noticed");
        assert_eq!(got, Signal::Terminate);
    }
}
