//! Paths the kernel, kubelet and other components share with the agent.

/// The agent API socket (docs/agent-api.md).
pub const DEFAULT_SOCKET: &str = sextant_agent_api::SOCKET_PATH;
/// Where the allocation checkpoint lives: on a node, `/var/run` is a tmpfs,
/// so the checkpoint survives agent restarts (what it is for) but not
/// reboots, which no pod netns survives either (aws-node keeps its IPAM
/// checkpoint under `/var/run` for the same reason).
pub const DEFAULT_STATE_DIR: &str = "/var/run/sextant/state";
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
