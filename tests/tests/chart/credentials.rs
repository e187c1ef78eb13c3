//! Cloud credentials the operator gets without a stored key: AWS IRSA
//! (`cloud.irsa`), Alibaba RRSA with ACK's webhook (`cloud.rrsa.roleName`)
//! or with a token the chart projects itself (`cloud.rrsa.roleArn` and
//! `oidcProviderArn`), and the combinations the chart refuses. The variable
//! names are the ones `sextant_cloud` reads.

use k8s_openapi::api::core::v1::{Container, ServiceAccount};
use sextant_cloud::alibaba::{
    ENV_OIDC_PROVIDER_ARN, ENV_OIDC_TOKEN_FILE, ENV_ROLE_ARN, ENV_STS_ENDPOINT,
};

use super::*;

const IAM_ROLE: &str = "arn:aws:iam::123456789012:role/sextant-operator";
const RAM_ROLE: &str = "acs:ram::1234567890123456:role/sextant-operator";
const OIDC_PROVIDER: &str = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c0ffee";

fn render_one(name: &str, values: &str) -> anyhow::Result<Rendered> {
    render_values(&[(name, Some(values.to_owned()))])
        .expect("helm ran")
        .remove(0)
}

fn operator_sa(r: &Rendered) -> &ServiceAccount {
    r.all(|o| match o {
        Object::ServiceAccount(s) => Some(s.as_ref()),
        _ => None,
    })
    .into_iter()
    .find(|s| name_of(&s.metadata) == "sextant-operator")
    .expect("operator ServiceAccount")
}

fn sa_annotations(r: &Rendered) -> BTreeMap<String, String> {
    operator_sa(r)
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
}

fn operator_pod(r: &Rendered) -> &PodSpec {
    pod_spec_of_deploy(deployment(r, "sextant-operator").expect("operator Deployment"))
}

fn operator_container(r: &Rendered) -> &Container {
    &operator_pod(r).containers[0]
}

fn pod_labels(r: &Rendered) -> BTreeMap<String, String> {
    deployment(r, "sextant-operator")
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn env_names(c: &Container) -> BTreeSet<&str> {
    c.env.iter().flatten().map(|e| e.name.as_str()).collect()
}

#[test]
fn irsa_role_arn_annotates_the_operators_service_account_and_nothing_else() {
    let r = render_one(
        "irsa",
        &format!("provider: aws\ncloud:\n  irsa:\n    roleArn: {IAM_ROLE}\n"),
    )
    .expect("rendered");
    assert_eq!(
        sa_annotations(&r)
            .get("eks.amazonaws.com/role-arn")
            .map(String::as_str),
        Some(IAM_ROLE)
    );
    // EKS's pod identity webhook injects AWS_ROLE_ARN and the token; the
    // chart adds no key, no Secret and no AWS_* variable of its own.
    let c = operator_container(&r);
    assert!(c.env_from.is_none(), "{:?}", c.env_from);
    assert!(
        env_names(c).iter().all(|n| !n.starts_with("AWS_")),
        "{:?}",
        env_names(c)
    );
    // The non-root operator can read a projected token.
    let sc = operator_pod(&r)
        .security_context
        .as_ref()
        .expect("pod security context");
    assert_eq!(sc.fs_group, Some(65532));

    // Annotations given by hand stay, next to IRSA's.
    let r = render_one(
        "irsa-extra",
        &format!(
            "provider: aws\ncloud:\n  irsa:\n    roleArn: {IAM_ROLE}\n\
             operator:\n  serviceAccount:\n    annotations:\n      \
             eks.amazonaws.com/sts-regional-endpoints: \"true\"\n"
        ),
    )
    .expect("rendered");
    let a = sa_annotations(&r);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a["eks.amazonaws.com/sts-regional-endpoints"], "true");
}

#[test]
fn rrsa_with_acks_webhook_annotates_the_service_account_and_opts_the_pods_in() {
    let r = render_one(
        "rrsa-webhook",
        "provider: alibaba\nregion: cn-hangzhou\ncloud:\n  rrsa:\n    roleName: sextant-operator\n    \
         stsEndpoint: sts-vpc.cn-hangzhou.aliyuncs.com\n",
    )
    .expect("rendered");
    assert_eq!(
        sa_annotations(&r)
            .get("pod-identity.alibabacloud.com/role-name")
            .map(String::as_str),
        Some("sextant-operator")
    );
    assert_eq!(
        pod_labels(&r)
            .get("pod-identity.alibabacloud.com/injection")
            .map(String::as_str),
        Some("on")
    );
    // The webhook mounts the token and sets the three variables; the chart
    // only passes the STS endpoint it was given.
    let c = operator_container(&r);
    let names = env_names(c);
    for v in [ENV_ROLE_ARN, ENV_OIDC_PROVIDER_ARN, ENV_OIDC_TOKEN_FILE] {
        assert!(!names.contains(v), "{v} is the webhook's to set");
    }
    assert_eq!(
        env(c, ENV_STS_ENDPOINT),
        Some("sts-vpc.cn-hangzhou.aliyuncs.com")
    );
    assert!(operator_pod(&r).volumes.is_none());
}

