//! The Kubernetes client every binary builds: the environment's config
//! (in-cluster, or `KUBECONFIG`) with a read timeout, which kube leaves
//! unset: without one a connection the API server stops answering hangs
//! its caller for good. The bound is longer than a watch's own server-side
//! timeout (kube asks for 290 s), so idle watches are not cut; single
//! calls that need a shorter deadline set their own around the call.

use std::time::Duration;

/// Longest silence on an API server connection before the call fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The client from the environment's config, with [`READ_TIMEOUT`].
pub async fn client() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.read_timeout = Some(READ_TIMEOUT);
    kube::Client::try_from(config)
}
