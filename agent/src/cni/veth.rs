//! Pod plumbing over netlink: a veth pair per pod interface, one end moved
//! into the pod's network namespace with the pod's /32, a default route via
//! the link-local gateway (a permanent neighbour entry points it at the host
//! veth's MAC), and a host route to the pod.
//!
//! Work inside a pod namespace runs on a short-lived thread that has entered
//! it (`setns` changes only the calling thread), with its own netlink socket.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd,
    path::Path,
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::NeighbourState,
        route::RouteScope,
        tc::TcAttribute,
    },
};

use crate::{
    error::{Error, Result},
    paths::{HOST_VETH_PREFIX, POD_GATEWAY},
};

/// Host-side veth name of a pod interface: short, stable and unique.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:011x}",
        fnv(container_id, ifname) & 0xfff_ffff_ffff
    )
}

/// FNV-1a over the key; also the pod's numeric identity seed.
pub fn fnv(a: &str, b: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.bytes().chain([0u8]).chain(b.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What ADD built, for the datapath and the CNI result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodLink {
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth ifindex.
    pub host_ifindex: u32,
    /// Host-side veth MAC.
    pub host_mac: [u8; 6],
    /// Pod-side interface name.
    pub pod_ifname: String,
    /// Pod-side MAC.
    pub pod_mac: [u8; 6],
    /// Whether this call created the pair (false: it was already complete).
    #[serde(default)]
    pub created: bool,
}

/// A netlink handle in the calling thread's network namespace; the
/// connection task runs on the current tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn mac_of(msg: &LinkMessage) -> [u8; 6] {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                Some(m)
            }
            _ => None,
        })
        .unwrap_or_default()
}

fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -libc::ENODEV || m.raw_code() == -libc::ENOENT || m.raw_code() == -libc::ESRCH)
}

/// The link called `name`, if any.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(m) => Ok(m),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(Error::netlink(format!("looking up link {name}"), e)),
    }
}

/// Runs `f` on a thread inside the network namespace at `netns`, with a
/// current-thread runtime for netlink.
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let ns = File::open(netns)
        .map_err(|e| Error::io(format!("opening netns {}", netns.display()), e))?;
    let shown = netns.display().to_string();
    let t = std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io(format!("entering netns {shown}"), e.into()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a runtime in the pod netns", e))?;
        rt.block_on(async move { f(connect()?).await })
    });
    t.join()
        .map_err(|_| Error::io("netns worker", std::io::Error::other("thread panicked")))?
}

/// Async wrapper of [`in_netns`] that keeps the runtime's worker free.
pub async fn in_netns_async<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let netns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || in_netns(&netns, f))
        .await
        .map_err(|e| Error::io("netns worker", std::io::Error::other(e)))?
}

/// The loopback device's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// A netlink handle whose socket lives in the network namespace at `netns`,
/// driven by the caller's runtime. A short-lived thread, started at once,
/// enters the namespace only to open the socket (a socket keeps the
/// namespace it was born in), so no runtime is built per pod.
pub fn connect_in(netns: &Path) -> impl Future<Output = Result<Handle>> + use<> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = File::open(netns)
        .map_err(|e| Error::io(format!("opening netns {}", netns.display()), e))
        .map(|ns| {
            let shown = netns.display().to_string();
            let rt = tokio::runtime::Handle::current();
            std::thread::spawn(move || {
                let _entered = rt.enter();
                let r = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::io(format!("entering netns {shown}"), e.into()))
                    .and_then(|()| {
                        rtnetlink::new_connection()
                            .map_err(|e| Error::io(format!("opening netlink in {shown}"), e))
                    });
                let _ = tx.send(r);
            });
        });
    async move {
        started?;
        let (conn, handle, _) = rx.await.map_err(|_| {
            Error::io("netns worker", std::io::Error::other("thread ended early"))
        })??;
        tokio::spawn(conn);
        Ok(handle)
    }
}

/// Pod side of the wiring as the pod sees it: (MAC, has the IP).
async fn pod_side(h: Handle, ifname: String, ip: Ipv4Addr) -> Result<Option<[u8; 6]>> {
    let Some(link) = link_by_name(&h, &ifname).await? else {
        return Ok(None);
    };
    let idx = link.header.index;
    let mut addrs = h.address().get().set_link_index_filter(idx).execute();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|e| Error::netlink(format!("listing addresses of {ifname}"), e))?
    {
        if a.attributes
            .iter()
            .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip))
            && a.header.prefix_len == 32
        {
            return Ok(Some(mac_of(&link)));
        }
    }
    Ok(None)
}

