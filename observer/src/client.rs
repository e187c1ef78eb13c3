//! Dialling an observer (an agent's or the relay's): a unix socket path
//! (`/run/sextant/observer.sock`, `unix:///...`) or `host:port`.

use std::{path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::{Error, Result, api::observer::observer_client::ObserverClient};

/// Where an observer listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port` over plain TCP (HTTP/2).
    Tcp(String),
}

impl Address {
    /// Parses `unix:///path`, `/path`, `./path` or `host:port`.
    pub fn parse(s: &str) -> Result<Address> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("unix://") {
            return Ok(Address::Unix(p.into()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Address::Unix(s.into()));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(hostport.to_owned()))
            }
            _ => Err(Error::InvalidAddress {
                address: s.to_owned(),
                reason: "want a unix socket path or host:port".into(),
            }),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp(h) => f.write_str(h),
        }
    }
}

/// A channel to the observer at `address`, connected within `timeout`.
pub async fn channel(address: &Address, timeout: Duration) -> Result<Channel> {
    let shown = address.to_string();
    let connected = match address {
        Address::Unix(path) => {
            let path = path.clone();
            // The URI is required by the builder; the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
        Address::Tcp(hostport) => {
            let endpoint = Endpoint::from_shared(format!("http://{hostport}")).map_err(|e| {
                Error::InvalidAddress {
                    address: hostport.clone(),
                    reason: e.to_string(),
                }
            })?;
            endpoint.connect_timeout(timeout).connect().await
        }
    };
    connected.map_err(|source| Error::Connect {
        address: shown,
        source,
    })
}

/// An Observer client for `address`.
pub async fn connect(address: &Address, timeout: Duration) -> Result<ObserverClient<Channel>> {
    Ok(ObserverClient::new(channel(address, timeout).await?))
}
