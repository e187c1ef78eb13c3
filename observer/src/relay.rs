//! The relay: the same `Observer` API over every node's observer. A request
//! fans out to all peers; flows are merged in time order within a small
//! window; every peer that cannot be reached is named, in the stream as a
//! `NodeStatusEvent` and in `ServerStatus`, never silently missing.
//!
//! ```text
//!  node-a observer ─┐ GetFlows           per peer: forward into the merge
//!  node-b observer ─┼──────────▶ merge ─ heap by time, release flows older
//!  node-c (down)  ──┘  NODE_UNAVAILABLE   than `window`; client buffer
//!                                         bounded, overflow counted
//! ```

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::join_all;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    Error, Result,
    api::{
        flow::LostEventSource,
        observer::{
            self, GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse,
            ServerStatusRequest, ServerStatusResponse,
            get_flows_response::ResponseTypes,
            observer_server::{Observer, ObserverServer},
        },
        relay::{NodeState, NodeStatusEvent},
    },
    client::{Address, connect},
    server::{FlowQuery, FlowStream, lost_response, uptime_ns},
};

/// A node's observer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The node's name.
    pub name: String,
    /// Where its observer listens.
    pub address: Address,
}

impl Peer {
    /// Parses `name=address`.
    pub fn parse(s: &str) -> Result<Peer> {
        let (name, addr) = s.split_once('=').ok_or_else(|| Error::InvalidAddress {
            address: s.to_owned(),
            reason: "want name=address".into(),
        })?;
        Ok(Peer {
            name: name.trim().to_owned(),
            address: Address::parse(addr)?,
        })
    }
}

/// Parses a peer file: one `name=address` or `name address` a line; blank
/// lines and `#` comments skipped.
pub fn parse_peers(text: &str) -> Result<Vec<Peer>> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((name, addr)) if !l.contains('=') => Ok(Peer {
                name: name.to_owned(),
                address: Address::parse(addr)?,
            }),
            _ => Peer::parse(l),
        })
        .collect()
}

/// Reads a peer file.
pub fn read_peers(path: &Path) -> Result<Vec<Peer>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Peers {
        path: path.to_owned(),
        source,
    })?;
    parse_peers(&text)
}

/// How the relay behaves.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// How long a peer may take to answer a connect or a status call.
    pub timeout: Duration,
    /// How long flows wait to be put in time order before release.
    pub window: Duration,
    /// Responses a client may have waiting before it loses some.
    pub client_buffer: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            timeout: Duration::from_secs(2),
            window: Duration::from_millis(200),
            client_buffer: 4_096,
        }
    }
}

/// The relay's `Observer` service.
#[derive(Clone, Debug)]
pub struct RelayService {
    peers: Arc<Vec<Peer>>,
    config: RelayConfig,
    started: Instant,
}

fn status_event(state: NodeState, names: Vec<String>, message: String) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: String::new(),
        time: Some(SystemTime::now().into()),
        response_types: Some(ResponseTypes::NodeStatus(NodeStatusEvent {
            state_change: state as i32,
            node_names: names,
            message,
        })),
    }
}

