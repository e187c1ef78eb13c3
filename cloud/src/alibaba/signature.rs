//! POP signature version 1.0 (HMAC-SHA1) of Alibaba Cloud RPC requests.
//!
//! The algorithm, as the ECS API reference ("Request signatures") states it:
//!
//! 1. sort every parameter but `Signature` by name;
//! 2. percent-encode names and values in UTF-8, leaving only `A-Z a-z 0-9 - _ . ~`
//!    unescaped (so a space is `%20`, `*` is `%2A`, `~` stays `~`);
//! 3. join them as `name=value` with `&`: the canonicalized query string;
//! 4. `StringToSign = METHOD + "&" + percentEncode("/") + "&" + percentEncode(canonicalized)`;
//! 5. `Signature = Base64(HMAC-SHA1(AccessKeySecret + "&", StringToSign))`.
//!
//! The same code signs requests in the client and checks them in tests.

use std::collections::BTreeMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha1::Sha1;

/// `SignatureMethod` of every request.
pub const SIGNATURE_METHOD: &str = "HMAC-SHA1";
/// `SignatureVersion` of every request.
pub const SIGNATURE_VERSION: &str = "1.0";

/// Everything but the RFC 3986 unreserved characters is escaped.
const POP_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a name or value by Alibaba's rules (RFC 3986 unreserved
/// characters kept, everything else `%XY` with upper-case hex, UTF-8 bytes).
pub fn percent_encode(text: &str) -> String {
    utf8_percent_encode(text, POP_ESCAPED).to_string()
}

/// The canonicalized query string: parameters sorted by name, encoded, joined
/// with `&`. A `Signature` entry, if present, is left out.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .filter(|(name, _)| name.as_str() != "Signature")
        .map(|(name, value)| format!("{}={}", percent_encode(name), percent_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The string the signature is computed over, for an HTTP `method` (`GET`, `POST`).
pub fn string_to_sign(method: &str, params: &BTreeMap<String, String>) -> String {
    format!(
        "{method}&{}&{}",
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// The base64 signature of `params` sent with `method`, keyed by the AccessKey secret.
pub fn sign(method: &str, params: &BTreeMap<String, String>, access_key_secret: &str) -> String {
    sign_string(&string_to_sign(method, params), access_key_secret)
}

/// HMAC-SHA1 of an already built string-to-sign, keyed by `secret + "&"`, in base64.
pub fn sign_string(string_to_sign: &str, access_key_secret: &str) -> String {
    let key = format!("{access_key_secret}&");
    // HMAC accepts keys of any length, so this never fails; the fallback keeps
    // the library free of panics all the same.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// An AccessKey pair (optionally with an STS token) that signs RPC requests.
#[derive(Clone)]
pub struct Signer {
    access_key_id: String,
    access_key_secret: String,
    security_token: Option<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Signer {
    /// A signer for an AccessKey pair.
    pub fn new(access_key_id: impl Into<String>, access_key_secret: impl Into<String>) -> Self {
        Signer {
            access_key_id: access_key_id.into(),
            access_key_secret: access_key_secret.into(),
            security_token: None,
        }
    }

    /// Adds an STS token, sent as `SecurityToken` with every request.
    pub fn with_security_token(mut self, token: impl Into<String>) -> Self {
        self.security_token = Some(token.into());
        self
    }

    /// The AccessKey id.
    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    /// Adds the common authentication parameters (`AccessKeyId`,
    /// `SignatureMethod`, `SignatureVersion`, `SignatureNonce`, `Timestamp`,
    /// `SecurityToken` when set) to `params`, then returns the full query
    /// string with `Signature` appended, ready to follow `?` in a URL.
    pub fn signed_query(
        &self,
        method: &str,
        params: &mut BTreeMap<String, String>,
        timestamp: &str,
        nonce: &str,
    ) -> String {
        params.insert("AccessKeyId".into(), self.access_key_id.clone());
        params.insert("SignatureMethod".into(), SIGNATURE_METHOD.into());
        params.insert("SignatureVersion".into(), SIGNATURE_VERSION.into());
        params.insert("SignatureNonce".into(), nonce.into());
        params.insert("Timestamp".into(), timestamp.into());
        if let Some(token) = &self.security_token {
            params.insert("SecurityToken".into(), token.clone());
        }
        let signature = sign(method, params, &self.access_key_secret);
        format!(
            "{}&Signature={}",
            canonical_query(params),
            percent_encode(&signature)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The DescribeRegions example of the ECS API reference, "Request
    /// signatures" (AlibabaCloudDocs/ecs, `intl.en-US/API Reference/Getting
    /// started/Request signatures.md`, "Example 1: Concatenate parameters").
    #[test]
    fn reproduces_the_documented_describe_regions_signature() {
        let p = params(&[
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Format", "XML"),
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("Version", "2014-05-26"),
            ("SignatureVersion", "1.0"),
        ]);
        assert_eq!(
            string_to_sign("GET", &p),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML\
             %26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf\
             %26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
        assert_eq!(
            sign("GET", &p, "testsecret"),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        assert_eq!(
            percent_encode("OLeaidS1JvxuMvnyHOwuJ+uX5qY="),
            "OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"
        );
    }

    #[test]
    fn encodes_space_star_and_keeps_tilde_as_alibaba_requires() {
        assert_eq!(percent_encode("a b*c~d"), "a%20b%2Ac~d");
        assert_eq!(percent_encode("sextant.io/node"), "sextant.io%2Fnode");
        assert_eq!(percent_encode("+=&\""), "%2B%3D%26%22");
        assert_eq!(percent_encode("节点"), "%E8%8A%82%E7%82%B9");
    }

    #[test]
    fn canonical_query_sorts_by_name_and_skips_signature() {
        let p = params(&[("b", "2"), ("Signature", "x"), ("a", "1 1")]);
        assert_eq!(canonical_query(&p), "a=1%201&b=2");
    }

    #[test]
    fn signed_query_carries_the_common_parameters_and_a_verifiable_signature() {
        let signer = Signer::new("id", "secret").with_security_token("sts");
        let mut p = params(&[("Action", "DescribeRegions")]);
        let query = signer.signed_query("GET", &mut p, "2026-01-01T00:00:00Z", "n-1");
        assert!(query.contains("SecurityToken=sts"));
        assert!(query.contains("Timestamp=2026-01-01T00%3A00%3A00Z"));
        let expected = percent_encode(&sign("GET", &p, "secret"));
        assert!(query.ends_with(&format!("&Signature={expected}")));
        assert!(!format!("{signer:?}").contains("\"secret\""));
    }
}
