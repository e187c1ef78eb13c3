//! Errors as one log line.

use std::fmt;

/// Displays an error with all its sources, `a: b: c`, so a log line says
/// why and not only what.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// How a binary's `main` ends: `Ok` is exit status 0; an error is logged
/// once with its whole cause chain, naming `binary`, and is exit status 1.
pub fn exit<E>(binary: &str, outcome: Result<(), E>) -> std::process::ExitCode
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e: Box<dyn std::error::Error + Send + Sync + 'static> = e.into();
            tracing::error!(error = %Chain(&*e), "{binary} failed");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("reading the checkpoint")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_failed_run_is_exit_status_one() {
        let ok: Result<(), Outer> = Ok(());
        assert_eq!(exit("sextant-test", ok), std::process::ExitCode::SUCCESS);
        let failed = Err(Outer(std::io::Error::other("disk gone")));
        assert_eq!(
            exit("sextant-test", failed),
            std::process::ExitCode::FAILURE
        );
    }

    #[test]
    fn shows_every_cause_in_order() {
        let e = Outer(std::io::Error::other("disk gone"));
        assert_eq!(Chain(&e).to_string(), "reading the checkpoint: disk gone");
    }
}
