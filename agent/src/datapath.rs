//! The eBPF datapath: loads `bpf/datapath.c` (built by `build.rs`), pins its
//! program and maps under the bpffs root, attaches it as a `cls_bpf` filter
//! on tc ingress of each pod's host veth, and fills the maps.
//!
//! ```text
//!   pod A eth0 ──▶ host veth A ── tc ingress: from_pod ──┬─▶ redirect ──▶ host veth B ──▶ pod B
//!                                  │ SERVICES/BACKENDS   └─▶ kernel stack (not a local pod)
//!                                  │ CT (per-flow DNAT / reverse NAT)
//!                                  └ ENDPOINTS, COUNTERS
//! ```
//!
//! On start, pins left by an earlier agent are re-adopted before anything is
//! loaded anew, so a restart never detaches the datapath: the filters belong
//! to the interfaces and keep forwarding while no agent runs.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{
        HashMap, Map, MapData, PerCpuArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        tc::{NlOptions, TcAttachOptions, TcError, TcHandle},
    },
};

use sextant_agent_api::{Backend, Frontend, Proto};

use crate::{
    error::{Error, Result},
    paths::{LINKS_DIR, PROG_PIN, PROG_TO_POD_PIN},
};

/// Priority and handle of Sextant's filter on each host veth's ingress.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

fn raw_os_error(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::TcError(TcError::NetlinkError(n)) => n.raw_os_error(),
        _ => None,
    }
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const MAPS: [&str; 10] = [
    "ENDPOINTS",
    "SERVICES",
    "BACKENDS",
    "CT",
    "COUNTERS",
    "POLICY",
    "POLICY_ENFORCED",
    "IPCACHE",
    "PCT",
    "POLICY_VERDICTS",
];
const PROGRAMS: [(&str, &str); 2] = [("from_pod", PROG_PIN), ("to_pod", PROG_TO_POD_PIN)];

/// Bits of the `POLICY_ENFORCED` map: the directions a local identity is
/// default-deny in.
pub const ENFORCE_INGRESS: u32 = 1;
/// See [`ENFORCE_INGRESS`].
pub const ENFORCE_EGRESS: u32 = 2;
/// Fixed bits of a `POLICY` key before the port prefix.
const POLICY_FIXED_BITS: u32 = 80;
/// Slots of the per-policy verdict counter array.
pub const POLICY_SLOTS: u32 = 16384;

/// Counter slots of the `COUNTERS` per-CPU map (`enum counter` in datapath.h).
pub const COUNTER_NAMES: [(&str, u32); 10] = [
    ("forward", 0),
    ("pass", 1),
    ("drop_no_backend", 2),
    ("dnat", 3),
    ("revnat", 4),
    ("ct_new", 5),
    ("policy_denied_ingress", 6),
    ("policy_denied_egress", 7),
    ("policy_allowed", 8),
    ("policy_reply", 9),
];

/// IP protocol numbers the service map knows.
/// One pod on this node, as the datapath delivers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host veth ifindex.
    pub ifindex: u32,
    /// Security identity.
    pub identity: u32,
    /// Pod MAC.
    pub mac: [u8; 6],
    /// Host veth MAC.
    pub host_mac: [u8; 6],
}

impl Endpoint {
    fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..8].copy_from_slice(&self.identity.to_ne_bytes());
        b[8..14].copy_from_slice(&self.mac);
        b[14..20].copy_from_slice(&self.host_mac);
        b
    }
}

/// The `SERVICES` map key of a frontend.
fn frontend_key(fe: &Frontend) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&fe.vip.octets());
    b[4..6].copy_from_slice(&fe.port.to_be_bytes());
    b[6] = fe.proto.number();
    b
}

/// The frontend of a `SERVICES` map key (`None` for a protocol it never writes).
fn frontend_of_key(b: &[u8; 8]) -> Option<Frontend> {
    Some(Frontend {
        vip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        port: u16::from_be_bytes([b[4], b[5]]),
        proto: Proto::from_number(b[6])?,
    })
}

/// One allow entry of the `POLICY` map: packets between local pods of
/// identity `local` and peers of identity `remote` (0 = any) in direction
/// `egress` (else ingress), protocol `proto` (0 = any, then `port_prefix` is
/// 0), destination port matching the first `port_prefix` bits of `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// Identity of the selected local pod.
    pub local: u32,
    /// Identity of the peer, 0 for any.
    pub remote: u32,
    /// From the pod (egress) or to it (ingress).
    pub egress: bool,
    /// IP protocol number, 0 for any.
    pub proto: u8,
    /// Destination port (host order).
    pub port: u16,
    /// Leading bits of `port` that must match (0..=16).
    pub port_prefix: u8,
}

