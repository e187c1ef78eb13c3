//! The node's observer: the [`Hub`] (the store plus its live subscribers),
//! the ingest task that fills it from a [`FlowSource`], and the gRPC
//! `Observer` service over it.
//!
//! A following client gets a bounded buffer of its own; the hub offers it
//! each new flow with `try_send`, so a client that stops reading loses
//! flows (counted, stage `export`, and told to the client as a
//! `LostEvent`) and never slows the store or other clients.

use std::{
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::Stream;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::mpsc::{self, error::TrySendError},
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::{
    Error, Result,
    api::{
        flow::{Flow, LostEvent, LostEventSource},
        observer::{
            self, GetFlowsRequest, GetFlowsResponse, GetNodesRequest, GetNodesResponse,
            ServerStatusRequest, ServerStatusResponse,
            get_flows_response::ResponseTypes,
            observer_server::{Observer, ObserverServer},
        },
        relay::NodeState,
    },
    filter::FilterSet,
    metrics::ObserverMetrics,
    record::to_flow,
    source::{Enricher, FlowSource, SourceMsg},
    store::{FlowStore, StoreConfig, StoreStatus},
};

/// Flows a following client may have waiting before it loses some.
pub const CLIENT_BUFFER: usize = 4_096;
/// Messages the ingest task takes per lock of the store.
const INGEST_BATCH: usize = 256;

struct Subscriber {
    tx: mpsc::Sender<Arc<Flow>>,
    lost: Arc<AtomicU64>,
}

struct Inner {
    store: FlowStore,
    subscribers: Vec<Subscriber>,
}

/// The store and its live subscribers, shared by ingest and the server.
pub struct Hub {
    inner: Mutex<Inner>,
    node: String,
    started: Instant,
    client_buffer: usize,
    /// The metrics, if registered.
    pub metrics: Arc<ObserverMetrics>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", &self.node).finish()
    }
}

/// What a new subscription starts with.
struct Subscription {
    history: Vec<Arc<Flow>>,
    live: Option<(mpsc::Receiver<Arc<Flow>>, Arc<AtomicU64>)>,
}

impl Hub {
    /// A hub for `node` with a store of `config`'s sizes.
    pub fn new(node: impl Into<String>, config: StoreConfig) -> Arc<Self> {
        Self::with_client_buffer(node, config, CLIENT_BUFFER)
    }

    /// The same, with `client_buffer` flows of buffer per following client.
    pub fn with_client_buffer(
        node: impl Into<String>,
        config: StoreConfig,
        client_buffer: usize,
    ) -> Arc<Self> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                store: FlowStore::new(config),
                subscribers: Vec::new(),
            }),
            node: node.into(),
            started: Instant::now(),
            client_buffer: client_buffer.max(1),
            metrics: Arc::new(ObserverMetrics::default()),
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Applies messages from the source, in order, under one lock.
    pub fn apply(&self, msgs: Vec<SourceMsg>, enricher: &dyn Enricher) {
        // Enrich outside the lock: the agent's lookups may take a while.
        let prepared: Vec<_> = msgs
            .into_iter()
            .map(|m| match m {
                SourceMsg::Flow(ev) => Ok((
                    ev.cpu,
                    ev.seq,
                    Arc::new(to_flow(&ev.record, &self.node, enricher)),
                )),
                SourceMsg::Lost {
                    cpu,
                    stage,
                    reason,
                    count,
                } => Err((cpu, stage, reason, count)),
            })
            .collect();
        let mut inner = sextant_kit::sync::lock(&self.inner);
        let Inner { store, subscribers } = &mut *inner;
        let mut export_lost = 0;
        for p in prepared {
            match p {
                Ok((cpu, seq, flow)) => {
                    store.observe_sequence(cpu, seq);
                    store.push(flow.clone());
                    subscribers.retain(|s| match s.tx.try_send(flow.clone()) {
                        Ok(()) => true,
                        Err(TrySendError::Full(_)) => {
                            s.lost.fetch_add(1, Ordering::Relaxed);
                            export_lost += 1;
                            true
                        }
                        Err(TrySendError::Closed(_)) => false,
                    });
                }
                Err((cpu, stage, reason, count)) => {
                    store.record_lost(Some(cpu), stage, reason, count)
                }
            }
        }
        if export_lost > 0 {
            store.record_export_lost(export_lost);
        }
    }

    /// Pushes an already-built flow (the relay's tests, replays).
    pub fn push_flow(&self, flow: Flow) {
        let flow = Arc::new(flow);
        let mut inner = sextant_kit::sync::lock(&self.inner);
        let Inner { store, subscribers } = &mut *inner;
        store.push(flow.clone());
        let mut export_lost = 0;
        subscribers.retain(|s| match s.tx.try_send(flow.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                s.lost.fetch_add(1, Ordering::Relaxed);
                export_lost += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        });
        store.record_export_lost(export_lost);
    }

    /// The store's account now, with the metrics brought up to date.
    pub fn status(&self) -> StoreStatus {
        let (status, config, clients) = {
            let inner = sextant_kit::sync::lock(&self.inner);
            (
                inner.store.status(),
                inner.store.config(),
                inner.subscribers.len(),
            )
        };
        self.metrics.sync(&status, config.normal, config.priority);
        self.metrics
            .clients
            .set(i64::try_from(clients).unwrap_or(i64::MAX));
        status
    }

    fn subscribe(&self, follow: bool) -> Subscription {
        let mut inner = sextant_kit::sync::lock(&self.inner);
        let history = inner.store.flows();
        let live = follow.then(|| {
            let (tx, rx) = mpsc::channel(self.client_buffer);
            let lost = Arc::new(AtomicU64::new(0));
            inner.subscribers.push(Subscriber {
                tx,
                lost: lost.clone(),
            });
            (rx, lost)
        });
        Subscription { history, live }
    }
}

