// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/* Sextant pod datapath. `from_pod` sits on tc ingress of each pod's host-side
 * veth, so it sees every packet a pod sends: it translates ClusterIP traffic
 * to a backend (per-flow conntrack keeps a connection on one backend),
 * translates replies back, enforces the pod's egress policy and delivers to
 * pods on this node by redirect; anything else goes to the kernel stack.
 * `to_pod` sits on tc egress of the same veth, so it sees every packet a pod
 * receives (redirected or routed) and enforces the pod's ingress policy.
 * Replies of allowed flows pass through the policy conntrack (PCT). */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "datapath.h"

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define L4_OFF (ETH_HLEN + sizeof(struct iphdr))
#define TCP_CSUM_OFF (L4_OFF + 16)
#define UDP_CSUM_OFF (L4_OFF + 6)

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ENDPOINTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} SERVICES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend_key);
	__type(value, struct backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} BACKENDS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} CT SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__type(key, struct policy_key);
	__type(value, struct policy_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} POLICY SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} POLICY_ENFORCED SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 524288);
	__type(key, struct ipcache_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} IPCACHE SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct pct_key);
	__type(value, struct pct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} PCT SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, POLICY_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} POLICY_VERDICTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} DROPS SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&COUNTERS, &idx);
	if (v)
		*v += 1;
}

/* Counts a drop under its reason and says TC_ACT_SHOT. */
static __always_inline int drop(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&DROPS, &reason);
	if (v)
		*v += 1;
	return TC_ACT_SHOT;
}

static __always_inline int l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? TCP_CSUM_OFF : UDP_CSUM_OFF;
}

static __always_inline __u64 l4_flags(__u8 proto, __u64 size)
{
	__u64 f = BPF_F_PSEUDO_HDR | size;
	if (proto == IPPROTO_UDP)
		f |= BPF_F_MARK_MANGLED_0;
	return f;
}

/* Rewrites one address (IP_SRC_OFF or IP_DST_OFF) and the port at L4_OFF +
 * port_off, keeping the IP and L4 checksums right. */
static __always_inline int rewrite(struct __sk_buff *skb, __u8 proto, int addr_off, __u32 old_addr,
				   __u32 new_addr, int port_off, __u16 old_port, __u16 new_port)
{
	int csum = l4_csum_off(proto);

	if (bpf_l4_csum_replace(skb, csum, old_addr, new_addr, l4_flags(proto, sizeof(new_addr))))
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)))
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0))
		return -1;
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum, old_port, new_port, l4_flags(proto, sizeof(new_port)) & ~BPF_F_PSEUDO_HDR))
			return -1;
		if (bpf_skb_store_bytes(skb, L4_OFF + port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	return 0;
}

/* Security identity of an address: longest prefix in IPCACHE, else world. */
static __always_inline __u32 identity_of(__u32 addr)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};
	__u32 *id = bpf_map_lookup_elem(&IPCACHE, &k);

	return id ? *id : IDENTITY_WORLD;
}

static __always_inline struct policy_val *policy_lookup(__u32 local, __u32 remote, __u8 dir,
							  __u8 proto, __u16 port)
{
	struct policy_key k = {.prefixlen = POLICY_FIXED_BITS + 16, .local = local,
			       .remote = remote, .dir = dir, .proto = proto, .port = port};
	struct policy_val *v = bpf_map_lookup_elem(&POLICY, &k);

	if (v)
		return v;
	k.proto = 0;
	k.port = 0;
	v = bpf_map_lookup_elem(&POLICY, &k);
	if (v)
		return v;
	k.remote = 0;
	k.proto = proto;
	k.port = port;
	v = bpf_map_lookup_elem(&POLICY, &k);
	if (v)
		return v;
	k.proto = 0;
	k.port = 0;
	return bpf_map_lookup_elem(&POLICY, &k);
}

/* dir 0: a packet to local pod `local` from `remote`; dir 1: from it to
 * `remote`. Pods no policy selects in that direction pass; selected ones
 * need an allow entry (default deny). This node (HOST, its own addresses
 * only) always reaches its pods (kubelet probes); other nodes are
 * REMOTE_NODE and need an entry like any peer. */
