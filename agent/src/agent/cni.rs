//! CNI ADD/DEL/CHECK and the allocation step: an ordinary pod takes any
//! free IP, a pod with a fixed IP waits (bounded) for exactly its address
//! ([`sextant_agent_core::fixed_ip::decide`]).

use std::{path::Path, time::Duration};

use sextant_agent_api::{CniReply, fmt_mac};
use sextant_agent_core::{
    fixed_ip::{self, Decision},
    pool::{AllocKey, AllocRequest, Allocation},
};
use sextant_kit::sync::lock;
use tracing::info;

use super::{Agent, now_ms, now_rfc3339};
use crate::{
    cni::veth,
    datapath::Endpoint,
    error::{Error, Result},
    metrics::CniLabels,
    paths::POD_GATEWAY,
    request::{CniAdd, CniCall},
    watch::fixed_ip as fixed_ip_watch,
};

/// How the agent learns whether a pod has a `FixedIP` (set once the
/// Kubernetes client exists; without it every pod is an ordinary one).
pub(super) struct FixedIpLookup {
    client: kube::Client,
    cache: Option<fixed_ip_watch::FixedIpCache>,
    wait: Duration,
}

impl Agent {
    /// Turns on fixed IPs: ADDs of pods not named in `status.fixedIps` ask
    /// `client` for a `FixedIP` named after the pod and, if there is one, wait
    /// up to `wait` for its address to reach this node. Only the first call counts.
    pub fn enable_fixed_ips(&self, client: kube::Client, wait: Duration) {
        let _ = self.fixed_lookup.set(FixedIpLookup {
            client,
            cache: None,
            wait,
        });
    }

    /// [`Agent::enable_fixed_ips`] answering from a FixedIP watch first.
    pub fn enable_fixed_ips_cached(
        &self,
        client: kube::Client,
        cache: fixed_ip_watch::FixedIpCache,
        wait: Duration,
    ) {
        let _ = self.fixed_lookup.set(FixedIpLookup {
            client,
            cache: Some(cache),
            wait,
        });
    }

