//! The agent API server: HTTP/1.1 on a unix socket (docs/agent-api.md).
//! Each body is parsed at this edge into its typed request (`request`)
//! before the agent sees it.

use std::{path::Path, sync::Arc};

use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tracing::warn;

use sextant_agent_api::{ApiError, CniRequest, ServiceSpec};

use crate::{
    agent::Agent,
    error::{Error, Result},
    policy::PolicySnapshot,
    request::{self, CniAdd, CniCall},
};

/// Binds the API socket at `path` (replacing a stale socket file; the
/// parent directory is created).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing stale {}", path.display()), e)),
    }
    UnixListener::bind(path).map_err(|e| Error::io(format!("binding {}", path.display()), e))
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept on the API socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&agent, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn error(e: &Error) -> Response<Full<Bytes>> {
    let status = match e {
        e if e.is_bad_request() => StatusCode::BAD_REQUEST,
        Error::Core(sextant_agent_core::Error::PoolExhausted { .. })
        | Error::FixedIpNotHere { .. }
        | Error::ApiDeadline { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(
        status,
        &ApiError {
            code: e.metric_label().to_string(),
            message: sextant_kit::ErrorChain(e).to_string(),
        },
    )
}

async fn handle(agent: &Agent, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(source) => return error(&Error::RequestRead { source }),
    };
    let r: Result<Response<Full<Bytes>>> = async {
        Ok(match (&method, path.as_str()) {
            (&Method::GET, "/v1/healthz") => json(StatusCode::OK, &agent.health()),
            (&Method::GET, "/v1/ipam") => json(StatusCode::OK, &agent.ipam()),
            (&Method::GET, "/metrics") => Response::builder()
                .header("content-type", sextant_kit::admin::METRICS_CONTENT_TYPE)
                .body(Full::new(Bytes::from(agent.metrics_text())))
                .unwrap_or_default(),
            (&Method::POST, "/v1/cni/add") => {
                let add = CniAdd::try_from(request::body::<CniRequest>(&body)?)
                    .map_err(|e| agent.rejected("add", e))?;
                json(StatusCode::OK, &agent.cni_add(&add).await?)
            }
            (&Method::POST, "/v1/cni/del") => {
                let del = CniCall::try_from(request::body::<CniRequest>(&body)?)
                    .map_err(|e| agent.rejected("del", e))?;
                agent.cni_del(&del).await?;
                json(StatusCode::OK, &serde_json::json!({}))
            }
            (&Method::POST, "/v1/cni/check") => {
                let check = CniCall::try_from(request::body::<CniRequest>(&body)?)
                    .map_err(|e| agent.rejected("check", e))?;
                json(StatusCode::OK, &agent.cni_check(&check).await?)
            }
            (&Method::PUT, "/v1/policy") => json(
                StatusCode::OK,
                &agent.sync_policy(request::body::<PolicySnapshot>(&body)?)?,
            ),
            (&Method::GET, "/v1/policy") => json(StatusCode::OK, &agent.policy_report()),
            (&Method::GET, "/v1/services") => json(StatusCode::OK, &agent.services()),
            (&Method::POST, "/v1/services") => {
                agent.set_service(&request::body::<ServiceSpec>(&body)?)?;
                json(StatusCode::OK, &serde_json::json!({}))
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &ApiError {
                    code: "not_found".into(),
                    message: format!("no route {method} {path}"),
                },
            ),
        })
    }
    .await;
    r.unwrap_or_else(|e| error(&e))
}