static __always_inline int policy_allows(__u32 local, __u32 remote, __u8 dir, __u8 proto,
					 __u16 dport)
{
	__u32 *enf = bpf_map_lookup_elem(&POLICY_ENFORCED, &local);
	struct policy_val *v;
	__u32 slot;
	__u64 *c;

	if (!enf || !(*enf & (dir ? ENFORCE_EGRESS : ENFORCE_INGRESS)))
		return 1;
	if (dir == 0 && remote == IDENTITY_HOST)
		return 1;
	v = policy_lookup(local, remote, dir, proto, dport);
	if (!v) {
		count(dir ? CNT_POLICY_DENY_EGRESS : CNT_POLICY_DENY_INGRESS);
		return 0;
	}
	slot = v->policy;
	c = bpf_map_lookup_elem(&POLICY_VERDICTS, &slot);
	if (c)
		*c += 1;
	count(CNT_POLICY_ALLOW);
	return 1;
}

/* Whether this packet answers a flow the policy conntrack has seen. */
static __always_inline int pct_reply(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport,
				     __u8 proto)
{
	struct pct_key rk = {.saddr = daddr, .daddr = saddr, .sport = dport, .dport = sport,
			     .proto = proto};
	struct pct_val *v = bpf_map_lookup_elem(&PCT, &rk);

	if (!v)
		return 0;
	v->seen = bpf_ktime_get_ns();
	count(CNT_POLICY_REPLY);
	return 1;
}

static __always_inline void pct_track(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport,
				      __u8 proto)
{
	struct pct_key k = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport,
			    .proto = proto};
	struct pct_val *v = bpf_map_lookup_elem(&PCT, &k);
	struct pct_val n = {.seen = bpf_ktime_get_ns()};

	if (v)
		v->seen = n.seen;
	else
		bpf_map_update_elem(&PCT, &k, &n, BPF_ANY);
}

struct flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 l4;
};

/* Parses an IPv4 packet; returns 0 for anything else. Ports only for
 * unfragmented TCP/UDP without IP options. */
static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return 0;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->sport = 0;
	f->dport = 0;
	f->l4 = 0;
	if ((f->proto == IPPROTO_TCP || f->proto == IPPROTO_UDP) && ip->ihl == 5 &&
	    !(ip->frag_off & bpf_htons(0x3fff))) {
		__u16 *ports = (void *)(ip + 1);
		if ((void *)(ports + 2) > data_end)
			return 0;
		f->sport = ports[0];
		f->dport = ports[1];
		f->l4 = 1;
	}
	return 1;
}