    /// The allocation step of CNI ADD: an ordinary pod takes any free IP; a
    /// pod with a fixed IP gets exactly that address, waiting (bounded) until
    /// this node's NodeNetwork lists it for the pod.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocation> {
        let pod = format!("{}/{}", req.pod_namespace, req.pod_name);
        let wait = self
            .fixed_lookup
            .get()
            .map_or(fixed_ip::DEFAULT_WAIT, |l| l.wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.node_changed.subscribe();
        let mut lookup = None;
        let mut logged = false;
        loop {
            changed.borrow_and_update();
            let decision = {
                let mut st = lock(&self.state);
                if let Some(a) = st.node.pool().get(&req.key) {
                    return Ok(a.clone());
                }
                let d = fixed_ip::decide(
                    &pod,
                    st.node.pool(),
                    lookup,
                    tokio::time::Instant::now(),
                    deadline,
                );
                // Decided and taken under one lock: no NodeNetwork update in between.
                match d {
                    Decision::Any => {
                        let r = st.node.allocate(req, now_ms(), &now_rfc3339());
                        if let Err(sextant_agent_core::Error::PoolExhausted { .. }) = &r {
                            // The operator learns of the waiting pod now.
                            self.report_now.notify_one();
                        }
                        return Ok(r?);
                    }
                    Decision::Fixed(ip) => {
                        let a = st.node.allocate_fixed(req, ip, now_ms(), &now_rfc3339())?;
                        info!(%ip, %pod, "fixed IP handed to its pod");
                        return Ok(a);
                    }
                    other => other,
                }
            };
            match decision {
                Decision::Lookup => {
                    lookup = Some(match self.fixed_lookup.get() {
                        Some(l) => {
                            fixed_ip_watch::lookup_cached(
                                &l.client,
                                l.cache.as_ref(),
                                &req.pod_namespace,
                                &req.pod_name,
                            )
                            .await?
                        }
                        None => fixed_ip::Lookup::NotFound,
                    });
                }
                Decision::Wait(ip) => {
                    if !logged {
                        info!(%ip, %pod, wait_s = wait.as_secs(), "waiting for the pod's fixed IP to reach this node");
                        logged = true;
                    }
                    // Ok: the NodeNetwork changed, look again; Err: the deadline passed.
                    if let Ok(Err(_)) = tokio::time::timeout_at(deadline, changed.changed()).await {
                        // The sender lives as long as the agent; sleep out the wait rather than spin.
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                Decision::TimedOut(ip) => {
                    return Err(Error::FixedIpNotHere {
                        pod,
                        ip,
                        waited: wait,
                    });
                }
                Decision::Any | Decision::Fixed(_) => {}
            }
        }
    }

    /// Counts a CNI request the server refused before it reached the agent
    /// (op `add`, `del` or `check`, result `error`) and hands the error back.
    pub fn rejected(&self, op: &'static str, e: Error) -> Error {
        let r: Result<()> = Err(e);
        self.observe(op, std::time::Instant::now(), &r);
        match r {
            Err(e) => e,
            Ok(()) => unreachable!("built as an error above"),
        }
    }

    fn observe<T>(&self, op: &'static str, start: std::time::Instant, r: &Result<T>) {
        self.metrics
            .cni_duration
            .observe(start.elapsed().as_secs_f64());
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .cni
            .get_or_create(&CniLabels { op, result })
            .inc();
        if let Err(e) = r {
            self.metrics.error(e);
        }
    }

    /// CNI ADD: allocate (idempotently), checkpoint, wire the pod, program the datapath.
    pub async fn cni_add(&self, req: &CniAdd) -> Result<CniReply> {
        let start = std::time::Instant::now();
        let r = self.cni_add_inner(req).await;
        self.observe("add", start, &r);
        r
    }

    async fn cni_add_inner(&self, req: &CniAdd) -> Result<CniReply> {
        let t_start = std::time::Instant::now();
        self.wait_ready().await;
        let areq = AllocRequest {
            key: AllocKey {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            },
            netns: req.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
        };
        let alloc = self.allocate(&areq).await?;
        let t_alloc = std::time::Instant::now();
        // Known once a policy snapshot named the pod; 0 (no policy) until then.
        let identity = lock(&self.policy)
            .node
            .identity_of_pod(&req.pod_namespace, &req.pod_name)
            .unwrap_or(0);
        let program = |link: &veth::PodLink| -> Result<()> {
            let mut guard = lock(&self.datapath);
            let Some(dp) = guard.as_mut() else {
                return Ok(());
            };
            // Idempotent: a complete pair found again keeps its filter.
            dp.attach(&link.host_ifname)?;
            dp.upsert_endpoint(
                alloc.ip,
                &Endpoint {
                    ifindex: link.host_ifindex,
                    identity,
                    mac: link.pod_mac,
                    host_mac: link.host_mac,
                },
            )
        };
        // The checkpoint is made durable while the pod is wired; ADD answers
        // (hands the IP to the runtime) only after both ended.
        let (saved, wired) = tokio::join!(
            async {
                let r = self.save().await;
                (r, t_alloc.elapsed())
            },
            veth::setup(
                &self.netlink,
                Path::new(&req.netns),
                &req.container_id,
                &req.ifname,
                alloc.ip,
                program,
            )
        );
        let (saved, t_saved) = saved;
        let link = match saved.and(wired) {
            Ok(l) => l,
            Err(e) => {
                lock(&self.state).node.free(&areq.key, now_ms());
                let _ = veth::teardown(&self.netlink, &req.container_id, &req.ifname).await;
                if let Some(dp) = lock(&self.datapath).as_mut() {
                    let _ = dp.remove_endpoint(alloc.ip);
                    let _ = dp.detach(&veth::host_veth_name(&req.container_id, &req.ifname));
                }
                self.save().await?;
                return Err(e);
            }
        };
        let t_wired = t_alloc.elapsed();
        tracing::debug!(
            checkpoint_us = t_saved.as_micros() as u64,
            wired_and_programmed_us = t_wired.as_micros() as u64,
            allocated_after_us = t_alloc.duration_since(t_start).as_micros() as u64,
            "ADD phases"
        );
        info!(ip = %alloc.ip, container = %req.container_id, veth = %link.host_ifname, "pod added");
        self.resync_policy();
        Ok(CniReply {
            ip: alloc.ip,
            gateway: POD_GATEWAY,
            host_ifname: link.host_ifname,
            host_mac: fmt_mac(&link.host_mac),
            pod_mac: fmt_mac(&link.pod_mac),
        })
    }

    /// CNI DEL: unwire, free into cooldown, checkpoint. Already gone is fine.
    pub async fn cni_del(&self, req: &CniCall) -> Result<()> {
        let start = std::time::Instant::now();
        let r = self.cni_del_inner(req).await;
        self.observe("del", start, &r);
        r
    }

    async fn cni_del_inner(&self, req: &CniCall) -> Result<()> {
        self.wait_ready().await;
        let host = veth::host_veth_name(&req.container_id, &req.ifname);
        veth::teardown(&self.netlink, &req.container_id, &req.ifname).await?;
        let key = AllocKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let freed = lock(&self.state).node.free(&key, now_ms());
        if let Some(dp) = lock(&self.datapath).as_mut() {
            if let Some(a) = &freed {
                dp.remove_endpoint(a.ip)?;
            }
            dp.detach(&host)?;
        }
        if let Some(a) = &freed {
            info!(ip = %a.ip, container = %req.container_id, "pod deleted");
            self.save().await?;
            self.resync_policy();
        }
        Ok(())
    }

    /// CNI CHECK: the allocation exists and the pod interface carries it.
    pub async fn cni_check(&self, req: &CniCall) -> Result<CniReply> {
        let start = std::time::Instant::now();
        let r = self.cni_check_inner(req).await;
        self.observe("check", start, &r);
        r
    }

    async fn cni_check_inner(&self, req: &CniCall) -> Result<CniReply> {
        self.wait_ready().await;
        let key = AllocKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let Some(a) = lock(&self.state).node.pool().get(&key).cloned() else {
            return Err(Error::NotAllocated { key });
        };
        let netns = if req.netns.is_empty() {
            a.netns.clone()
        } else {
            req.netns.clone()
        };
        if !veth::check(Path::new(&netns), &req.ifname, a.ip).await? {
            return Err(Error::PodAddressMissing {
                ifname: req.ifname.clone(),
                netns,
                ip: a.ip,
            });
        }
        let host = veth::host_veth_name(&req.container_id, &req.ifname);
        let link = veth::link_by_name(&self.netlink, &host)
            .await?
            .ok_or_else(|| Error::HostVethMissing { host: host.clone() })?;
        let datapath_on = lock(&self.datapath).is_some();
        if datapath_on && !veth::has_bpf_ingress_filter(&self.netlink, link.header.index).await? {
            return Err(Error::DatapathNotAttached { host });
        }
        Ok(CniReply {
            ip: a.ip,
            gateway: POD_GATEWAY,
            host_ifname: host,
            host_mac: String::new(),
            pod_mac: String::new(),
        })
    }
}
