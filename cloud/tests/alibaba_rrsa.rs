//! Alibaba RRSA: the ECS client configured from the variables ACK's RRSA
//! webhook injects trades the projected ServiceAccount token for STS keys at
//! a loopback STS stand-in (which checks every AssumeRoleWithOIDC request:
//! method, action, version, the role, the OIDC provider, the token as the
//! file holds it now) and signs ECS calls with them at the ECS stand-in
//! ([`support::ecs`]), which accepts an issued key only with its
//! `SecurityToken` and only until it expires.

// The ECS stand-in's fault injection and call helpers serve alibaba_ecs.
#[allow(dead_code, unused_imports)]
mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use sextant_cloud::{
    EniCloud, Error,
    alibaba::{
        AlibabaCloud, AlibabaConfig, ENV_OIDC_PROVIDER_ARN, ENV_OIDC_TOKEN_FILE, ENV_ROLE_ARN,
        ENV_STS_ENDPOINT, STS_API_VERSION, refresh_at,
    },
};
use sextant_kit::{ErrorChain, sync::lock};
use support::ecs::{REGION, StandIn, StsKey, VPC};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

const ROLE_ARN: &str = "acs:ram::1234567890123456:role/sextant-operator";
const PROVIDER_ARN: &str = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-c0ffee";

// ------------------------------------------------------------ STS stand-in --

/// One AssumeRoleWithOIDC as the stand-in received it.
#[derive(Clone, Debug)]
struct Exchange {
    at: Timestamp,
    method: String,
    query: BTreeMap<String, String>,
    body: BTreeMap<String, String>,
    content_type: String,
    /// The key handed out, when the exchange succeeded.
    issued: Option<(String, Timestamp)>,
}

