//! Alibaba Cloud ECS over its RPC API with POP (HMAC-SHA1) signatures.
//!
//! ```text
//!   AlibabaCloud (EniCloud) ──▶ params + common params ──▶ Signer (POP v1) ──▶ GET https://ecs.<region>.aliyuncs.com/?...
//!        ▲                                                                              │
//!        └── model (JSON answers ─▶ Eni, Subnet, ...)  ◀── errors (Code ─▶ Error) ◀────┘
//! ```
//!
//! [`AlibabaCloud`] speaks ECS API version 2014-05-26 with `Format=JSON`;
//! [`Signer`] and the free functions of the signature module compute the
//! documented signature and are public so that test servers can check it.
//!
//! Credentials ([`Credentials`]) are a static AccessKey or RRSA: STS keys
//! from the pod's projected ServiceAccount token (AssumeRoleWithOIDC),
//! renewed at 80% of their lifetime.
//!
//! Where ECS differs from the trait's model:
//! - ECS reports no device index: the primary ENI is 0, secondary ENIs follow
//!   in creation order; `attach_eni`'s index is not sent (ECS picks).
//! - ECS has no attachment ids: [`crate::Attachment::id`] is empty.
//! - ECS cannot move an address between ENIs in one call: a reassignment
//!   finds the holders (DescribeNetworkInterfaces filtered by address within
//!   the target's vSwitch), unassigns there, then assigns; addresses the
//!   target already holds are returned as assigned without asking again.

mod client;
mod credentials;
mod errors;
mod model;
mod signature;

pub use client::{
    API_VERSION, AlibabaCloud, AlibabaConfig, ClientBuildError, MAX_SECONDARY_IPS_AT_CREATION,
};
pub use credentials::{
    Credentials, DEFAULT_SESSION_DURATION, DEFAULT_SESSION_NAME, ENV_ACCESS_KEY_ID,
    ENV_ACCESS_KEY_SECRET, ENV_OIDC_PROVIDER_ARN, ENV_OIDC_TOKEN_FILE, ENV_ROLE_ARN,
    ENV_ROLE_SESSION_NAME, ENV_SECURITY_TOKEN, ENV_STS_ENDPOINT, ENV_STS_REGION,
    ENV_VPC_ENDPOINT_ENABLED, RrsaConfig, STS_API_VERSION, refresh_at, sts_endpoint,
};
pub use signature::{
    SIGNATURE_METHOD, SIGNATURE_VERSION, Signer, canonical_query, percent_encode, sign,
    sign_string, string_to_sign,
};