/// Fills `hub` from `source` until the producer is gone, enriching with
/// `enricher`.
pub async fn ingest(mut source: FlowSource, hub: Arc<Hub>, enricher: Arc<dyn Enricher>) {
    let mut batch = Vec::with_capacity(INGEST_BATCH);
    while source.rx.recv_many(&mut batch, INGEST_BATCH).await > 0 {
        hub.apply(std::mem::take(&mut batch), &*enricher);
    }
    debug!(node = %hub.node, "flow source closed");
}

fn time_of(f: &Flow) -> SystemTime {
    f.time
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A GetFlows request, checked.
#[derive(Debug)]
pub struct FlowQuery {
    /// The filters.
    pub filters: FilterSet,
    /// How many stored flows to return; 0 is all (or, when following with
    /// no `since`, none).
    pub number: u64,
    /// The first `number` rather than the last.
    pub first: bool,
    /// Stream new flows after the stored ones.
    pub follow: bool,
    /// Only flows at or after.
    pub since: Option<SystemTime>,
    /// Only flows at or before.
    pub until: Option<SystemTime>,
}

impl FlowQuery {
    /// Checks `req`: malformed filters or options that cannot go together
    /// are an error the server answers as `InvalidArgument`.
    pub fn new(req: &GetFlowsRequest) -> Result<FlowQuery> {
        let filters = FilterSet::new(&req.whitelist, &req.blacklist)?;
        if req.first && req.follow {
            return Err(Error::InvalidRequest(
                "`first` and `follow` cannot go together".into(),
            ));
        }
        let ts = |t: &Option<prost_types::Timestamp>, name: &str| -> Result<Option<SystemTime>> {
            t.map(|t| {
                SystemTime::try_from(t).map_err(|e| Error::InvalidRequest(format!("`{name}`: {e}")))
            })
            .transpose()
        };
        let since = ts(&req.since, "since")?;
        let until = ts(&req.until, "until")?;
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(Error::InvalidRequest("`since` is after `until`".into()));
        }
        Ok(FlowQuery {
            filters,
            number: req.number,
            first: req.first,
            follow: req.follow,
            since,
            until,
        })
    }

    /// Whether `f` is in the time range and passes the filters.
    pub fn wants(&self, f: &Flow) -> bool {
        let t = time_of(f);
        self.since.is_none_or(|s| t >= s)
            && self.until.is_none_or(|u| t <= u)
            && self.filters.matches(f)
    }

    /// The stored flows to answer with, from `history` (arrival order).
    pub fn select(&self, history: &[Arc<Flow>]) -> Vec<Arc<Flow>> {
        if self.follow && self.number == 0 && self.since.is_none() {
            return Vec::new();
        }
        let matching = history.iter().filter(|f| self.wants(f));
        let n = usize::try_from(self.number).unwrap_or(usize::MAX);
        if self.number == 0 {
            matching.cloned().collect()
        } else if self.first {
            matching.take(n).cloned().collect()
        } else {
            let all: Vec<_> = matching.collect();
            all[all.len().saturating_sub(n)..]
                .iter()
                .map(|f| Arc::clone(f))
                .collect()
        }
    }
}

