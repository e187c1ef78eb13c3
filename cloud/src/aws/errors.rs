//! EC2 failures onto the crate's typed [`Error`]s: the error code decides,
//! the HTTP status breaks ties, and anything that is not a parsed EC2 error
//! (no connection, no answer in time, a body that does not parse) is
//! transient.

use std::time::Duration;

use aws_sdk_ec2::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
};

use sextant_kit::ErrorChain;

use crate::{Action, Error};

/// What an EC2 error code means to Sextant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Throttled,
    LimitExceeded,
    InsufficientAddresses,
    NotFound,
    InvalidRequest,
    Unavailable,
}

/// Codes EC2 (and the AWS SDKs) use for request-rate throttling.
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
];

/// Codes of server-side trouble, worth a retry.
const SERVER: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestExpired",
    "RequestTimeout",
];

/// Classifies an EC2 error by its code and HTTP status.
pub(super) fn classify(code: Option<&str>, status: u16) -> Kind {
    let Some(code) = code.filter(|c| !c.is_empty()) else {
        return match status {
            429 => Kind::Throttled,
            400..=499 => Kind::InvalidRequest,
            _ => Kind::Unavailable,
        };
    };
    if THROTTLING.contains(&code) {
        Kind::Throttled
    } else if code == "InsufficientFreeAddressesInSubnet" {
        Kind::InsufficientAddresses
    } else if code.ends_with("LimitExceeded") {
        // AttachmentLimitExceeded, PrivateIpAddressLimitExceeded,
        // NetworkInterfaceLimitExceeded, TagLimitExceeded, ...
        Kind::LimitExceeded
    } else if code.ends_with(".NotFound") {
        Kind::NotFound
    } else if SERVER.contains(&code) || status >= 500 {
        Kind::Unavailable
    } else {
        // InvalidParameter*, MissingParameter, IncorrectState,
        // InvalidNetworkInterface.InUse, OperationNotPermitted,
        // UnauthorizedOperation, and whatever else EC2 refuses.
        Kind::InvalidRequest
    }
}

/// Maps one SDK failure. `deadline` is the operation timeout the client was
/// built with, reported when the SDK gave up waiting.
pub(super) fn from_sdk<E>(
    action: Action,
    deadline: Duration,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (code, message, status) = match &err {
        SdkError::TimeoutError(_) => return Error::DeadlineExceeded { action, deadline },
        // The SDK reports a 2xx body it cannot read as an unhandled
        // service error: for us it is an answer that does not parse.
        SdkError::ServiceError(ctx) if !ctx.raw().status().is_success() => (
            ctx.err().code().map(str::to_owned),
            ctx.err().message().unwrap_or_default().to_owned(),
            ctx.raw().status().as_u16(),
        ),
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            return Error::Unavailable {
                action,
                message: format!("malformed response: {}", ErrorChain(&err)),
                source: Some(Box::new(err)),
            };
        }
        _ => {
            return Error::Unavailable {
                action,
                message: ErrorChain(&err).to_string(),
                source: Some(Box::new(err)),
            };
        }
    };
    let text = match &code {
        Some(code) if message.is_empty() => code.clone(),
        Some(code) => format!("{code}: {message}"),
        None => format!("HTTP {status}: {}", ErrorChain(&err)),
    };
    match classify(code.as_deref(), status) {
        Kind::Throttled => Error::Throttled {
            action,
            retry_after: None,
        },
        Kind::LimitExceeded => Error::LimitExceeded {
            action,
            message: text,
        },
        Kind::InsufficientAddresses => Error::InsufficientAddresses {
            action,
            message: text,
        },
        Kind::NotFound => Error::NotFound {
            action,
            message: text,
        },
        Kind::InvalidRequest => Error::InvalidRequest {
            action,
            message: text,
        },
        Kind::Unavailable => Error::Unavailable {
            action,
            message: text,
            source: Some(Box::new(err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_are_throttled_even_with_503() {
        assert_eq!(classify(Some("RequestLimitExceeded"), 503), Kind::Throttled);
        assert_eq!(classify(Some("Throttling"), 400), Kind::Throttled);
        assert_eq!(classify(None, 429), Kind::Throttled);
    }

    #[test]
    fn limit_codes_are_limit_exceeded() {
        for code in [
            "AttachmentLimitExceeded",
            "PrivateIpAddressLimitExceeded",
            "NetworkInterfaceLimitExceeded",
            "TagLimitExceeded",
        ] {
            assert_eq!(classify(Some(code), 400), Kind::LimitExceeded, "{code}");
        }
    }

    #[test]
    fn subnet_exhaustion_is_insufficient_addresses() {
        assert_eq!(
            classify(Some("InsufficientFreeAddressesInSubnet"), 400),
            Kind::InsufficientAddresses
        );
    }

    #[test]
    fn dot_not_found_codes_are_not_found() {
        for code in [
            "InvalidNetworkInterfaceID.NotFound",
            "InvalidAttachmentID.NotFound",
            "InvalidInstanceID.NotFound",
            "InvalidSubnetID.NotFound",
            "InvalidGroup.NotFound",
        ] {
            assert_eq!(classify(Some(code), 400), Kind::NotFound, "{code}");
        }
    }

    #[test]
    fn refusals_are_invalid_requests() {
        for code in [
            "InvalidParameterValue",
            "InvalidParameterCombination",
            "MissingParameter",
            "IncorrectState",
            "InvalidNetworkInterface.InUse",
            "InvalidNetworkInterfaceID.Malformed",
            "OperationNotPermitted",
            "InvalidInstanceType",
        ] {
            assert_eq!(classify(Some(code), 400), Kind::InvalidRequest, "{code}");
        }
        assert_eq!(classify(None, 400), Kind::InvalidRequest);
    }

    #[test]
    fn server_trouble_is_unavailable() {
        assert_eq!(classify(Some("InternalError"), 500), Kind::Unavailable);
        assert_eq!(classify(Some("Unavailable"), 503), Kind::Unavailable);
        assert_eq!(classify(Some("SomethingNew"), 502), Kind::Unavailable);
        assert_eq!(classify(None, 500), Kind::Unavailable);
    }
}