/// How the stand-in answers.
#[derive(Clone, Debug)]
enum Mode {
    /// Keys valid this long, for the token it accepts.
    Issue(Duration),
    /// HTTP 400 with STS's error document and this code.
    Refuse(&'static str),
    /// HTTP 500 with a body that is not JSON.
    Garbage,
}

struct StsState {
    accepted_token: String,
    mode: Mode,
    exchanges: Vec<Exchange>,
    issued: u32,
}

struct Sts {
    url: String,
    state: Arc<Mutex<StsState>>,
    task: JoinHandle<()>,
}

impl Drop for Sts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(text: &str) -> BTreeMap<String, String> {
    text.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let d = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect()
}

/// Reads one HTTP/1.1 request: method, target, headers (lower-case), body.
async fn read_request(
    sock: &mut TcpStream,
) -> Option<(String, String, BTreeMap<String, String>, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    Some((method, target, headers, body))
}

fn sts_error(code: &str, message: &str) -> (u16, String) {
    (
        400,
        json!({
            "RequestId": "5B2B3A8C-STS-ERROR",
            "HostId": "sts.aliyuncs.com",
            "Code": code,
            "Message": message,
            "Recommend": "https://api.aliyun.com/troubleshoot"
        })
        .to_string(),
    )
}

impl Sts {
    async fn start(ecs: &StandIn, accepted_token: &str, mode: Mode) -> Result<Sts> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(StsState {
            accepted_token: accepted_token.to_owned(),
            mode,
            exchanges: Vec::new(),
            issued: 0,
        }));
        let (shared, ecs_state) = (state.clone(), ecs.shared_state());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (shared, ecs_state) = (shared.clone(), ecs_state.clone());
                tokio::spawn(async move {
                    let Some((method, target, headers, body)) = read_request(&mut sock).await
                    else {
                        return;
                    };
                    let (status, answer) =
                        Sts::answer(&shared, &ecs_state, method, &target, &headers, &body);
                    let response = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json;charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Ok(Sts { url, state, task })
    }

    /// Checks one request as STS would and answers it.
    fn answer(
        state: &Mutex<StsState>,
        ecs: &Mutex<support::ecs::State>,
        method: String,
        target: &str,
        headers: &BTreeMap<String, String>,
        body: &str,
    ) -> (u16, String) {
        let mut s = lock(state);
        let query = decode(target.split_once('?').map(|(_, q)| q).unwrap_or(""));
        let form = decode(body);
        let mut exchange = Exchange {
            at: Timestamp::now(),
            method,
            query: query.clone(),
            body: form.clone(),
            content_type: headers.get("content-type").cloned().unwrap_or_default(),
            issued: None,
        };
        let q = |k: &str| query.get(k).map(String::as_str).unwrap_or_default();
        let f = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        let answer = if q("Action") != "AssumeRoleWithOIDC"
            || q("Version") != STS_API_VERSION
            || q("Format") != "JSON"
        {
            sts_error("InvalidAction.NotFound", "action, version or format")
        } else if f("RoleArn") != ROLE_ARN || f("OIDCProviderArn") != PROVIDER_ARN {
            sts_error(
                "EntityNotExist.Role",
                "The role or OIDC provider does not exist.",
            )
        } else if f("OIDCToken") != s.accepted_token {
            sts_error(
                "AuthenticationFail.OIDCToken.Invalid",
                "The OIDC token is invalid or expired.",
            )
        } else {
            match s.mode.clone() {
                Mode::Refuse(code) => sts_error(code, "refused by the test"),
                Mode::Garbage => (500, "<html>upstream connect error</html>".to_owned()),
                Mode::Issue(lifetime) => {
                    s.issued += 1;
                    let n = s.issued;
                    let expires = Timestamp::now()
                        .checked_add(SignedDuration::try_from(lifetime).unwrap_or_default())
                        .unwrap_or(Timestamp::MAX);
                    let id = format!("STS.NUgYrLnoC37mZZCN{n:04}");
                    let key = StsKey {
                        secret: format!("sts-secret-{n}/+=*~"),
                        security_token: format!("CAIShwJ1q6Ft5B2yfSjIr5bS+{n}/"),
                        expires,
                    };
                    let body = json!({
                        "RequestId": format!("3D57EAD2-{n:04}"),
                        "AssumedRoleUser": {
                            "AssumedRoleId": "33157794895460****:sextant-operator",
                            "Arn": format!("{ROLE_ARN}/sextant-operator")
                        },
                        "Credentials": {
                            "AccessKeyId": id,
                            "AccessKeySecret": key.secret,
                            "SecurityToken": key.security_token,
                            "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
                        }
                    });
                    // ECS sees the expiry with the second cut off, as the
                    // client does.
                    let key = StsKey {
                        expires: expires
                            .strftime("%Y-%m-%dT%H:%M:%SZ")
                            .to_string()
                            .parse()
                            .unwrap_or(expires),
                        ..key
                    };
                    exchange.issued = Some((id.clone(), key.expires));
                    lock(ecs).sts_keys.insert(id, key);
                    (200, body.to_string())
                }
            }
        };
        s.exchanges.push(exchange);
        answer
    }

    fn exchanges(&self) -> Vec<Exchange> {
        lock(&self.state).exchanges.clone()
    }

    fn accept_only(&self, token: &str) {
        lock(&self.state).accepted_token = token.to_owned();
    }
}

// ------------------------------------------------------------------ helpers --

struct TokenDir(PathBuf);

impl TokenDir {
    fn new(token: &str) -> Result<TokenDir> {
        let dir = std::env::temp_dir().join(format!("sextant-rrsa-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let t = TokenDir(dir);
        t.rotate(token)?;
        Ok(t)
    }

    fn file(&self) -> PathBuf {
        self.0.join("token")
    }

    /// Replaces the token as the kubelet does (write aside, rename).
    fn rotate(&self, token: &str) -> Result<()> {
        let aside = self.0.join(".token.new");
        std::fs::write(&aside, token)?;
        std::fs::rename(&aside, self.file())?;
        Ok(())
    }
}

impl Drop for TokenDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ECS client as the operator builds it: `AlibabaConfig::from_env` on
/// the RRSA variables (here from a map instead of the process), the
/// endpoint override, a short timeout.
fn rrsa_cloud(ecs: &StandIn, sts: &Sts, token_file: &Path) -> Result<AlibabaCloud> {
    let vars: BTreeMap<&str, String> = [
        (ENV_ROLE_ARN, ROLE_ARN.to_owned()),
        (ENV_OIDC_PROVIDER_ARN, PROVIDER_ARN.to_owned()),
        (ENV_OIDC_TOKEN_FILE, token_file.display().to_string()),
        (ENV_STS_ENDPOINT, sts.url.clone()),
    ]
    .into();
    let config = AlibabaConfig::from_env(REGION, |name| vars.get(name).cloned())?
        .with_endpoint(&ecs.url)
        .with_timeout(Duration::from_secs(5));
    Ok(AlibabaCloud::new(config)?)
}

fn chain(e: &Error) -> String {
    ErrorChain(e).to_string()
}

// -------------------------------------------------------------------- tests --

#[tokio::test]
async fn rrsa_keys_sign_ecs_calls_and_are_renewed_with_the_rotated_token_before_expiry()
-> Result<()> {
    let ecs = StandIn::start().await?;
    let tokens = TokenDir::new("oidc-token-1")?;
    // Three seconds of validity (less the second STS's format cuts off):
    // renewal is due after at most 2.4 s.
    let sts = Sts::start(&ecs, "oidc-token-1", Mode::Issue(Duration::from_secs(3))).await?;
    let cloud = rrsa_cloud(&ecs, &sts, &tokens.file())?;
    ensure!(
        sts.exchanges().is_empty(),
        "no STS call before the first ECS call"
    );

    let started = Instant::now();
    let mut calls = 0;
    let mut rotated = false;
    while started.elapsed() < Duration::from_millis(6500) {
        let subnets = cloud
            .subnets(VPC)
            .await
            .map_err(|e| anyhow::anyhow!("call {calls}: {}", chain(&e)))?;
        ensure!(!subnets.is_empty());
        calls += 1;
        if !rotated && started.elapsed() > Duration::from_millis(1000) {
            // The kubelet rotates the projected token; STS now takes only
            // the new one, so a renewal must read the file again.
            tokens.rotate("oidc-token-2")?;
            sts.accept_only("oidc-token-2");
            rotated = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let exchanges = sts.exchanges();
    ensure!(
        (3..=5).contains(&exchanges.len()),
        "{} exchanges over 6.5 s of 3 s keys: {exchanges:#?}",
        exchanges.len()
    );
    for (n, x) in exchanges.iter().enumerate() {
        ensure!(x.method == "POST", "{x:?}");
        ensure!(
            x.content_type == "application/x-www-form-urlencoded",
            "{x:?}"
        );
        ensure!(x.query.contains_key("Timestamp"), "{x:?}");
        ensure!(
            !x.query.contains_key("OIDCToken"),
            "the token stays out of the URL: {x:?}"
        );
        ensure!(x.body["RoleSessionName"] == "sextant-operator", "{x:?}");
        ensure!(x.body["DurationSeconds"] == "3600", "{x:?}");
        let want = if n == 0 {
            "oidc-token-1"
        } else {
            "oidc-token-2"
        };
        ensure!(x.body["OIDCToken"] == want, "exchange {n}: {x:?}");
        ensure!(x.issued.is_some(), "exchange {n} refused: {x:?}");
    }
    // Each renewal came before the keys it replaced expired.
    for pair in exchanges.windows(2) {
        let (_, expires) = pair[0].issued.clone().context("issued")?;
        ensure!(
            pair[1].at < expires,
            "renewed at {} after expiry {expires}",
            pair[1].at
        );
    }

    // Every ECS call carried an issued key and its SecurityToken (the stand-in
    // verified both, and the signature with the STS secret); none was refused.
    let log = ecs.calls_since(0);
    ensure!(
        log.len() == calls,
        "{} ECS calls logged, {calls} made",
        log.len()
    );
    let issued: Vec<String> = exchanges
        .iter()
        .filter_map(|x| x.issued.clone().map(|(id, _)| id))
        .collect();
    for c in &log {
        ensure!(issued.contains(&c["AccessKeyId"]), "{c:?}");
        ensure!(
            c.get("SecurityToken")
                .is_some_and(|t| t.starts_with("CAIS")),
            "{c:?}"
        );
    }
    let used: std::collections::BTreeSet<&String> = log.iter().map(|c| &c["AccessKeyId"]).collect();
    ensure!(used.len() >= 3, "calls moved to renewed keys: {used:?}");
    ensure!(ecs.state().refused.is_empty(), "{:?}", ecs.state().refused);
    Ok(())
}

#[tokio::test]
async fn sts_refusals_garbage_and_a_vanished_token_are_clear_errors_of_the_call() -> Result<()> {
    let ecs = StandIn::start().await?;
    let tokens = TokenDir::new("stolen-or-stale-token")?;
    let sts = Sts::start(
        &ecs,
        "the-real-token",
        Mode::Issue(Duration::from_secs(900)),
    )
    .await?;
    let cloud = rrsa_cloud(&ecs, &sts, &tokens.file())?;

    let err = cloud
        .subnets(VPC)
        .await
        .err()
        .context("a refused token fails the call")?;
    ensure!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let text = chain(&err);
    ensure!(
        text.contains(
            "Alibaba Cloud credentials: AssumeRoleWithOIDC refused with HTTP 400: \
             AuthenticationFail.OIDCToken.Invalid: The OIDC token is invalid or expired. \
             (RequestId 5B2B3A8C-STS-ERROR)"
        ),
        "unclear: {text}"
    );

    lock(&sts.state).mode = Mode::Refuse("Throttling.User");
    sts.accept_only("stolen-or-stale-token");
    let err = cloud.subnets(VPC).await.err().context("throttled")?;
    ensure!(matches!(err, Error::Throttled { .. }), "{err:?}");

    lock(&sts.state).mode = Mode::Garbage;
    let err = cloud.subnets(VPC).await.err().context("garbage")?;
    let text = chain(&err);
    ensure!(
        text.contains("AssumeRoleWithOIDC answered HTTP 500 with a body that is not an STS error")
            && text.contains("upstream connect error"),
        "unclear: {text}"
    );

    std::fs::remove_file(tokens.file())?;
    let err = cloud.subnets(VPC).await.err().context("no token file")?;
    let text = chain(&err);
    ensure!(
        text.contains(&format!(
            "reading the token file {}",
            tokens.file().display()
        )),
        "unclear: {text}"
    );

    ensure!(
        ecs.calls_since(0).is_empty(),
        "no ECS call went out unsigned"
    );
    ensure!(ecs.state().refused.is_empty(), "{:?}", ecs.state().refused);
    Ok(())
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_current_keys_until_they_expire() -> Result<()> {
    let ecs = StandIn::start().await?;
    let tokens = TokenDir::new("oidc-token")?;
    let sts = Sts::start(&ecs, "oidc-token", Mode::Issue(Duration::from_secs(4))).await?;
    let cloud = rrsa_cloud(&ecs, &sts, &tokens.file())?;
    cloud
        .subnets(VPC)
        .await
        .map_err(|e| anyhow::anyhow!(chain(&e)))?;
    let (_, expires) = sts.exchanges()[0].issued.clone().context("issued")?;

    // STS goes down; once the renewal is due (at 80% of the lifetime, by
    // the stand-in's clock no earlier than by the client's) the keys in hand
    // still have their last fifth.
    lock(&sts.state).mode = Mode::Garbage;
    let due =
        refresh_at(sts.exchanges()[0].at, expires).checked_add(SignedDuration::from_millis(50))?;
    while Timestamp::now() < due {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        Timestamp::now() < expires,
        "test too slow: keys expired already"
    );
    cloud
        .subnets(VPC)
        .await
        .map_err(|e| anyhow::anyhow!("kept keys: {}", chain(&e)))?;
    ensure!(sts.exchanges().len() == 2, "the renewal was tried");

    while Timestamp::now() < expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = cloud
        .subnets(VPC)
        .await
        .err()
        .context("expired keys and no STS")?;
    ensure!(
        chain(&err).contains("AssumeRoleWithOIDC answered HTTP 500"),
        "{}",
        chain(&err)
    );
    Ok(())
}
