//! ECS error answers mapped onto the crate's typed [`Error`].
//!
//! ECS answers a failed call with an HTTP 4xx/5xx status and a body
//! `{"Code": ..., "Message": ..., "RequestId": ...}`. The code decides the
//! kind; the status only breaks ties for codes we do not know.

use std::time::Duration;

use serde::Deserialize;

use crate::{Action, Error};

/// The body of an ECS error answer.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message", default)]
    pub message: String,
    #[serde(rename = "RequestId", default)]
    pub request_id: String,
}

/// Codes that name a missing account or key rather than a missing resource.
const AUTH_NOT_FOUND: [&str; 2] = ["Abs.InvalidAccount.NotFound", "InvalidAccessKeyId.NotFound"];

/// Codes that say "try again": the same request can succeed later.
const TRANSIENT: [&str; 5] = [
    "Operation.Conflict",
    "SignatureNonceUsed",
    "ServiceUnavailable",
    "InternalError",
    "UnknownError",
];

fn is_limit(code: &str) -> bool {
    code.starts_with("QuotaExceed")
        || code.contains(".QuotaExceed")
        || (code.contains("Limit") && code.contains("Exceed"))
        || (code.contains("Max") && code.contains("Exceeded"))
        || code.contains("CountExceeded")
}

/// Maps an ECS error answer to an [`Error`].
///
/// `retry_after` is what the server said about waiting (a `Retry-After`
/// header); ECS flow control works in per-minute windows whose boundary the
/// client cannot see, so without the header it stays `None`.
pub(crate) fn classify(
    action: Action,
    status: u16,
    body: &ErrorBody,
    retry_after: Option<Duration>,
) -> Error {
    let code = body.code.as_str();
    let message = if body.request_id.is_empty() {
        format!("{code}: {}", body.message)
    } else {
        format!("{code}: {} (RequestId {})", body.message, body.request_id)
    };
    if code.starts_with("Throttling") {
        Error::Throttled {
            action,
            retry_after,
        }
    } else if code.contains("IpNotEnough") {
        Error::InsufficientAddresses { action, message }
    } else if is_limit(code) {
        Error::LimitExceeded { action, message }
    } else if code.ends_with(".NotFound") && !AUTH_NOT_FOUND.contains(&code) {
        Error::NotFound { action, message }
    } else if TRANSIENT.contains(&code) || status >= 500 || !(400..500).contains(&status) {
        Error::Unavailable {
            action,
            message: format!("HTTP {status}: {message}"),
            source: None,
        }
    } else {
        Error::InvalidRequest { action, message }
    }
}

/// A failed answer whose body is not an ECS error document.
pub(crate) fn unparseable(action: Action, status: u16, body: &[u8]) -> Error {
    let excerpt: String = String::from_utf8_lossy(body).chars().take(200).collect();
    Error::Unavailable {
        action,
        message: format!("HTTP {status} with an unparseable error body: {excerpt:?}"),
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, code: &str) -> &'static str {
        let body = ErrorBody {
            code: code.into(),
            message: "m".into(),
            request_id: "r".into(),
        };
        classify(Action::AssignIps, status, &body, None).metric_label()
    }

    #[test]
    fn maps_documented_ecs_codes_to_error_kinds() {
        let table = [
            (400, "Throttling", "throttled"),
            (400, "Throttling.User", "throttled"),
            (503, "Throttling.Api", "throttled"),
            (
                403,
                "InvalidVSwitchId.IpNotEnough",
                "insufficient_addresses",
            ),
            (403, "QuotaExceed.Tags", "limit_exceeded"),
            (403, "EniPerInstanceLimitExceeded", "limit_exceeded"),
            (403, "MaxEniCountExceeded", "limit_exceeded"),
            (403, "MaxEniPrivateIpsCountExceeded", "limit_exceeded"),
            (
                403,
                "InvalidOperation.MaxEniIpCountExceeded",
                "limit_exceeded",
            ),
            (403, "InvalidOperation.Ipv4CountExceeded", "limit_exceeded"),
            (403, "SecurityGroupInstanceLimitExceed", "limit_exceeded"),
            (404, "InvalidEniId.NotFound", "not_found"),
            (404, "InvalidInstanceId.NotFound", "not_found"),
            (404, "InvalidVSwitchId.NotFound", "not_found"),
            (403, "Abs.InvalidAccount.NotFound", "invalid_request"),
            (404, "InvalidAccessKeyId.NotFound", "invalid_request"),
            (400, "SignatureDoesNotMatch", "invalid_request"),
            (403, "InvalidIp.IpAssigned", "invalid_request"),
            (400, "InvalidParameter.Conflict", "invalid_request"),
            (403, "Operation.Conflict", "unavailable"),
            (400, "SignatureNonceUsed", "unavailable"),
            (500, "InternalError", "unavailable"),
            (503, "SomethingNew", "unavailable"),
        ];
        for (status, code, want) in table {
            assert_eq!(kind(status, code), want, "{status} {code}");
        }
    }

    #[test]
    fn throttled_keeps_the_servers_retry_after_only() {
        let body = ErrorBody {
            code: "Throttling.User".into(),
            message: String::new(),
            request_id: String::new(),
        };
        let e = classify(Action::ListEnis, 400, &body, Some(Duration::from_secs(7)));
        assert!(matches!(e, Error::Throttled { retry_after: Some(d), .. } if d.as_secs() == 7));
    }
}