/// Deterministic locally administered MAC for a pod interface, so the
/// datapath can be programmed before the pod side is configured.
pub fn pod_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let h = fnv(ifname, container_id).to_be_bytes();
    [0x0a, 0x58, h[2], h[3], h[4], h[5]]
}

/// Builds (or finds already built) the wiring of one pod interface.
/// `on_host` (the datapath attach) runs on the new host veth before it is set
/// up; the pod side is configured while the host route goes in.
pub async fn setup(
    h: &Handle,
    netns: &Path,
    container_id: &str,
    ifname: &str,
    ip: Ipv4Addr,
    on_host: impl FnOnce(&PodLink) -> Result<()>,
) -> Result<PodLink> {
    let host = host_veth_name(container_id, ifname);
    if let Some(link) = link_by_name(h, &host).await? {
        let (pif, pip) = (ifname.to_string(), ip);
        let found = match connect_in(netns).await {
            Ok(ph) => pod_side(ph, pif, pip).await,
            Err(e) => Err(e),
        };
        if let Ok(Some(pod_mac)) = found {
            let pl = PodLink {
                host_ifname: host,
                host_ifindex: link.header.index,
                host_mac: mac_of(&link),
                pod_ifname: ifname.to_string(),
                pod_mac,
                created: false,
            };
            on_host(&pl)?;
            return Ok(pl);
        }
        // Half-built by an earlier attempt: start over.
        h.link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("deleting stale {host}"), e))?;
    }
    let t0 = std::time::Instant::now();
    let pod_netlink = connect_in(netns);
    let ns = File::open(netns)
        .map_err(|e| Error::io(format!("opening netns {}", netns.display()), e))?;
    let pmac = pod_mac(container_id, ifname);
    // The peer is born inside the pod netns under its final name and MAC:
    // moving a device between namespaces afterwards costs an RCU grace period.
    let mut msg = LinkVeth::new(&host, ifname).build();
    for attr in msg.attributes.iter_mut() {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                    peer.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
                    peer.attributes.push(LinkAttribute::Address(pmac.to_vec()));
                }
            }
        }
    }
    h.link().add(msg).execute().await.map_err(|e| {
        Error::netlink(
            format!("creating veth {host} with {ifname} in {}", netns.display()),
            e,
        )
    })?;
    drop(ns);
    let link = link_by_name(h, &host)
        .await?
        .ok_or_else(|| Error::LinkMissing {
            name: host.clone(),
            what: "host veth (vanished after creation)",
        })?;
    let host_ifindex = link.header.index;
    let host_mac = mac_of(&link);
    let pl = PodLink {
        host_ifname: host.clone(),
        host_ifindex,
        host_mac,
        pod_ifname: ifname.to_string(),
        pod_mac: pmac,
        created: true,
    };
    // The datapath goes on while the host veth is down: adding a qdisc to a
    // running device would wait for its queues to drain.
    on_host(&pl)?;
    let t_attached = t0.elapsed();
    h.link()
        .set(LinkUnspec::new_with_index(host_ifindex).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("setting {host} up"), e))?;
    let t_created = t0.elapsed();

    let pif = ifname.to_string();
    // The host veth names its peer's ifindex (in the pod netns).
    let peer_index = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    });
    let ph = pod_netlink.await?;
    let pod = async move {
        // (A veth cannot be born up: its peer does not exist yet then.)
        let idx = match peer_index {
            Some(i) => i,
            None => {
                link_by_name(&ph, &pif)
                    .await?
                    .ok_or_else(|| Error::LinkMissing {
                        name: pif.clone(),
                        what: "veth peer in the pod netns",
                    })?
                    .header
                    .index
            }
        };
        ph.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting {pif} up"), e))?;
        // Independent requests, in flight together on one socket.
        let lo = async {
            ph.link()
                .set(LinkUnspec::new_with_index(LOOPBACK_IFINDEX).up().build())
                .execute()
                .await
                .map_err(|e| Error::netlink("setting lo up", e))
        };
        let addr = async {
            ph.address()
                .add(idx, IpAddr::V4(ip), 32)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("adding {ip}/32 to {pif}"), e))
        };
        let neigh = async {
            ph.neighbours()
                .add(idx, IpAddr::V4(POD_GATEWAY))
                .link_layer_address(&host_mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink("adding the gateway neighbour", e))
        };
        let gw = async {
            let gw_route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(POD_GATEWAY, 32)
                .output_interface(idx)
                .scope(RouteScope::Link)
                .build();
            ph.route()
                .add(gw_route)
                .replace()
                .execute()
                .await
                .map_err(|e| Error::netlink("adding the gateway route", e))
        };
        let (lo, addr, neigh, gw) = tokio::join!(lo, addr, neigh, gw);
        lo.and(addr).and(neigh).and(gw)?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(POD_GATEWAY)
            .output_interface(idx)
            .build();
        ph.route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink("adding the default route", e))?;
        Ok::<_, Error>(t0.elapsed())
    };
    let host_side = async {
        let host_route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(ip, 32)
            .output_interface(host_ifindex)
            .scope(RouteScope::Link)
            .build();
        h.route()
            .add(host_route)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding host route {ip}/32 dev {host}"), e))?;
        Ok::<_, Error>(t0.elapsed())
    };
    let (pod, host_side) = tokio::join!(pod, host_side);
    let t_pod = pod?;
    let t_route = host_side?;
    tracing::debug!(
        attached_us = t_attached.as_micros() as u64,
        up_us = t_created.as_micros() as u64,
        pod_done_us = t_pod.as_micros() as u64,
        host_route_us = t_route.as_micros() as u64,
        "wiring phases"
    );
    Ok(pl)
}

