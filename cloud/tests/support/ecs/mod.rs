//! A loopback Alibaba ECS stand-in.
//!
//! A small HTTP/1.1 server on 127.0.0.1 that recomputes the POP signature
//! of every request with its own canonicalization code (not the library's)
//! and answers `SignatureDoesNotMatch` when it differs, as ECS does. It
//! keeps a small VPC in memory (vSwitches with address pools, security
//! groups, instances of published types, ENIs) and answers each call with
//! ECS-shaped JSON (API 2014-05-26, `Format=JSON`), NextToken paging
//! included. Faults can be queued: `Throttling.User`, garbage bodies,
//! answers with missing fields or bad addresses, 5xx, stalls.
//!
//! ```text
//!  AlibabaCloud ──GET /?Action=..&Signature=..──▶ server (one task per connection)
//!                                                   │ lock
//!                                                   ▼
//!                          api: verify (signature::expected_signature) ─▶ fault | action
//!                                                   │
//!                                                   ▼
//!                          vpc: vSwitches, groups, instances, ENIs; log of verified calls
//! ```
//!
//! Not built on `sextant_cloud::sim`: the tests assert ECS's own
//! bookkeeping (vSwitch hosts handed out from `.10`, ECS error codes for
//! each refusal, zone checks on attach, no address taken from another ENI,
//! g7 limits, `00:16:3E` MACs), which the EC2-shaped simulator models
//! differently; translating its errors back would test the translation.

mod api;
mod signature;
mod vpc;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Result;
use sextant_cloud::alibaba::{AlibabaCloud, AlibabaConfig};
use sextant_kit::sync::lock;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

pub use signature::expected_signature;
pub use vpc::{Fault, State};
// Only the RRSA tests issue STS keys.
#[allow(unused_imports)]
pub use vpc::StsKey;

pub const KEY_ID: &str = "LTAI5tSextantTest";
// Characters that the encoding rules treat specially, to catch mistakes.
pub const SECRET: &str = "s3cr3t/+*~ key";
pub const REGION: &str = "cn-hangzhou";
pub const ZONE: &str = "cn-hangzhou-h";
pub const VPC: &str = "vpc-sextant";
pub const BIG_VPC: &str = "vpc-big";

/// A request's parameters, decoded.
pub type Params = BTreeMap<String, String>;

pub struct StandIn {
    state: Arc<Mutex<State>>,
    pub url: String,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(sock: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 256 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" {
        return None;
    }
    Some((method, query.to_owned()))
}

async fn serve_one(mut sock: TcpStream, state: Arc<Mutex<State>>) {
    let Some((method, query)) = read_request(&mut sock).await else {
        return;
    };
    let answer = lock(&state).handle(&method, &query);
    if let Some(d) = answer.delay {
        tokio::time::sleep(d).await;
    }
    let reason = if answer.status == 200 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json;charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

impl StandIn {
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::new(SECRET)));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_one(sock, shared.clone()));
            }
        });
        Ok(StandIn { state, url, task })
    }

    pub fn config(&self) -> AlibabaConfig {
        AlibabaConfig::new(REGION, KEY_ID, SECRET)
            .with_endpoint(&self.url)
            .with_timeout(Duration::from_secs(5))
    }

    pub fn client(&self) -> Result<AlibabaCloud> {
        Ok(AlibabaCloud::new(self.config())?)
    }

    /// The state itself, for a stand-in that works beside this one (an STS
    /// that registers the keys it issues).
    #[allow(dead_code)]
    pub fn shared_state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn inject(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Verified requests from index `from` on, as (Action, params).
    pub fn calls_since(&self, from: usize) -> Vec<Params> {
        self.state().log.get(from..).unwrap_or_default().to_vec()
    }

    pub fn mark(&self) -> usize {
        self.state().log.len()
    }
}