/// The response carrying `flow`.
pub fn flow_response(flow: Flow) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: flow.node_name.clone(),
        time: flow.time,
        response_types: Some(ResponseTypes::Flow(flow)),
    }
}

/// The response telling a client it lost `n` events at `source`.
pub fn lost_response(node: &str, source: LostEventSource, n: u64) -> GetFlowsResponse {
    GetFlowsResponse {
        node_name: node.to_owned(),
        time: Some(SystemTime::now().into()),
        response_types: Some(ResponseTypes::LostEvents(LostEvent {
            source: source as i32,
            num_events_lost: n,
            cpu: None,
        })),
    }
}

/// The gRPC stream type of GetFlows.
pub type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, Status>> + Send>>;

/// The `Observer` service over a hub.
#[derive(Clone, Debug)]
pub struct ObserverService {
    hub: Arc<Hub>,
}

impl ObserverService {
    /// The service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        ObserverService { hub }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> ObserverServer<Self> {
        ObserverServer::new(self)
    }
}

/// The Sextant additions to a status: losses by stage.
pub fn lost_counts(s: &StoreStatus) -> Vec<observer::LostCount> {
    let mut out: Vec<_> = s
        .lost_by
        .iter()
        .map(|l| observer::LostCount {
            stage: l.stage.as_str().into(),
            reason: l.reason.into(),
            count: l.count,
        })
        .collect();
    if s.export_lost > 0 {
        out.push(observer::LostCount {
            stage: "export".into(),
            reason: "client_buffer_full".into(),
            count: s.export_lost,
        });
    }
    out
}

#[tonic::async_trait]
impl Observer for ObserverService {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let query = FlowQuery::new(request.get_ref())?;
        let sub = self.hub.subscribe(query.follow);
        let history = query.select(&sub.history);
        let (tx, rx) = mpsc::channel(64);
        let node = self.hub.node.clone();
        tokio::spawn(async move {
            for f in history {
                if tx.send(Ok(flow_response((*f).clone()))).await.is_err() {
                    return;
                }
            }
            let Some((mut live, lost)) = sub.live else {
                return;
            };
            while let Some(f) = live.recv().await {
                let n = lost.swap(0, Ordering::Relaxed);
                if n > 0
                    && tx
                        .send(Ok(lost_response(
                            &node,
                            LostEventSource::ObserverEventsQueue,
                            n,
                        )))
                        .await
                        .is_err()
                {
                    return;
                }
                if query.until.is_some_and(|u| time_of(&f) > u) {
                    return;
                }
                if query.wants(&f) && tx.send(Ok(flow_response((*f).clone()))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_nodes(
        &self,
        _request: Request<GetNodesRequest>,
    ) -> Result<Response<GetNodesResponse>, Status> {
        let s = self.hub.status();
        Ok(Response::new(GetNodesResponse {
            nodes: vec![observer::Node {
                name: self.hub.node.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                address: String::new(),
                state: NodeState::NodeConnected as i32,
                tls: None,
                uptime_ns: uptime_ns(self.hub.started),
                num_flows: s.kept,
                max_flows: s.capacity,
                seen_flows: s.seen,
            }],
        }))
    }

    async fn server_status(
        &self,
        _request: Request<ServerStatusRequest>,
    ) -> Result<Response<ServerStatusResponse>, Status> {
        let s = self.hub.status();
        Ok(Response::new(ServerStatusResponse {
            num_flows: s.kept,
            max_flows: s.capacity,
            seen_flows: s.seen,
            uptime_ns: uptime_ns(self.hub.started),
            num_connected_nodes: None,
            num_unavailable_nodes: None,
            unavailable_nodes: Vec::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            lost_flows: s.lost,
            lost: lost_counts(&s),
        }))
    }
}

/// Nanoseconds since `started`.
pub fn uptime_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Serves `service` on the unix socket at `path` (an old socket file there
/// is replaced) until `stop` resolves.
pub async fn serve_unix<S>(
    service: ObserverServer<S>,
    path: &Path,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()>
where
    S: Observer,
{
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|source| Error::Bind {
        path: path.to_owned(),
        source,
    })?;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
        .await
        .map_err(Error::Serve)
}

/// Serves `service` on `listener` until `stop` resolves.
pub async fn serve_tcp<S>(
    service: ObserverServer<S>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<()>
where
    S: Observer,
{
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await
        .map_err(Error::Serve)
}
