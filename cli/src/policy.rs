//! `sextantctl policy convert`: CiliumNetworkPolicy YAML in, the
//! SextantNetworkPolicy YAML Sextant enforces out, for migrating from Cilium.
//! A policy Sextant could not enforce exactly as written is refused, with
//! every problem listed; there is no way to force it through.

use std::io::Read;

use serde_json::Value;

/// `sextantctl policy ...`.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Convert CiliumNetworkPolicy YAML (one or more documents, or a
    /// CiliumNetworkPolicyList) into SextantNetworkPolicy YAML.
    Convert(ConvertArgs),
}

/// Flags of `sextantctl policy convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// YAML file to read, `-` for stdin.
    #[arg(default_value = "-")]
    pub input: String,
    /// File to write instead of stdout.
    #[arg(short = 'o', long)]
    pub output: Option<std::path::PathBuf>,
}

/// Converts every policy in `yaml`; on any problem, returns all of them,
/// one per line, each prefixed with its document and policy.
pub fn convert_yaml(yaml: &str) -> Result<String, Vec<String>> {
    let mut docs = Vec::new();
    let mut problems = Vec::new();
    for (n, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        match <Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => docs.push((n + 1, v)),
            Err(e) => {
                problems.push(format!("document {}: not YAML: {e}", n + 1));
                // The document iterator does not recover from a syntax error.
                break;
            }
        }
    }
    let mut out = Vec::new();
    for (n, doc) in docs {
        for policy in sextant_policy::policy_documents(&doc) {
            let name = describe(&policy);
            match sextant_policy::cilium_to_sextant(&policy) {
                Ok(v) => match serde_yaml::to_string(&v) {
                    Ok(text) => out.push(text),
                    Err(e) => problems.push(format!("document {n} ({name}): {e}")),
                },
                Err(sextant_policy::Error::Rejected { problems: list, .. }) => {
                    problems.extend(list.iter().map(|p| format!("document {n} ({name}): {p}")));
                }
                Err(e) => problems.push(format!("document {n} ({name}): {e}")),
            }
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push("no CiliumNetworkPolicy in the input".to_owned());
    }
    if problems.is_empty() {
        Ok(out.join("---\n"))
    } else {
        Err(problems)
    }
}

fn describe(doc: &Value) -> String {
    let s = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or("?");
    format!(
        "{} {}/{}",
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name")
    )
}

/// Runs `sextantctl policy ...`.
pub fn run(cmd: &PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Convert(args) = cmd;
    let mut input = String::new();
    if args.input == "-" {
        std::io::stdin().read_to_string(&mut input)?;
    } else {
        input = std::fs::read_to_string(&args.input)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", args.input))?;
    }
    match convert_yaml(&input) {
        Ok(yaml) => {
            match &args.output {
                Some(path) => std::fs::write(path, yaml)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?,
                None => print!("{yaml}"),
            }
            Ok(())
        }
        Err(problems) => anyhow::bail!(
            "not converted: Sextant would not enforce these policies as written:\n  {}",
            problems.join("\n  ")
        ),
    }
}