static __always_inline int try_from_pod(struct __sk_buff *skb)
{
	struct flow f;
	struct endpoint *src;
	__u32 local_identity;
	__u32 saddr, daddr, vip = 0;
	__u16 sport, dport, vport = 0;
	__u8 proto;
	int reply, l4;
	__u64 now;

	if (!parse(skb, &f)) {
		void *data = (void *)(long)skb->data;
		void *data_end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;

		/* A pod speaks ARP and IPv4, nothing else. */
		if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_ARP))
			return TC_ACT_OK;
		/* IPv6, other ethertypes, truncated IPv4 headers. */
		return drop(DROP_UNSUPPORTED_L3);
	}
	/* Anti-spoofing: the source must be the endpoint behind this veth. */
	src = bpf_map_lookup_elem(&ENDPOINTS, &f.saddr);
	if (!src || src->ifindex != skb->ifindex)
		return drop(DROP_SPOOFED_SOURCE);
	local_identity = src->identity;
	saddr = f.saddr;
	daddr = f.daddr;
	sport = f.sport;
	dport = f.dport;
	proto = f.proto;
	l4 = f.l4;
	/* Judged on the packet as the pod sent it, before any translation. */
	reply = pct_reply(saddr, daddr, sport, dport, proto);

	if (l4) {
		struct ct_key rk = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport,
				    .proto = proto, .dir = 1};
		struct ct_val *rv = bpf_map_lookup_elem(&CT, &rk);

		now = bpf_ktime_get_ns();
		if (rv) {
			/* A backend answering a translated flow: restore the VIP. */
			rv->seen = now;
			if (rewrite(skb, proto, IP_SRC_OFF, saddr, rv->addr, 0, sport, rv->port))
				return drop(DROP_NAT_FAILED);
			count(CNT_REVNAT);
		} else {
			struct svc_key sk = {.vip = daddr, .port = dport, .proto = proto};
			struct svc_val *sv = bpf_map_lookup_elem(&SERVICES, &sk);

			if (sv) {
				struct ct_key fk = {.saddr = saddr, .daddr = daddr, .sport = sport,
						    .dport = dport, .proto = proto, .dir = 0};
				struct ct_val *fv = bpf_map_lookup_elem(&CT, &fk);
				struct ct_val be;

				if (fv) {
					fv->seen = now;
					be = *fv;
				} else {
					struct backend_key bk;
					struct backend *b;
					struct ct_key back;
					struct ct_val vipv = {.addr = daddr, .port = dport, .seen = now};

					if (sv->count == 0) {
						count(CNT_DROP_NO_BACKEND);
						return drop(DROP_NO_BACKEND);
					}
					bk.svc_id = sv->id;
					bk.slot = bpf_get_prandom_u32() % sv->count;
					b = bpf_map_lookup_elem(&BACKENDS, &bk);
					if (!b) {
						count(CNT_DROP_NO_BACKEND);
						return drop(DROP_NO_BACKEND);
					}
					be.addr = b->ip;
					be.port = b->port;
					be.pad = 0;
					be.seen = now;
					back.saddr = be.addr;
					back.daddr = saddr;
					back.sport = be.port;
					back.dport = sport;
					back.proto = proto;
					back.dir = 1;
					back.pad = 0;
					bpf_map_update_elem(&CT, &back, &vipv, BPF_ANY);
					bpf_map_update_elem(&CT, &fk, &be, BPF_ANY);
					count(CNT_CT_NEW);
				}
				if (rewrite(skb, proto, IP_DST_OFF, daddr, be.addr, 2, dport, be.port))
					return drop(DROP_NAT_FAILED);
				vip = daddr;
				vport = dport;
				daddr = be.addr;
				dport = be.port;
				count(CNT_DNAT);
			}
		}
	}

	if (!reply) {
		/* The pod's egress policy, on the translated destination. */
		if (!policy_allows(local_identity, identity_of(daddr), 1, proto, dport))
			return drop(DROP_POLICY_EGRESS);
		pct_track(saddr, daddr, sport, dport, proto);
		/* Replies come back translated to the VIP: track that view too. */
		if (vip)
			pct_track(saddr, vip, sport, vport, proto);
	}

	struct endpoint *ep = bpf_map_lookup_elem(&ENDPOINTS, &daddr);
	if (!ep) {
		count(CNT_PASS);
		return TC_ACT_OK;
	}
	/* Same-node delivery: straight into the destination pod's veth. */
	if (bpf_skb_store_bytes(skb, 0, ep->mac, 6, 0) ||
	    bpf_skb_store_bytes(skb, 6, ep->host_mac, 6, 0))
		return drop(DROP_REDIRECT_FAILED);
	count(CNT_FORWARD);
	return bpf_redirect(ep->ifindex, 0);
}

/* Every packet on its way into a pod: the pod's ingress policy. */
static __always_inline int try_to_pod(struct __sk_buff *skb)
{
	struct flow f;
	struct endpoint *dst;

	if (!parse(skb, &f))
		return TC_ACT_OK;
	if (pct_reply(f.saddr, f.daddr, f.sport, f.dport, f.proto))
		return TC_ACT_OK;
	dst = bpf_map_lookup_elem(&ENDPOINTS, &f.daddr);
	if (!dst)
		return TC_ACT_OK;
	if (!policy_allows(dst->identity, identity_of(f.saddr), 0, f.proto, f.dport))
		return drop(DROP_POLICY_INGRESS);
	pct_track(f.saddr, f.daddr, f.sport, f.dport, f.proto);
	return TC_ACT_OK;
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	return try_from_pod(skb);
}

SEC("classifier")
int to_pod(struct __sk_buff *skb)
{
	return try_to_pod(skb);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
