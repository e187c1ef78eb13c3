//! Why a policy is not enforced.

use std::fmt;

/// Whether a problem is Sextant's limit or the policy's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A valid field Sextant does not enforce (L7 rules, `toFQDNs`, ...).
    Unsupported,
    /// A malformed value (bad CIDR, port, operator, ...).
    Invalid,
}

/// One offending field, with its path in the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field, e.g. `spec.ingress[0].toPorts[0].rules`.
    pub path: String,
    /// Unsupported or invalid.
    pub kind: ProblemKind,
    /// What is wrong, for humans.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The policy crate's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy uses fields Sextant does not enforce or malformed values;
    /// every one of them is listed, none is ignored.
    #[error("{policy} is not enforceable: {}", join(problems))]
    Rejected {
        /// `kind/namespace/name` of the policy.
        policy: String,
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },
    /// The document does not have the shape of its kind at all.
    #[error("{what} does not decode: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A document that is not a policy kind Sextant reads.
    #[error(
        "{api_version} {kind} is not a network policy Sextant reads (want cilium.io/v2 CiliumNetworkPolicy, sextant.io/v1alpha1 SextantNetworkPolicy or networking.k8s.io/v1 NetworkPolicy)"
    )]
    UnknownKind {
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
    },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Rejected { .. } => "rejected",
            Error::Decode { .. } => "decode",
            Error::UnknownKind { .. } => "unknown_kind",
        }
    }

    /// The `Accepted=False` reason: `Unsupported` when any problem is
    /// Sextant's limit, else `Invalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Rejected { problems, .. }
                if problems.iter().any(|p| p.kind == ProblemKind::Unsupported) =>
            {
                sextant_crds::REASON_UNSUPPORTED
            }
            _ => sextant_crds::REASON_INVALID,
        }
    }

    /// Every problem, one per line, for a status message or a terminal.
    pub fn problems_text(&self) -> String {
        match self {
            Error::Rejected { problems, .. } => problems
                .iter()
                .map(Problem::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            other => other.to_string(),
        }
    }
}
