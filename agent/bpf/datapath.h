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
};

/* COUNTERS (per-CPU array) indices. */
enum counter {
	CNT_FORWARD = 0,   /* redirected to a local endpoint */
	CNT_PASS = 1,      /* handed to the kernel stack */
	CNT_DROP_NO_BACKEND = 2,
	CNT_DNAT = 3,      /* service packets translated to a backend */
	CNT_REVNAT = 4,    /* replies translated back to the VIP */
	CNT_CT_NEW = 5,    /* new service flows */
	CNT_MAX = 8,
};

#endif