/// Whether a `cls_bpf` filter sits on tc ingress of interface `ifindex`.
pub async fn has_bpf_ingress_filter(h: &Handle, ifindex: u32) -> Result<bool> {
    let mut filters = h.traffic_filter(ifindex as i32).get().ingress().execute();
    while let Some(f) = filters
        .try_next()
        .await
        .map_err(|e| Error::netlink(format!("listing tc filters of ifindex {ifindex}"), e))?
    {
        if f.attributes
            .iter()
            .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the wiring of one pod interface; succeeds when it is already gone.
pub async fn teardown(h: &Handle, container_id: &str, ifname: &str) -> Result<bool> {
    let host = host_veth_name(container_id, ifname);
    let Some(link) = link_by_name(h, &host).await? else {
        return Ok(false);
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(Error::netlink(format!("deleting {host}"), e)),
    }
}

/// Whether the pod interface exists in `netns` and carries `ip`/32.
pub async fn check(netns: &Path, ifname: &str, ip: Ipv4Addr) -> Result<bool> {
    if !netns.exists() {
        return Ok(false);
    }
    let pif = ifname.to_string();
    Ok(in_netns_async(netns, move |ph| pod_side(ph, pif, ip))
        .await?
        .is_some())
}

/// Names of the links in the agent's own network namespace.
pub async fn link_names(h: &Handle) -> Result<std::collections::BTreeSet<String>> {
    let mut links = h.link().get().execute();
    let mut names = std::collections::BTreeSet::new();
    while let Some(m) = links
        .try_next()
        .await
        .map_err(|e| Error::netlink("listing links", e))?
    {
        names.extend(m.attributes.into_iter().filter_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n),
            _ => None,
        }));
    }
    Ok(names)
}

/// Whether a checkpointed pod is alive (restore and sweeps): its interface
/// `ifname` in `netns` when the agent can see that path; when it cannot
/// (another mount namespace, a path the runtime moved), whether its host
/// veth is still up (`host_veth_up`): a veth pair dies with its netns, so
/// a path the agent cannot see never frees a live pod's IP.
pub fn interface_alive(netns: &Path, ifname: &str, host_veth_up: bool) -> bool {
    if !netns.exists() {
        if host_veth_up {
            tracing::warn!(netns = %netns.display(), "pod netns path not visible to the agent but its host veth is up; keeping it");
        }
        return host_veth_up;
    }
    let pif = ifname.to_string();
    match in_netns(netns, move |ph| async move {
        Ok(link_by_name(&ph, &pif).await?.is_some())
    }) {
        Ok(alive) => alive,
        Err(e) => {
            // Cannot tell: keeping the IP is safe, freeing it might double-assign.
            tracing::warn!(netns = %netns.display(), error = %sextant_kit::ErrorChain(&e), "cannot check pod interface; keeping it");
            true
        }
    }
}
