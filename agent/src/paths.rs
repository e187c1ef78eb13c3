//! Paths the kernel, kubelet and other components share with the agent.

/// The agent API socket (docs/agent-api.md).
pub const DEFAULT_SOCKET: &str = sextant_agent_api::SOCKET_PATH;
/// Where the allocation checkpoint lives: on disk (the chart mounts it from
/// the host), so its fsync means something and it outlives a reboot; after
/// one, every entry's netns is gone and the restore puts the addresses into
/// cooldown instead of forgetting them.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/sextant";
/// Where agents before 0.2 kept the checkpoint (a tmpfs on nodes); a
/// checkpoint found there and not in the state dir is moved over at start.
pub const LEGACY_STATE_DIR: &str = "/var/run/sextant/state";
/// File name of the allocation checkpoint inside the state dir.
pub const CHECKPOINT_FILE: &str = "ipam-checkpoint.json";
/// bpffs directory holding the datapath's pinned maps, program and links.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/sextant";
/// Pinned program on each host veth's tc ingress (what pods send), under the bpffs root.
pub const PROG_PIN: &str = "prog_from_pod";
/// Pinned program on each host veth's tc egress (what pods receive).
pub const PROG_TO_POD_PIN: &str = "prog_to_pod";
/// Directory of per-interface link pins of older agents (tcx), under the bpffs root.
pub const LINKS_DIR: &str = "links";
/// Link-local gateway every pod routes through; the host veth answers for it
/// by a permanent neighbour entry in the pod.
pub const POD_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);
/// Prefix of host-side veth names (`sx` + 11 hex chars of the container id hash).
pub const HOST_VETH_PREFIX: &str = "sx";