#[test]
fn rrsa_without_the_webhook_projects_a_token_for_alibaba_sts_and_points_the_operator_at_it() {
    let r = render_one(
        "rrsa-projected",
        &format!(
            "provider: alibaba\nregion: cn-hangzhou\ncloud:\n  rrsa:\n    roleArn: {RAM_ROLE}\n    \
             oidcProviderArn: {OIDC_PROVIDER}\n    tokenExpirationSeconds: 7200\n"
        ),
    )
    .expect("rendered");
    let c = operator_container(&r);
    assert_eq!(env(c, ENV_ROLE_ARN), Some(RAM_ROLE));
    assert_eq!(env(c, ENV_OIDC_PROVIDER_ARN), Some(OIDC_PROVIDER));
    assert_eq!(
        env(c, ENV_STS_ENDPOINT),
        None,
        "the region's endpoint by default"
    );
    let token_file = env(c, ENV_OIDC_TOKEN_FILE).expect("token file variable");

    // The file the variable names is the projected token, mounted read-only.
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| token_file.starts_with(&format!("{}/", m.mount_path)))
        .unwrap_or_else(|| panic!("nothing mounted over {token_file}"));
    assert_eq!(mount.read_only, Some(true));
    let volume = operator_pod(&r)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    let sources = volume
        .projected
        .as_ref()
        .and_then(|p| p.sources.as_ref())
        .expect("a projected volume");
    let token = sources
        .iter()
        .find_map(|s| s.service_account_token.as_ref())
        .expect("a ServiceAccount token");
    assert_eq!(token.audience.as_deref(), Some("sts.aliyuncs.com"));
    assert_eq!(token.expiration_seconds, Some(7200));
    assert_eq!(
        format!("{}/{}", mount.mount_path, token.path),
        token_file,
        "the variable names the projected file"
    );
    // No webhook here: no annotation, no opt-in label, no static key.
    assert!(!sa_annotations(&r).contains_key("pod-identity.alibabacloud.com/role-name"));
    assert!(!pod_labels(&r).contains_key("pod-identity.alibabacloud.com/injection"));
    assert!(c.env_from.is_none());
}

#[test]
fn credentials_for_the_wrong_cloud_or_half_an_rrsa_setup_are_refused_with_the_reason() {
    let cases = [
        (
            "rrsa-on-aws",
            "provider: aws\ncloud:\n  rrsa:\n    roleName: r\n".to_owned(),
            "cloud.rrsa is Alibaba Cloud's",
        ),
        (
            "irsa-on-alibaba",
            format!(
                "provider: alibaba\nregion: cn-hangzhou\ncloud:\n  irsa:\n    roleArn: {IAM_ROLE}\n"
            ),
            "cloud.irsa is AWS's",
        ),
        (
            "both-modes",
            format!(
                "provider: alibaba\nregion: cn-hangzhou\ncloud:\n  rrsa:\n    roleName: r\n    \
                 roleArn: {RAM_ROLE}\n    oidcProviderArn: {OIDC_PROVIDER}\n"
            ),
            "not both",
        ),
        (
            "no-provider-arn",
            format!(
                "provider: alibaba\nregion: cn-hangzhou\ncloud:\n  rrsa:\n    roleArn: {RAM_ROLE}\n"
            ),
            "roleArn and oidcProviderArn go together",
        ),
        (
            "not-an-iam-role",
            "provider: aws\ncloud:\n  irsa:\n    roleArn: sextant-operator\n".to_owned(),
            "roleArn",
        ),
    ];
    let results = render_values(
        &cases
            .iter()
            .map(|(name, values, _)| (*name, Some(values.clone())))
            .collect::<Vec<_>>(),
    )
    .expect("helm ran");
    for (r, (name, _, reason)) in results.into_iter().zip(&cases) {
        let err = r.err().unwrap_or_else(|| panic!("{name} must be refused"));
        assert!(format!("{err:#}").contains(reason), "{name}: {err:#}");
    }
}
