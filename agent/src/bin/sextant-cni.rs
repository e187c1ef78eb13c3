//! `sextant-cni`: reads the CNI environment and stdin, hands over to
//! [`sextant_agent::cni::run`], prints the result or the CNI error JSON.

use std::io::Read;

use sextant_agent::cni::{CniEnv, run};

fn main() -> std::process::ExitCode {
    let mut stdin = Vec::new();
    let env = CniEnv::from_process();
    if env.command != "VERSION"
        && let Err(e) = std::io::stdin().read_to_end(&mut stdin)
    {
        eprintln!("sextant-cni: reading stdin: {e}");
    }
    match run(&env, &stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
            std::process::ExitCode::FAILURE
        }
    }
}
