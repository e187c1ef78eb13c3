//! Loading the datapath: load and pin `datapath.o` (rolled back when it
//! fails half way), re-adopt the pins of an earlier agent, attach the tc
//! filters to host veths, and remove the pins.

use std::{fs, path::Path};

use aya::{
    EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};

use super::Datapath;
use crate::{
    error::{Error, Result},
    paths::{HOST_VETH_PREFIX, LINKS_DIR, PROG_PIN, PROG_TO_POD_PIN},
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
const MAPS: [&str; 11] = [
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
    "DROPS",
];
const PROGRAMS: [(&str, &str); 2] = [("from_pod", PROG_PIN), ("to_pod", PROG_TO_POD_PIN)];

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
        let programs_pinned = PROGRAMS.iter().all(|(_, pin)| root.join(pin).exists());
        let pinned_all = programs_pinned && MAPS.iter().all(|m| root.join(m).exists());
        let version = program_version();
        let adopted = programs_pinned;
        let mut upgraded = false;
        if !programs_pinned {
            if let Err(e) = Self::load_and_pin(root, "") {
                // Roll back a partial load so the next start loads cleanly.
                for (_, pin) in PROGRAMS {
                    let _ = fs::remove_file(root.join(pin));
                }
                for m in MAPS {
                    let _ = fs::remove_file(root.join(m));
                }
                return Err(e);
            }
        } else if !pinned_all || pinned_version(root).as_deref() != Some(version.as_str()) {
            // Pins of another build: load this build's programs beside them
            // (maps are shared by name; new ones are created), then swap the
            // pins. The filters still run the old programs until replaced below.
            match Self::load_and_pin(root, NEW_SUFFIX) {
                Ok(()) => {
                    for (_, pin) in PROGRAMS {
                        fs::rename(root.join(format!("{pin}{NEW_SUFFIX}")), root.join(pin))
                            .map_err(|e| Error::io(format!("replacing the pin {pin}"), e))?;
                    }
                    upgraded = true;
                }
                Err(e) => {
                    // The old programs keep running: better than no datapath.
                    for (_, pin) in PROGRAMS {
                        let _ = fs::remove_file(root.join(format!("{pin}{NEW_SUFFIX}")));
                    }
                    tracing::warn!(error = %sextant_kit::ErrorChain(&e), %version, "loading this build's datapath programs failed; keeping the pinned ones");
                }
            }
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
        let drops = PerCpuArray::try_from(Map::PerCpuArray(pinned("DROPS")?))
            .map_err(|e| Error::bpf("map DROPS", e))?;
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
            drops,
            to_pod,
            next_service_id: 1,
            adopted,
        };
        if upgraded {
            let replaced = dp.replace_filters()?;
            tracing::info!(%version, replaced, "datapath programs upgraded in place");
        }
        if upgraded || !programs_pinned {
            mark_version(root, &version)?;
        }
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

    /// Loads `datapath.o` (maps pinned by name under `root`, existing pins
    /// reused) and pins its programs at their pin paths plus `suffix`.
    fn load_and_pin(root: &Path, suffix: &str) -> Result<()> {
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
            prog.pin(root.join(format!("{pin}{suffix}")))
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

    /// Points the filters on every host veth (`HOST_VETH_PREFIX*`) at this
    /// datapath's programs, in place: the same filter (priority, handle) gets
    /// the new program atomically, so packets never meet a missing filter and
    /// established flows keep their conntrack and policy state (the maps are
    /// the same). Returns the filters replaced.
    pub fn replace_filters(&mut self) -> Result<usize> {
        let mut n = 0;
        for ifname in host_veths()? {
            for (prog, dir) in [
                (&mut self.prog, TcAttachType::Ingress),
                (&mut self.to_pod, TcAttachType::Egress),
            ] {
                let Ok(link) = SchedClassifierLink::attached(
                    &ifname,
                    dir,
                    FILTER_PRIORITY,
                    FILTER_HANDLE,
                    None,
                ) else {
                    continue; // gone meanwhile
                };
                let id = match prog.attach_to_link(link) {
                    Ok(id) => id,
                    // No filter of ours there (or the veth went away): nothing to replace.
                    Err(e)
                        if matches!(
                            raw_os_error(&e),
                            Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        return Err(Error::bpf(
                            format!("replacing the filter on {ifname} {dir:?}"),
                            e,
                        ));
                    }
                };
                let link = prog
                    .take_link(id)
                    .map_err(|e| Error::bpf(format!("taking link of {ifname}"), e))?;
                std::mem::forget(link);
                n += 1;
            }
        }
        Ok(n)
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
}

/// Suffix of the pins of a build's programs while they replace another's.
const NEW_SUFFIX: &str = "_new"; // bpffs names take no dots
/// Prefix of the bpffs directory whose name records the programs' version.
const VERSION_PREFIX: &str = "version-";

/// The version of the embedded datapath object: FNV-1a (64 bits) of its
/// bytes, so two builds with different programs or map layouts differ.
pub fn program_version() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in OBJECT {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The version recorded under `root` (an empty `version-<hash>` directory:
/// bpffs holds no regular files), if any.
pub fn pinned_version(root: &Path) -> Option<String> {
    fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(VERSION_PREFIX)
                .map(str::to_string)
        })
        .next()
}

/// Records `version` under `root`, replacing any other.
fn mark_version(root: &Path, version: &str) -> Result<()> {
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(VERSION_PREFIX) && name != format!("{VERSION_PREFIX}{version}") {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    match fs::create_dir(root.join(format!("{VERSION_PREFIX}{version}"))) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io("recording the datapath version", e)),
    }
}

/// Host-side pod veths in this netns (from `/proc/self/net/dev`).
fn host_veths() -> Result<Vec<String>> {
    let dev =
        fs::read_to_string("/proc/self/net/dev").map_err(|e| Error::io("listing interfaces", e))?;
    Ok(dev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| n.starts_with(HOST_VETH_PREFIX))
        .collect())
}

/// Removes every pin under `root` (tests and `sextantctl lab` cleanup).
pub fn remove_pins(root: &Path) -> Result<()> {
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", root.display()), e)),
    }
}
