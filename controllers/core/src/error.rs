//! Operator errors; each decides how the reconcile is requeued.

use sextant_crds::{NodeNetworkStatus, SpecError};

/// Result of operator work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be acted on; the status carries the `SpecValid` condition.
    #[error("NodeNetwork {node}: invalid spec")]
    InvalidSpec {
        /// Node name.
        node: String,
        /// What is wrong.
        #[source]
        source: SpecError,
        /// Status with the condition set, to be written.
        status: Box<NodeNetworkStatus>,
    },
    /// A cloud node without an instance type.
    #[error("NodeNetwork {node}: spec.instanceType is required for cloud providers")]
    MissingInstanceType {
        /// Node name.
        node: String,
    },
    /// The VPC is neither in the spec nor learnt from the instance's ENIs.
    #[error("NodeNetwork {node}: VPC unknown (set spec.vpcId)")]
    MissingVpc {
        /// Node name.
        node: String,
    },
    /// A cloud call failed after its retries.
    #[error("cloud call failed")]
    Cloud {
        /// The cloud's error.
        #[from]
        source: sextant_cloud::Error,
    },
}

impl Error {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::MissingInstanceType { .. } => "missing_instance_type",
            Error::MissingVpc { .. } => "missing_vpc",
            Error::Cloud { source } => source.metric_label(),
        }
    }

    /// Whether the same reconcile can succeed later without a spec change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Cloud { source } => source.is_transient(),
            _ => false,
        }
    }
}