fn time_key(r: &GetFlowsResponse) -> SystemTime {
    r.time
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A response in the merge heap: by time, then arrival.
struct Pending(SystemTime, u64, GetFlowsResponse);

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// Sends to the client without waiting; counts what did not fit.
struct ClientSink {
    tx: mpsc::Sender<Result<GetFlowsResponse, Status>>,
    lost: u64,
}

impl ClientSink {
    /// False once the client is gone.
    fn offer(&mut self, r: GetFlowsResponse) -> bool {
        if self.lost > 0 {
            let note = lost_response("", LostEventSource::ObserverEventsQueue, self.lost);
            match self.tx.try_send(Ok(note)) {
                Ok(()) => self.lost = 0,
                Err(TrySendError::Full(_)) => {
                    self.lost += 1;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(Ok(r)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lost += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

impl RelayService {
    /// A relay over `peers`.
    pub fn new(peers: Vec<Peer>, config: RelayConfig) -> Self {
        RelayService {
            peers: Arc::new(peers),
            config,
            started: Instant::now(),
        }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> ObserverServer<Self> {
        ObserverServer::new(self)
    }

    /// Opens GetFlows on every peer: the streams, and the peers that could
    /// not be reached with why.
    async fn open(
        &self,
        req: &GetFlowsRequest,
    ) -> (
        Vec<(String, Streaming<GetFlowsResponse>)>,
        Vec<(String, String)>,
    ) {
        let timeout = self.config.timeout;
        let calls = self.peers.iter().map(|p| {
            let req = req.clone();
            async move {
                let opened = async {
                    let mut c = connect(&p.address, timeout)
                        .await
                        .map_err(|e| sextant_kit::errors::Chain(&e).to_string())?;
                    c.get_flows(req)
                        .await
                        .map(Response::into_inner)
                        .map_err(|s| s.message().to_owned())
                };
                let r = match tokio::time::timeout(timeout, opened).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                };
                (p.name.clone(), r)
            }
        });
        let mut ok = Vec::new();
        let mut down = Vec::new();
        for (name, r) in join_all(calls).await {
            match r {
                Ok(s) => ok.push((name, s)),
                Err(why) => down.push((name, why)),
            }
        }
        (ok, down)
    }

    async fn statuses(&self) -> Vec<(Peer, Result<ServerStatusResponse, String>)> {
        let timeout = self.config.timeout;
        join_all(self.peers.iter().map(|p| async move {
            let call = async {
                let mut c = connect(&p.address, timeout)
                    .await
                    .map_err(|e| sextant_kit::errors::Chain(&e).to_string())?;
                c.server_status(ServerStatusRequest {})
                    .await
                    .map(Response::into_inner)
                    .map_err(|s| s.message().to_owned())
            };
            let r = match tokio::time::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            (p.clone(), r)
        }))
        .await
    }
}

#[tonic::async_trait]
impl Observer for RelayService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let req = request.into_inner();
        // Refuse bad filters here, once, rather than as N node errors.
        let query = FlowQuery::new(&req)?;
        let (tx, rx) = mpsc::channel(self.config.client_buffer.max(1));
        let relay = self.clone();
        tokio::spawn(async move {
            let (streams, down) = relay.open(&req).await;
            let mut sink = ClientSink { tx, lost: 0 };
            if !streams.is_empty() {
                let names = streams.iter().map(|(n, _)| n.clone()).collect();
                sink.offer(status_event(NodeState::NodeConnected, names, String::new()));
            }
            for (name, why) in down {
                sink.offer(status_event(NodeState::NodeUnavailable, vec![name], why));
            }
            if query.follow {
                follow(streams, sink, relay.config.window).await;
            } else {
                collect(streams, sink, &query).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let nodes = self
            .statuses()
            .await
            .into_iter()
            .map(|(p, r)| match r {
                Ok(s) => observer::Node {
                    name: p.name,
                    version: s.version,
                    address: p.address.to_string(),
                    state: NodeState::NodeConnected as i32,
                    tls: None,
                    uptime_ns: s.uptime_ns,
                    num_flows: s.num_flows,
                    max_flows: s.max_flows,
                    seen_flows: s.seen_flows,
                },
                Err(_) => observer::Node {
                    name: p.name,
                    address: p.address.to_string(),
                    state: NodeState::NodeUnavailable as i32,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(GetNodesResponse { nodes }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let mut out = ServerStatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ns: uptime_ns(self.started),
            ..Default::default()
        };
        let (mut up, mut down) = (0u32, 0u32);
        for (p, r) in self.statuses().await {
            match r {
                Ok(s) => {
                    up += 1;
                    out.num_flows += s.num_flows;
                    out.max_flows += s.max_flows;
                    out.seen_flows += s.seen_flows;
                    out.lost_flows += s.lost_flows;
                    out.uptime_ns = out.uptime_ns.max(s.uptime_ns);
                    for l in s.lost {
                        match out
                            .lost
                            .iter_mut()
                            .find(|x| x.stage == l.stage && x.reason == l.reason)
                        {
                            Some(x) => x.count += l.count,
                            None => out.lost.push(l),
                        }
                    }
                }
                Err(_) => {
                    down += 1;
                    out.unavailable_nodes.push(p.name);
                }
            }
        }
        out.num_connected_nodes = Some(up);
        out.num_unavailable_nodes = Some(down);
        Ok(Response::new(out))
    }
}

/// Non-following: everything from every peer, in time order, then the
/// request's `number` / `first` over the merge.
async fn collect(
    streams: Vec<(String, Streaming<GetFlowsResponse>)>,
    mut sink: ClientSink,
    query: &FlowQuery,
) {
    let results = join_all(streams.into_iter().map(|(name, mut s)| async move {
        let mut got = Vec::new();
        let mut error = None;
        loop {
            match s.message().await {
                Ok(Some(r)) => got.push(r),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e.message().to_owned());
                    break;
                }
            }
        }
        (name, got, error)
    }))
    .await;
    let mut flows = Vec::new();
    let mut others = Vec::new();
    for (name, got, error) in results {
        if let Some(why) = error {
            others.push(status_event(NodeState::NodeError, vec![name], why));
        }
        for r in got {
            match r.response_types {
                Some(ResponseTypes::Flow(_)) => flows.push(r),
                _ => others.push(r),
            }
        }
    }
    flows.sort_by_key(time_key);
    let n = usize::try_from(query.number).unwrap_or(usize::MAX);
    if query.number > 0 && flows.len() > n {
        if query.first {
            flows.truncate(n);
        } else {
            flows.drain(..flows.len() - n);
        }
    }
    for r in others.into_iter().chain(flows) {
        if !sink.offer(r) {
            return;
        }
    }
}

/// Following: forward every peer's stream into a heap, release in time
/// order what is older than `window`.
async fn follow(
    streams: Vec<(String, Streaming<GetFlowsResponse>)>,
    mut sink: ClientSink,
    window: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<GetFlowsResponse>(1_024);
    for (name, mut s) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            let why = loop {
                match s.message().await {
                    Ok(Some(r)) => {
                        if tx.send(r).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break "stream ended".to_owned(),
                    Err(e) => break e.message().to_owned(),
                }
            };
            let _ = tx
                .send(status_event(NodeState::NodeUnavailable, vec![name], why))
                .await;
        });
    }
    drop(tx);
    let mut heap: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut arrivals = 0u64;
    let mut tick = tokio::time::interval((window / 4).max(Duration::from_millis(5)));
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(r) => match r.response_types {
                    Some(ResponseTypes::Flow(_)) => {
                        arrivals += 1;
                        heap.push(Reverse(Pending(time_key(&r), arrivals, r)));
                    }
                    _ => if !sink.offer(r) { return },
                },
                None => {
                    while let Some(Reverse(Pending(_, _, r))) = heap.pop() {
                        if !sink.offer(r) { return }
                    }
                    return;
                }
            },
            _ = tick.tick() => {
                let horizon = SystemTime::now().checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
                while heap.peek().is_some_and(|Reverse(p)| p.0 <= horizon) {
                    if let Some(Reverse(Pending(_, _, r))) = heap.pop()
                        && !sink.offer(r)
                    {
                        return;
                    }
                }
                if sink.tx.is_closed() {
                    return;
                }
            }
        }
    }
}
