//! IRSA for real: the EC2 client built as the operator builds it
//! (`AwsConfig::new(region)` plus the endpoint, no static keys), in a
//! process whose environment holds only the web-identity variables the EKS
//! pod identity webhook injects (`AWS_ROLE_ARN`,
//! `AWS_WEB_IDENTITY_TOKEN_FILE`) and `AWS_ENDPOINT_URL_STS`, against
//! `moto_server` for both STS and EC2.
//!
//! The SDK reads its credential chain from the process environment, which a
//! test cannot change for itself (`set_var` is unsafe and the workspace
//! forbids unsafe code), so each test runs this binary again as a child
//! with the environment it needs: the child is the ignored test
//! [`irsa_child`], which builds the client and reports through its exit
//! status. moto records every request it receives
//! (`MOTO_ENABLE_RECORDING`), which shows the token exchange and the keys
//! the EC2 call was signed with.

#[path = "support/moto.rs"]
mod moto;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use moto::Moto;
use serde_json::Value;
use sextant_cloud::{
    CredentialsError, EniCloud,
    aws::{AwsCloud, AwsConfig},
};

const REGION: &str = "us-east-1";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/sextant-operator";
/// A ServiceAccount token as the kubelet projects it (moto does not check
/// the signature; the exchange must carry exactly this text).
const SA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InNleHRhbnQifQ.\
    eyJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20iXSwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50Omt1YmUtc3lzdGVtOnNleHRhbnQtb3BlcmF0b3IifQ.\
    c2lnbmF0dXJl";

/// What the child expects of `AwsCloud::new`, passed in its environment.
const EXPECT: &str = "SEXTANT_IRSA_EXPECT";
const EC2_URL: &str = "SEXTANT_IRSA_EC2_URL";

/// Runs [`irsa_child`] with `env` on top of an environment that has no AWS
/// credentials of any other kind (no keys, no profile, no IMDS).
fn run_child(home: &Path, env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--exact", "irsa_child", "--ignored", "--nocapture"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied());
    cmd.output().context("running the child test")
}

fn temp_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sextant-{name}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// moto's recording: one JSON object per request.
fn recording(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).context("moto's recording")?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn body(entry: &Value) -> String {
    let raw = entry["body"].as_str().unwrap_or_default();
    if entry["body_encoded"].as_bool() == Some(true) {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    } else {
        raw.to_owned()
    }
}

fn url_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn header<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

#[test]
fn irsa_token_is_exchanged_at_sts_and_the_ec2_call_is_signed_with_the_assumed_role() -> Result<()> {
    let dir = temp_dir("irsa")?;
    let record = dir.join("moto-recording");
    let moto = Moto::start(&[
        ("MOTO_ENABLE_RECORDING", "True"),
        ("MOTO_RECORDER_FILEPATH", &record.display().to_string()),
    ])?;
    let token = dir.join("token");
    std::fs::write(&token, SA_TOKEN)?;

    let out = run_child(
        &dir,
        &[
            (EXPECT, "ok"),
            (EC2_URL, &moto.url),
            ("AWS_ROLE_ARN", ROLE_ARN),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token.display().to_string()),
            ("AWS_ENDPOINT_URL_STS", &moto.url),
        ],
    )?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "child failed:\n{log}");
    ensure!(
        log.contains("1 passed"),
        "the child test did not run:\n{log}"
    );

    let calls = recording(&record)?;
    let sts: Vec<&Value> = calls
        .iter()
        .filter(|c| body(c).contains("Action=AssumeRoleWithWebIdentity"))
        .collect();
    ensure!(
        sts.len() == 1,
        "one AssumeRoleWithWebIdentity expected, moto saw {} in {calls:#?}",
        sts.len()
    );
    let params = url_pairs(&body(sts[0]));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(param("RoleArn"), Some(ROLE_ARN));
    assert_eq!(
        param("WebIdentityToken"),
        Some(SA_TOKEN),
        "the token file's content"
    );
    assert!(
        header(sts[0], "Authorization").is_none(),
        "the exchange is unsigned"
    );

    let ec2: Vec<&Value> = calls
        .iter()
        .filter(|c| body(c).contains("Action=DescribeInstanceTypes"))
        .collect();
    ensure!(ec2.len() == 1, "one EC2 call expected in {calls:#?}");
    let auth = header(ec2[0], "Authorization").context("EC2 call is signed")?;
    let key = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .context("SigV4 credential")?;
    // moto hands out assumed-role keys with STS's temporary prefix; a
    // static or environment key would be AKIA.../testing.
    assert!(
        key.starts_with("ASIA"),
        "EC2 signed with {key}, not an assumed-role key"
    );
    assert!(
        header(ec2[0], "X-Amz-Security-Token").is_some_and(|t| !t.is_empty()),
        "the session token goes with the EC2 call"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_missing_irsa_token_file_stops_the_start_with_its_path() -> Result<()> {
    let dir = temp_dir("irsa-missing")?;
    let token = dir.join("not-projected/token");
    let out = run_child(
        &dir,
        &[
            (EXPECT, &format!("token-file:{}", token.display())),
            (EC2_URL, "http://127.0.0.1:9"),
            ("AWS_ROLE_ARN", ROLE_ARN),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token.display().to_string()),
        ],
    )?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "child failed:\n{log}");
    ensure!(
        log.contains("1 passed"),
        "the child test did not run:\n{log}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The child half of the tests above; run alone it has no web-identity
/// environment and says so.
#[tokio::test]
#[ignore = "run by the IRSA tests of this file in a child process with its environment"]
async fn irsa_child() -> Result<()> {
    let expect = std::env::var(EXPECT).context("run by the IRSA tests, not alone")?;
    let mut config = AwsConfig::new(REGION);
    config.endpoint_url = Some(std::env::var(EC2_URL)?);
    config.operation_timeout = Duration::from_secs(20);
    let built = AwsCloud::new(config).await;
    match expect.split_once(':') {
        None => {
            let cloud = built?;
            let limits = cloud.instance_limits("m5.large").await?;
            ensure!(limits.max_enis > 0, "{limits:?}");
        }
        Some(("token-file", path)) => {
            let err = built
                .err()
                .context("a missing token file must fail the start")?;
            ensure!(matches!(err, CredentialsError::TokenFile { .. }), "{err:?}");
            let text = sextant_kit::ErrorChain(&err).to_string();
            ensure!(
                text.contains(path) && text.contains("No such file"),
                "unclear: {text}"
            );
        }
        Some(_) => anyhow::bail!("unknown expectation {expect}"),
    }
    Ok(())
}