impl PolicyEntry {
    fn key(&self) -> Key<[u8; 12]> {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.local.to_ne_bytes());
        b[4..8].copy_from_slice(&self.remote.to_ne_bytes());
        b[8] = u8::from(self.egress);
        b[9] = self.proto;
        let prefix = u32::from(self.port_prefix.min(16));
        let mask = if prefix == 0 {
            0
        } else {
            u16::MAX << (16 - prefix)
        };
        b[10..12].copy_from_slice(&(self.port & mask).to_be_bytes());
        Key::new(POLICY_FIXED_BITS + prefix, b)
    }
}

fn policy_value(index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&index.to_ne_bytes());
    b
}

/// Conntrack idle timeouts the agent's GC applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP flows.
    pub tcp: std::time::Duration,
    /// UDP and everything else.
    pub other: std::time::Duration,
}

impl Default for CtTimeouts {
    /// Cilium's defaults: 6 h for TCP, 60 s for the rest.
    fn default() -> Self {
        CtTimeouts {
            tcp: std::time::Duration::from_secs(21_600),
            other: std::time::Duration::from_secs(60),
        }
    }
}

/// What one conntrack sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSweep {
    /// Entries left in the service and policy conntrack maps.
    pub live: usize,
    /// Entries the sweep removed as idle.
    pub expired: usize,
}

fn monotonic_ns() -> u64 {
    // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn backend_key(id: u32, slot: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&id.to_ne_bytes());
    b[4..8].copy_from_slice(&slot.to_ne_bytes());
    b
}

/// The loaded, pinned datapath.
pub struct Datapath {
    root: PathBuf,
    prog: SchedClassifier,
    endpoints: HashMap<MapData, [u8; 4], [u8; 20]>,
    services: HashMap<MapData, [u8; 8], [u8; 8]>,
    backends: HashMap<MapData, [u8; 8], [u8; 8]>,
    ct: HashMap<MapData, [u8; 16], [u8; 16]>,
    counters: PerCpuArray<MapData, u64>,
    policy: LpmTrie<MapData, [u8; 12], [u8; 8]>,
    enforced: HashMap<MapData, u32, u32>,
    ipcache: LpmTrie<MapData, [u8; 4], u32>,
    pct: HashMap<MapData, [u8; 16], u64>,
    verdicts: PerCpuArray<MapData, u64>,
    to_pod: SchedClassifier,
    next_service_id: u32,
    adopted: bool,
}

/// Mounts bpffs on `/sys/fs/bpf` if `root` is not on one already.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let probe = root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/sys/fs/bpf"));
    let on_bpffs = |p: &Path| {
        nix::sys::statfs::statfs(p)
            .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
            .unwrap_or(false)
    };
    if on_bpffs(probe) {
        return Ok(());
    }
    let base = Path::new("/sys/fs/bpf");
    if !root.starts_with(base) {
        return Err(Error::io(
            format!("{} is not on a bpffs", root.display()),
            std::io::Error::other("pin root must live on bpffs"),
        ));
    }
    nix::mount::mount(
        Some("bpf"),
        base,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::io("mounting bpffs on /sys/fs/bpf", e.into()))
}

fn take<K: aya::Pod, V: aya::Pod>(m: Map, name: &str) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(m).map_err(|e| Error::bpf(format!("map {name}"), e))
}

