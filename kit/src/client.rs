//! The Kubernetes client every binary builds: the environment's config
//! (in-cluster, or `KUBECONFIG`) with two bounds kube leaves unset, without
//! which a connection the API server stops answering hangs its caller for
//! good:
//!
//! - [`RESPONSE_DEADLINE`]: every request must get its response head within
//!   it. A watch answers its head at once and then streams, so the bound
//!   holds for watches too; a status write, a create or a get to an API
//!   server that took the request and never answers fails after it.
//! - [`READ_TIMEOUT`]: the longest silence while a response is read. It is
//!   longer than a watch's own server-side timeout (kube asks for 290 s), so
//!   idle watches are not cut.
//!
//! Calls that need a shorter deadline (the agent's per-ADD lookups) set
//! their own around the call.

use std::{fmt, time::Duration};

use tower::{BoxError, ServiceBuilder, timeout::error::Elapsed};

/// Longest silence on an API server connection before the call fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest wait for a response head. Generous for a paginated LIST of a
/// large cluster (watchers page by 500), short enough that a hung API
/// server costs a controller a minute, not forever.
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(60);

/// The client from the environment's config, with [`READ_TIMEOUT`] and
/// [`RESPONSE_DEADLINE`].
pub async fn client() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    with_deadlines(config, RESPONSE_DEADLINE)
}

/// A client for `config` whose requests fail after `deadline` without a
/// response head, and after [`READ_TIMEOUT`] of silence.
pub fn with_deadlines(
    mut config: kube::Config,
    deadline: Duration,
) -> Result<kube::Client, kube::Error> {
    config.read_timeout = Some(READ_TIMEOUT);
    let stack = ServiceBuilder::new()
        .map_err(move |e: BoxError| -> BoxError {
            if e.is::<Elapsed>() {
                Box::new(NoResponse(deadline))
            } else {
                e
            }
        })
        .timeout(deadline)
        .into_inner();
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&stack)
        .build())
}

/// The API server sent no response head within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoResponse(pub Duration);

impl fmt::Display for NoResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the API server sent no response within {:?} (deadline)",
            self.0
        )
    }
}

impl std::error::Error for NoResponse {}

/// Whether `e` is a request that ran out of [`RESPONSE_DEADLINE`].
pub fn is_deadline(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Service(s) if s.is::<NoResponse>())
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{
        Api,
        api::{Patch, PatchParams},
    };

    /// An API server stand-in that accepts connections, reads, and never
    /// answers: a write through the client ends at its deadline.
    #[tokio::test]
    async fn a_write_to_an_api_server_that_never_answers_ends_at_the_deadline() {
        let (url, held) = crate::testing::silent_api_server().await;
        let client =
            with_deadlines(kube::Config::new(url), Duration::from_millis(300)).expect("client");
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let started = std::time::Instant::now();
        let err = api
            .patch(
                "cm",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"data": {"a": "b"}})),
            )
            .await
            .expect_err("no answer");
        let took = started.elapsed();
        assert!(is_deadline(&err), "{err:?}");
        assert!(
            err.to_string().contains("no response within 300ms")
                || format!("{err:?}").contains("300ms"),
            "{err}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        held.abort();
    }
}
