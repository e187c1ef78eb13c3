//! Typed cloud errors: each provider maps its own codes onto these, so that
//! callers decide retries and conditions without knowing the provider.

use std::time::Duration;

use crate::Action;

/// A boxed lower-level cause (SDK error, HTTP error, JSON error).
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of a cloud call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a cloud call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider throttled the call (EC2 `RequestLimitExceeded`, ECS `Throttling*`).
    #[error("{action}: throttled by the cloud API{}", retry_after.map(|d| format!(", retry after {d:?}")).unwrap_or_default())]
    Throttled {
        /// The call.
        action: Action,
        /// How long the provider asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// An account or instance limit was hit (ENIs per instance, addresses per ENI, ENI quota).
    #[error("{action}: limit exceeded: {message}")]
    LimitExceeded {
        /// The call.
        action: Action,
        /// The provider's message.
        message: String,
    },
    /// The subnet has no free addresses left.
    #[error("{action}: insufficient free addresses: {message}")]
    InsufficientAddresses {
        /// The call.
        action: Action,
        /// The provider's message.
        message: String,
    },
    /// The ENI, instance, subnet or address does not exist.
    #[error("{action}: not found: {message}")]
    NotFound {
        /// The call.
        action: Action,
        /// The provider's message.
        message: String,
    },
    /// The provider rejected the request as invalid (bad parameter, wrong state).
    #[error("{action}: invalid request: {message}")]
    InvalidRequest {
        /// The call.
        action: Action,
        /// The provider's message.
        message: String,
    },
    /// The provider could not be reached, answered 5xx, or answered something
    /// that does not parse.
    #[error("{action}: cloud unavailable: {message}")]
    Unavailable {
        /// The call.
        action: Action,
        /// What went wrong.
        message: String,
        /// The lower-level cause.
        #[source]
        source: Option<Source>,
    },
    /// No answer before the call's deadline.
    #[error("{action}: no answer within {deadline:?}")]
    DeadlineExceeded {
        /// The call.
        action: Action,
        /// The deadline that passed.
        deadline: Duration,
    },
}

impl Error {
    /// The call that failed.
    pub fn action(&self) -> Action {
        match self {
            Error::Throttled { action, .. }
            | Error::LimitExceeded { action, .. }
            | Error::InsufficientAddresses { action, .. }
            | Error::NotFound { action, .. }
            | Error::InvalidRequest { action, .. }
            | Error::Unavailable { action, .. }
            | Error::DeadlineExceeded { action, .. } => *action,
        }
    }

    /// Label for the `kind` of an error in metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Throttled { .. } => "throttled",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::InsufficientAddresses { .. } => "insufficient_addresses",
            Error::NotFound { .. } => "not_found",
            Error::InvalidRequest { .. } => "invalid_request",
            Error::Unavailable { .. } => "unavailable",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
        }
    }

    /// Whether trying the same call again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Throttled { .. } | Error::Unavailable { .. } | Error::DeadlineExceeded { .. }
        )
    }

    /// Whether the call may have taken effect although it failed: no answer
    /// in time, or an answer that was lost or does not parse. A throttled
    /// call never ran. Such a call of a non-idempotent mutation is sent
    /// again only under the same client token.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::DeadlineExceeded { .. }
        )
    }

    /// A malformed response from the provider: a typed error, never a panic.
    pub fn malformed(action: Action, what: impl Into<String>) -> Self {
        Error::Unavailable {
            action,
            message: format!("malformed response: {}", what.into()),
            source: None,
        }
    }
}
