//! Registering with kubelet's Registration service on `kubelet.sock`, and
//! telling when kubelet has restarted (a new `kubelet.sock`).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use tower::service_fn;

use crate::{
    Error, Result,
    api::{self, RegisterRequest, registration_client::RegistrationClient},
    paths::RESOURCE_NAME,
    plugin,
};

/// Which file a socket path names: a recreated socket has a new inode (or
/// change time), even at the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketId {
    dev: u64,
    ino: u64,
    ctime_ns: i128,
}

impl SocketId {
    /// The identity of the file at `path`, if there is one.
    pub fn of(path: &Path) -> Option<SocketId> {
        let m = std::fs::metadata(path).ok()?;
        Some(SocketId {
            dev: m.dev(),
            ino: m.ino(),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

/// Registers `resource` served at `endpoint` (a socket name inside the
/// device-plugin directory) with the kubelet at `kubelet_socket`; the whole
/// exchange ends within `timeout`.
pub async fn register(kubelet_socket: &Path, endpoint: &str, timeout: Duration) -> Result<()> {
    let request = RegisterRequest {
        version: api::VERSION.to_owned(),
        endpoint: endpoint.to_owned(),
        resource_name: RESOURCE_NAME.to_owned(),
        options: Some(plugin::options()),
    };
    let exchange = async {
        let channel = unix_channel(kubelet_socket, timeout).await?;
        RegistrationClient::new(channel)
            .register(request)
            .await
            .map_err(|source| Error::Register {
                resource: RESOURCE_NAME,
                source,
            })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(Error::RegisterTimeout { timeout }),
    }
}

/// A gRPC channel to the unix socket at `path`, each request ending within
/// `timeout`.
pub async fn unix_channel(path: &Path, timeout: Duration) -> Result<tonic::transport::Channel> {
    let socket: PathBuf = path.to_owned();
    let connect_to = socket.clone();
    // The URI is required by the builder but unused: the connector dials the
    // unix socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = connect_to.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|source| Error::KubeletConnect { socket, source })
}
