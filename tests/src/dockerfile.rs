//! A Dockerfile read into stages and instructions: enough of the format to
//! check what each image contains (`FROM ... AS`, `COPY --from`, `RUN`,
//! `USER`, `ENTRYPOINT`), not a full BuildKit frontend. Line continuations,
//! comments, parser directives and exec-form (JSON array) arguments are
//! understood; heredocs and `ARG` substitution are not.

use anyhow::{Context, bail, ensure};

/// One instruction: its keyword upper-cased and its arguments as written,
/// continuations joined with a space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
    /// 1-based line the instruction starts on.
    pub line: usize,
}

/// One build stage: `FROM <base> [AS <name>]` and what follows it.
#[derive(Clone, Debug)]
pub struct Stage {
    pub base: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// A file copied from another stage into this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    /// The stage it comes from (`--from=`).
    pub from: String,
    /// Its path in that stage.
    pub source: String,
    /// Its path in this stage's filesystem.
    pub dest: String,
}

/// A `cargo build` in a `RUN`: the packages and bins it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CargoBuild {
    pub packages: Vec<String>,
    pub bins: Vec<String>,
    pub release: bool,
    pub locked: bool,
}

/// A parsed Dockerfile.
#[derive(Clone, Debug)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut stages: Vec<Stage> = Vec::new();
        for ins in logical_lines(text) {
            if ins.keyword == "FROM" {
                let words: Vec<&str> = ins
                    .args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (base, name) = match words.as_slice() {
                    [base] => (*base, None),
                    [base, kw, name] if kw.eq_ignore_ascii_case("as") => (*base, Some(*name)),
                    _ => bail!("line {}: cannot read FROM {}", ins.line, ins.args),
                };
                stages.push(Stage {
                    base: base.to_owned(),
                    name: name.map(str::to_owned),
                    instructions: Vec::new(),
                });
            } else {
                let Some(stage) = stages.last_mut() else {
                    ensure!(
                        ins.keyword == "ARG",
                        "line {}: {} before the first FROM",
                        ins.line,
                        ins.keyword
                    );
                    continue;
                };
                stage.instructions.push(ins);
            }
        }
        ensure!(!stages.is_empty(), "no FROM in the Dockerfile");
        Ok(Self { stages })
    }

    /// The stage called `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// Stages nothing else builds on or copies from: the images it makes.
    pub fn targets(&self) -> Vec<&Stage> {
        self.stages
            .iter()
            .filter(|s| {
                let Some(name) = s.name.as_deref() else {
                    return true;
                };
                !self
                    .stages
                    .iter()
                    .any(|o| o.base == name || o.copied().iter().any(|c| c.from == name))
            })
            .collect()
    }

    /// The external image at the root of `stage`'s `FROM` chain.
    pub fn root_base<'a>(&'a self, stage: &'a Stage) -> &'a str {
        let mut current = stage;
        // Bounded: a chain longer than the file is a cycle.
        for _ in 0..self.stages.len() {
            match self.stage(&current.base) {
                Some(parent) => current = parent,
                None => return &current.base,
            }
        }
        &current.base
    }

    /// `stage` and the stages it is built `FROM`, nearest first.
    pub fn lineage<'a>(&'a self, stage: &'a Stage) -> Vec<&'a Stage> {
        let mut out = vec![stage];
        while out.len() <= self.stages.len() {
            match self.stage(&out[out.len() - 1].base) {
                Some(parent) => out.push(parent),
                None => break,
            }
        }
        out
    }
}

impl Stage {
    fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        self.instructions
            .iter()
            .filter(move |i| i.keyword == keyword)
    }

    /// The last `USER`, as written (`65532:65532`, `0`).
    pub fn user(&self) -> Option<&str> {
        self.all("USER").last().map(|i| i.args.trim())
    }

    /// The last `ENTRYPOINT` in exec form.
    pub fn entrypoint(&self) -> anyhow::Result<Option<Vec<String>>> {
        self.all("ENTRYPOINT")
            .last()
            .map(|i| {
                serde_json::from_str(&i.args)
                    .with_context(|| format!("line {}: ENTRYPOINT is not in exec form", i.line))
            })
            .transpose()
    }

    /// Files copied in from other stages, each with its destination path
    /// (a destination ending in `/`, or one of several sources, is a directory).
    pub fn copied(&self) -> Vec<Copied> {
        let mut out = Vec::new();
        for ins in self.all("COPY") {
            let mut from = None;
            let mut paths = Vec::new();
            for word in ins.args.split_whitespace() {
                if let Some(f) = word.strip_prefix("--from=") {
                    from = Some(f.to_owned());
                } else if !word.starts_with("--") {
                    paths.push(word);
                }
            }
            let (Some(from), Some((dest, sources))) = (from, paths.split_last()) else {
                continue;
            };
            let into_dir = dest.ends_with('/') || sources.len() > 1;
            for source in sources {
                let dest = if into_dir {
                    let file = source.rsplit('/').next().unwrap_or(source);
                    format!("{}/{file}", dest.trim_end_matches('/'))
                } else {
                    (*dest).to_owned()
                };
                out.push(Copied {
                    from: from.clone(),
                    source: (*source).to_owned(),
                    dest,
                });
            }
        }
        out
    }

    /// The `RUN` commands, each as one line.
    pub fn runs(&self) -> impl Iterator<Item = &str> {
        self.all("RUN").map(|i| i.args.as_str())
    }

    /// Every `cargo build` in this stage's `RUN`s.
    pub fn cargo_builds(&self) -> Vec<CargoBuild> {
        let mut out = Vec::new();
        for run in self.runs() {
            let words: Vec<&str> = run.split_whitespace().collect();
            for (i, w) in words.iter().enumerate() {
                if *w != "cargo" || words.get(i + 1) != Some(&"build") {
                    continue;
                }
                let mut build = CargoBuild::default();
                let mut args = words[i + 2..].iter();
                while let Some(&a) = args.next() {
                    match a {
                        "&&" | ";" | "||" | "|" => break,
                        "--release" => build.release = true,
                        "--locked" => build.locked = true,
                        "-p" | "--package" => {
                            build.packages.extend(args.next().map(|s| s.to_string()))
                        }
                        "--bin" => build.bins.extend(args.next().map(|s| s.to_string())),
                        _ => {
                            if let Some(p) = a.strip_prefix("--package=") {
                                build.packages.push(p.to_owned());
                            } else if let Some(b) = a.strip_prefix("--bin=") {
                                build.bins.push(b.to_owned());
                            }
                        }
                    }
                }
                out.push(build);
            }
        }
        out
    }
}

