/* Map layouts shared by the BPF programs and the agent (agent/src/datapath.rs
 * encodes the same byte layouts; all addresses and ports in network order). */
#ifndef SEXTANT_DATAPATH_H
#define SEXTANT_DATAPATH_H

#include <linux/types.h>

/* ENDPOINTS: pod IPv4 -> where to deliver it on this node. */
struct endpoint {
	__u32 ifindex;     /* host-side veth of the pod */
	__u32 identity;    /* security identity (policy, later) */
	__u8 mac[6];       /* pod's eth0 MAC */
	__u8 host_mac[6];  /* host-side veth MAC, used as the source MAC */
};

/* SERVICES: ClusterIP VIP:port/proto -> backend set. */
struct svc_key {
	__u32 vip;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_val {
	__u32 id;     /* backend set id, first half of BACKENDS keys */
	__u32 count;  /* backends in slots 0..count-1 */
};

struct backend_key {
	__u32 svc_id;
	__u32 slot;
};

struct backend {
	__u32 ip;
	__u16 port;
	__u16 pad;
};

/* CT: per-flow conntrack. dir 0: client -> VIP flow, value = chosen backend.
 * dir 1: backend -> client reply flow, value = VIP to restore. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

struct ct_val {
	__u32 addr;
	__u16 port;
	__u16 pad;
	__u64 seen;   /* bpf_ktime_get_ns() of the last packet; the agent's GC ages entries */
};

/* POLICY: LPM trie of allow entries. The first 80 bits of data (local and
 * remote identity, direction, protocol) must match exactly; the port is
 * matched as a prefix of its 16 bits (big-endian), so one entry covers a
 * port range block. remote 0 = any peer; proto 0 = any protocol (port
 * prefix 0). */
struct policy_key {
	__u32 prefixlen;  /* 80 + port prefix bits */
	__u32 local;      /* identity of the local pod the policy selects */
	__u32 remote;     /* identity of the peer */
	__u8 dir;         /* 0 ingress (to the pod), 1 egress (from the pod) */
	__u8 proto;
	__u16 port;       /* network order */
};

#define POLICY_FIXED_BITS 80

struct policy_val {
	__u32 policy;     /* index into POLICY_VERDICTS */
	__u32 pad;
};

/* POLICY_ENFORCED: local identity -> ENFORCE_* bits (default deny). */
#define ENFORCE_INGRESS 1
#define ENFORCE_EGRESS 2

/* IPCACHE: LPM trie IPv4 prefix -> security identity of the address. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 addr;       /* network order */
};

/* PCT: policy conntrack, keyed by a flow's first-packet direction. A packet
 * whose reversed tuple is present is a reply of an allowed flow. */
struct pct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct pct_val {
	__u64 seen;
};

/* Reserved identities, numbered as Cilium's. HOST is this node only; other
 * nodes' addresses are REMOTE_NODE and go through policy like any peer. */
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_REMOTE_NODE 6
#define POLICY_SLOTS 16384

/* COUNTERS (per-CPU array) indices. */
enum counter {
	CNT_FORWARD = 0,   /* redirected to a local endpoint */
	CNT_PASS = 1,      /* handed to the kernel stack */
	CNT_DROP_NO_BACKEND = 2,
	CNT_DNAT = 3,      /* service packets translated to a backend */
	CNT_REVNAT = 4,    /* replies translated back to the VIP */
	CNT_CT_NEW = 5,    /* new service flows */
	CNT_POLICY_DENY_INGRESS = 6,
	CNT_POLICY_DENY_EGRESS = 7,
	CNT_POLICY_ALLOW = 8,  /* new or established packets an allow entry matched */
	CNT_POLICY_REPLY = 9,  /* replies of allowed flows passed by conntrack */
	CNT_MAX = 12,
};

/* DROPS (per-CPU array) indices: why a packet was dropped, one slot per
 * reason, so metrics and flows can name it. Mirrored by DropReason in
 * agent/src/datapath/maps.rs; numbers are stable, new reasons go at the end. */
enum drop_reason {
	DROP_POLICY_INGRESS = 1,    /* no allow entry for a new flow into a pod */
	DROP_POLICY_EGRESS = 2,     /* no allow entry for a new flow from a pod */
	DROP_NO_BACKEND = 3,        /* service without (reachable) backends */
	DROP_SPOOFED_SOURCE = 4,    /* IPv4 source is not the endpoint on that veth */
	DROP_UNSUPPORTED_L3 = 5,    /* neither ARP nor IPv4 from a pod */
	DROP_NAT_FAILED = 6,        /* rewriting a translated packet failed */
	DROP_REDIRECT_FAILED = 7,   /* rewriting the MACs for a local delivery failed */
	DROP_MAX = 16,
};

#endif
