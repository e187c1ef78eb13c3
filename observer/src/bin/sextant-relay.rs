//! `sextant-relay`: serves the Observer API over every node's observer.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use sextant_kit::admin::{Admin, Readiness};
use sextant_observer::relay::{Peer, RelayConfig, RelayService, read_peers};

/// Flags of `sextant-relay`.
#[derive(Parser, Debug)]
#[command(name = "sextant-relay", version, about)]
struct Args {
    /// A node's observer, `name=address` (unix path or host:port); repeat.
    #[arg(long = "peer", value_parser = Peer::parse)]
    peers: Vec<Peer>,
    /// A file of peers, one `name=address` a line.
    #[arg(long, env = "SEXTANT_RELAY_PEERS_FILE")]
    peers_file: Option<PathBuf>,
    /// Serve on this unix socket.
    #[arg(long, env = "SEXTANT_RELAY_SOCKET")]
    socket: Option<PathBuf>,
    /// Serve on this TCP address.
    #[arg(long, env = "SEXTANT_RELAY_LISTEN", default_value = "0.0.0.0:4245")]
    listen: Option<SocketAddr>,
    /// Serve /metrics, /healthz, /readyz on this address.
    #[arg(long, env = "SEXTANT_RELAY_ADMIN", default_value = "0.0.0.0:9966")]
    admin: SocketAddr,
    /// How long a peer may take to answer.
    #[arg(long, default_value = "2s", value_parser = sextant_kit::duration::parse)]
    peer_timeout: Duration,
    /// How long flows wait to be put in time order.
    #[arg(long, default_value = "200ms", value_parser = sextant_kit::duration::parse)]
    window: Duration,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sextant_kit::log::init();
    sextant_kit::errors::exit("sextant-relay", run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut peers = args.peers;
    if let Some(path) = &args.peers_file {
        peers.extend(read_peers(path)?);
    }
    if peers.is_empty() {
        anyhow::bail!("no peers: give --peer name=address or --peers-file");
    }
    let stop = sextant_kit::shutdown::signal()?;
    let admin = Admin::new(
        Arc::new(prometheus_client::registry::Registry::default()),
        Readiness::ready(),
    );
    let admin_listener = tokio::net::TcpListener::bind(args.admin).await?;
    tokio::spawn(sextant_kit::admin::serve(admin_listener, admin));
    let service = RelayService::new(
        peers,
        RelayConfig {
            timeout: args.peer_timeout,
            window: args.window,
            ..RelayConfig::default()
        },
    );
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|d| *d).await;
    };
    let mut tasks = Vec::new();
    if let Some(path) = args.socket {
        let s = service.clone().into_server();
        let w = wait(done_rx.clone());
        tasks.push(tokio::spawn(async move {
            sextant_observer::server::serve_unix(s, &path, w).await
        }));
    }
    if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let s = service.clone().into_server();
        let w = wait(done_rx.clone());
        tasks.push(tokio::spawn(async move {
            sextant_observer::server::serve_tcp(s, listener, w).await
        }));
    }
    let signal = stop.await;
    tracing::info!(%signal, "stopping");
    let _ = done_tx.send(true);
    for t in tasks {
        t.await??;
    }
    Ok(())
}