/// Instructions with continuations joined; comments, directives and blank
/// lines dropped.
fn logical_lines(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        // Comments may sit between continuation lines and do not end them.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body.trim_end(), true),
            None => (trimmed, false),
        };
        let (line, mut acc) = current.take().unwrap_or((n + 1, String::new()));
        if !body.is_empty() {
            if !acc.is_empty() {
                acc.push(' ');
            }
            acc.push_str(body);
        }
        if continues {
            current = Some((line, acc));
            continue;
        }
        if acc.is_empty() {
            continue;
        }
        let (keyword, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
            line,
        });
    }
    if let Some((line, acc)) = current {
        let (keyword, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
            line,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# syntax=docker/dockerfile:1
ARG RUST=1
FROM rust:1-bookworm AS builder
RUN apt-get update \
 # a comment inside a continuation
 && apt-get install -y clang
FROM builder AS build-agent
RUN --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sextant-agent --bin sextant-agent --bin=sextant-cni \
 && install -D -t /out target/release/sextant-agent target/release/sextant-cni
FROM debian:bookworm-slim AS sextant-agent
COPY --from=build-agent /out/sextant-agent /out/sextant-cni /usr/local/bin/
COPY --from=build-agent --chmod=0755 /out/sextant-agent /sbin/agent
USER 0:0
ENTRYPOINT ["/usr/local/bin/sextant-agent"]
"#;

    #[test]
    fn reads_stages_continuations_and_copies() {
        let d = Dockerfile::parse(SAMPLE).expect("parses");
        assert_eq!(d.stages.len(), 3);
        let agent = d.stage("sextant-agent").expect("stage");
        assert_eq!(d.root_base(agent), "debian:bookworm-slim");
        let build = d.stage("build-agent").expect("stage");
        assert_eq!(d.root_base(build), "rust:1-bookworm");
        assert_eq!(
            d.lineage(build)
                .iter()
                .filter_map(|s| s.name.as_deref())
                .collect::<Vec<_>>(),
            ["build-agent", "builder"]
        );
        assert_eq!(
            d.targets()
                .iter()
                .filter_map(|s| s.name.as_deref())
                .collect::<Vec<_>>(),
            ["sextant-agent"]
        );
        let dests: Vec<String> = agent.copied().into_iter().map(|c| c.dest).collect();
        assert_eq!(
            dests,
            [
                "/usr/local/bin/sextant-agent",
                "/usr/local/bin/sextant-cni",
                "/sbin/agent"
            ]
        );
        assert_eq!(agent.user(), Some("0:0"));
        assert_eq!(
            agent.entrypoint().expect("exec form"),
            Some(vec!["/usr/local/bin/sextant-agent".to_owned()])
        );
        assert_eq!(
            build.cargo_builds(),
            vec![CargoBuild {
                packages: vec!["sextant-agent".into()],
                bins: vec!["sextant-agent".into(), "sextant-cni".into()],
                release: true,
                locked: true,
            }]
        );
        let builder = d.stage("builder").expect("stage");
        assert_eq!(
            builder.runs().collect::<Vec<_>>(),
            ["apt-get update && apt-get install -y clang"]
        );
    }

    #[test]
    fn shell_form_entrypoint_is_an_error() {
        let d = Dockerfile::parse("FROM x AS y\nENTRYPOINT /bin/app --flag\n").expect("parses");
        assert!(d.stages[0].entrypoint().is_err());
    }

    #[test]
    fn an_instruction_before_from_is_an_error() {
        assert!(Dockerfile::parse("RUN true\nFROM x\n").is_err());
    }
}