impl Datapath {
    /// Opens the datapath pinned under `root`, loading and pinning it when
    /// nothing is pinned yet.
    pub fn open(root: &Path) -> Result<Self> {
        ensure_bpffs(root)?;
        fs::create_dir_all(root.join(LINKS_DIR))
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let pinned_all = PROGRAMS.iter().all(|(_, pin)| root.join(pin).exists())
            && MAPS.iter().all(|m| root.join(m).exists());
        let adopted = pinned_all;
        if !adopted && let Err(e) = Self::load_and_pin(root) {
            // Roll back a partial load so the next start loads cleanly.
            for (_, pin) in PROGRAMS {
                let _ = fs::remove_file(root.join(pin));
            }
            for m in MAPS {
                let _ = fs::remove_file(root.join(m));
            }
            return Err(e);
        }
        let program = |pin: &str| {
            let path = root.join(pin);
            SchedClassifier::from_pin(&path)
                .map_err(|e| Error::bpf(format!("opening pinned program {}", path.display()), e))
        };
        let prog = program(PROG_PIN)?;
        let to_pod = program(PROG_TO_POD_PIN)?;
        let pinned = |name: &str| {
            MapData::from_pin(root.join(name))
                .map_err(|e| Error::bpf(format!("opening pinned map {name}"), e))
        };
        let endpoints = take(Map::HashMap(pinned("ENDPOINTS")?), "ENDPOINTS")?;
        let services = take(Map::HashMap(pinned("SERVICES")?), "SERVICES")?;
        let backends = take(Map::HashMap(pinned("BACKENDS")?), "BACKENDS")?;
        let ct = take(Map::LruHashMap(pinned("CT")?), "CT")?;
        let counters = PerCpuArray::try_from(Map::PerCpuArray(pinned("COUNTERS")?))
            .map_err(|e| Error::bpf("map COUNTERS", e))?;
        let policy = LpmTrie::try_from(Map::LpmTrie(pinned("POLICY")?))
            .map_err(|e| Error::bpf("map POLICY", e))?;
        let enforced = take(Map::HashMap(pinned("POLICY_ENFORCED")?), "POLICY_ENFORCED")?;
        let ipcache = LpmTrie::try_from(Map::LpmTrie(pinned("IPCACHE")?))
            .map_err(|e| Error::bpf("map IPCACHE", e))?;
        let pct = take(Map::LruHashMap(pinned("PCT")?), "PCT")?;
        let verdicts = PerCpuArray::try_from(Map::PerCpuArray(pinned("POLICY_VERDICTS")?))
            .map_err(|e| Error::bpf("map POLICY_VERDICTS", e))?;
        let mut dp = Datapath {
            root: root.to_path_buf(),
            prog,
            endpoints,
            services,
            backends,
            ct,
            counters,
            policy,
            enforced,
            ipcache,
            pct,
            verdicts,
            to_pod,
            next_service_id: 1,
            adopted,
        };
        dp.next_service_id = dp
            .services
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, v)| u32::from_ne_bytes([v[0], v[1], v[2], v[3]]))
            .max()
            .unwrap_or(0)
            + 1;
        Ok(dp)
    }

    fn load_and_pin(root: &Path) -> Result<()> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(root)
            .load(OBJECT)
            .map_err(|e| Error::bpf("loading datapath.o", e))?;
        for (name, pin) in PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| {
                    Error::bpf(
                        format!("program {name}"),
                        std::io::Error::other("missing in datapath.o"),
                    )
                })?
                .try_into()
                .map_err(|e| Error::bpf(format!("program {name}"), e))?;
            prog.load()
                .map_err(|e| Error::bpf(format!("verifying {name}"), e))?;
            prog.pin(root.join(pin))
                .map_err(|e| Error::bpf(format!("pinning {name}"), e))?;
        }
        Ok(())
    }

    /// Whether this datapath was re-adopted from pins of an earlier agent.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The bpffs root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Attaches `from_pod` on tc ingress and `to_pod` on tc egress of
    /// `ifname` as classic `cls_bpf` filters under a `clsact` qdisc, best done while the interface is still
    /// down. The filter belongs to the interface, not to this process: it
    /// keeps forwarding while no agent runs and goes away with the
    /// interface. (A tcx link would wait for an RCU grace period, 5 to 15 ms
    /// holding the RTNL lock, on every attach; this path waits for none.)
    /// Attaching twice is a no-op.
    pub fn attach(&mut self, ifname: &str) -> Result<()> {
        match aya::programs::tc::qdisc_add_clsact(ifname) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(TcError::AlreadyAttached) => {}
            Err(e) => return Err(Error::bpf(format!("adding clsact to {ifname}"), e)),
        }
        for (prog, dir) in [
            (&mut self.prog, TcAttachType::Ingress),
            (&mut self.to_pod, TcAttachType::Egress),
        ] {
            let id = match prog.attach_with_options(
                ifname,
                dir,
                TcAttachOptions::Netlink(NlOptions {
                    priority: FILTER_PRIORITY,
                    handle: FILTER_HANDLE,
                    ..Default::default()
                }),
            ) {
                Ok(id) => id,
                Err(e) if raw_os_error(&e) == Some(libc::EEXIST) => continue,
                Err(e) => return Err(Error::bpf(format!("attaching to {ifname} {dir:?}"), e)),
            };
            let link = prog
                .take_link(id)
                .map_err(|e| Error::bpf(format!("taking link of {ifname}"), e))?;
            // Dropping the handle would remove the filter; the interface owns it.
            std::mem::forget(link);
        }
        Ok(())
    }

    /// Forgets `ifname`: its filter goes with the interface; a tcx link
    /// pinned by an older agent is unpinned.
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        match fs::remove_file(self.root.join(LINKS_DIR).join(ifname)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing link pin of {ifname}"), e)),
        }
    }

    /// Adds or replaces the endpoint of pod IP `ip`.
    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, ep: &Endpoint) -> Result<()> {
        self.endpoints
            .insert(ip.octets(), ep.encode(), 0)
            .map_err(|e| Error::bpf(format!("writing endpoint {ip}"), e))
    }

    /// Removes the endpoint of `ip`; absent is fine.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.endpoints.remove(&ip.octets()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::bpf(format!("removing endpoint {ip}"), e)),
        }
    }

    /// Sets the backends of a frontend (empty: packets to it are dropped).
    pub fn set_service(&mut self, fe: &Frontend, backends: &[Backend]) -> Result<()> {
        let key = frontend_key(fe);
        let (id, old_count) = match self.services.get(&key, 0) {
            Ok(v) => (
                u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                u32::from_ne_bytes([v[4], v[5], v[6], v[7]]),
            ),
            Err(_) => {
                let id = self.next_service_id;
                self.next_service_id += 1;
                (id, 0)
            }
        };
        let count = u32::try_from(backends.len()).map_err(|_| {
            Error::BadRequest(format!("too many backends for {}:{}", fe.vip, fe.port))
        })?;
        for (slot, b) in (0u32..).zip(backends) {
            let mut v = [0u8; 8];
            v[0..4].copy_from_slice(&b.ip.octets());
            v[4..6].copy_from_slice(&b.port.to_be_bytes());
            self.backends
                .insert(backend_key(id, slot), v, 0)
                .map_err(|e| Error::bpf(format!("writing backend {}", b.ip), e))?;
        }
        let mut v = [0u8; 8];
        v[0..4].copy_from_slice(&id.to_ne_bytes());
        v[4..8].copy_from_slice(&count.to_ne_bytes());
        self.services
            .insert(key, v, 0)
            .map_err(|e| Error::bpf(format!("writing service {}:{}", fe.vip, fe.port), e))?;
        for slot in count..old_count {
            let _ = self.backends.remove(&backend_key(id, slot));
        }
        Ok(())
    }

    /// Removes a frontend and its backends.
    pub fn remove_service(&mut self, fe: &Frontend) -> Result<()> {
        let key = frontend_key(fe);
        let Ok(v) = self.services.get(&key, 0) else {
            return Ok(());
        };
        let id = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
        let count = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]);
        self.services
            .remove(&key)
            .map_err(|e| Error::bpf(format!("removing service {}:{}", fe.vip, fe.port), e))?;
        for slot in 0..count {
            let _ = self.backends.remove(&backend_key(id, slot));
        }
        Ok(())
    }

    /// Endpoints in the map.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.keys().filter(|k| k.is_ok()).count()
    }

    /// Frontends in the map.
    pub fn service_count(&self) -> usize {
        self.services.keys().filter(|k| k.is_ok()).count()
    }

    /// The service map as the programs see it: every frontend with its
    /// backends in slot order.
    pub fn services(&self) -> BTreeMap<Frontend, Vec<Backend>> {
        let mut out = BTreeMap::new();
        for (key, v) in self.services.iter().filter_map(|r| r.ok()) {
            let Some(fe) = frontend_of_key(&key) else {
                continue;
            };
            let id = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
            let count = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]);
            let backends = (0..count)
                .filter_map(|slot| self.backends.get(&backend_key(id, slot), 0).ok())
                .map(|b| Backend {
                    ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                    port: u16::from_be_bytes([b[4], b[5]]),
                })
                .collect();
            out.insert(fe, backends);
        }
        out
    }

    /// Conntrack entries (both directions).
    pub fn conntrack_count(&self) -> usize {
        self.ct.keys().filter(|k| k.is_ok()).count()
    }

    /// Sets the security identity of the endpoint at `ip`; false when `ip`
    /// is no endpoint of this node.
    pub fn set_endpoint_identity(&mut self, ip: Ipv4Addr, identity: u32) -> Result<bool> {
        let mut v = match self.endpoints.get(&ip.octets(), 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(Error::bpf(format!("reading endpoint {ip}"), e)),
        };
        if v[4..8] == identity.to_ne_bytes() {
            return Ok(true);
        }
        v[4..8].copy_from_slice(&identity.to_ne_bytes());
        self.endpoints
            .insert(ip.octets(), v, 0)
            .map_err(|e| Error::bpf(format!("writing endpoint {ip}"), e))?;
        Ok(true)
    }

    /// Adds or replaces one policy allow entry, counted in verdict slot `index`.
    pub fn upsert_policy(&mut self, entry: &PolicyEntry, index: u32) -> Result<()> {
        self.policy
            .insert(&entry.key(), policy_value(index % POLICY_SLOTS), 0)
            .map_err(|e| Error::bpf(format!("writing policy entry {entry:?}"), e))
    }

    /// Removes one policy allow entry; absent is fine.
    pub fn remove_policy(&mut self, entry: &PolicyEntry) -> Result<()> {
        match self.policy.remove(&entry.key()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::bpf(format!("removing policy entry {entry:?}"), e)),
        }
    }

    /// Sets the default-deny directions (`ENFORCE_*` bits) of local identity
    /// `identity`; 0 removes it.
    pub fn set_enforced(&mut self, identity: u32, bits: u32) -> Result<()> {
        let r = if bits == 0 {
            match self.enforced.remove(&identity) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            }
        } else {
            self.enforced.insert(identity, bits, 0)
        };
        r.map_err(|e| Error::bpf(format!("writing enforcement of identity {identity}"), e))
    }

    /// The default-deny bits of every local identity that has any.
    pub fn enforced(&self) -> BTreeMap<u32, u32> {
        self.enforced.iter().filter_map(|r| r.ok()).collect()
    }

    /// Maps `addr/prefix` to security identity `identity`.
    pub fn upsert_ipcache(&mut self, addr: Ipv4Addr, prefix: u8, identity: u32) -> Result<()> {
        self.ipcache
            .insert(
                &Key::new(u32::from(prefix.min(32)), addr.octets()),
                identity,
                0,
            )
            .map_err(|e| Error::bpf(format!("writing ipcache {addr}/{prefix}"), e))
    }

    /// Removes `addr/prefix` from the ipcache; absent is fine.
    pub fn remove_ipcache(&mut self, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .ipcache
            .remove(&Key::new(u32::from(prefix.min(32)), addr.octets()))
        {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::bpf(format!("removing ipcache {addr}/{prefix}"), e)),
        }
    }

    /// Entries in the `POLICY` map.
    pub fn policy_count(&self) -> usize {
        self.policy.keys().filter(|k| k.is_ok()).count()
    }

    /// Allowed packets of each of `slots` (summed over CPUs), non-zero ones only.
    pub fn policy_verdicts(&self, slots: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u64> {
        slots
            .into_iter()
            .filter(|i| *i < POLICY_SLOTS)
            .filter_map(|i| {
                let n: u64 = self.verdicts.get(&i, 0).ok()?.iter().sum();
                (n > 0).then_some((i, n))
            })
            .collect()
    }

    /// Removes service and policy conntrack entries idle longer than the
    /// timeouts (the kernel side stamps every packet; LRU eviction alone
    /// would keep dead flows until the maps fill).
    pub fn sweep_conntrack(&mut self, timeouts: CtTimeouts) -> CtSweep {
        let now = monotonic_ns();
        let idle = |proto: u8, seen: u64| {
            let limit = if proto == 6 {
                timeouts.tcp
            } else {
                timeouts.other
            };
            now.saturating_sub(seen) > limit.as_nanos() as u64
        };
        let mut sweep = CtSweep::default();
        let stale: Vec<[u8; 16]> = self
            .ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, v)| {
                let seen =
                    u64::from_ne_bytes([v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]]);
                let live = !idle(k[12], seen);
                sweep.live += usize::from(live);
                !live
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            if self.ct.remove(k).is_ok() {
                sweep.expired += 1;
            }
        }
        let stale: Vec<[u8; 16]> = self
            .pct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, seen)| {
                let live = !idle(k[12], *seen);
                sweep.live += usize::from(live);
                !live
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            if self.pct.remove(k).is_ok() {
                sweep.expired += 1;
            }
        }
        sweep
    }

    /// Packet counters summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        COUNTER_NAMES
            .iter()
            .map(|(name, idx)| {
                let sum = self
                    .counters
                    .get(idx, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, sum)
            })
            .collect()
    }
}

/// Removes every pin under `root` (tests and `sextantctl lab` cleanup).
pub fn remove_pins(root: &Path) -> Result<()> {
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", root.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_keys_decode_to_what_was_encoded() {
        for fe in [
            Frontend {
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 443,
                proto: Proto::Tcp,
            },
            Frontend {
                vip: Ipv4Addr::new(10, 96, 255, 1),
                port: 53,
                proto: Proto::Udp,
            },
        ] {
            assert_eq!(frontend_of_key(&frontend_key(&fe)), Some(fe));
        }
        assert_eq!(frontend_of_key(&[10, 0, 0, 1, 0, 80, 1, 0]), None);
    }
}
