// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/* Sextant pod datapath: attached on tc ingress of each pod's host-side veth,
 * so it sees every packet a pod sends. It translates ClusterIP traffic to a
 * backend (per-flow conntrack keeps a connection on one backend), translates
 * replies back, and delivers to pods on this node by redirect. Anything else
 * goes to the kernel stack. */

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

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&COUNTERS, &idx);
	if (v)
		*v += 1;
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

static __always_inline int try_from_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 saddr, daddr;
	__u16 sport = 0, dport = 0;
	__u8 proto;
	int l4 = 0;

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	saddr = ip->saddr;
	daddr = ip->daddr;
	proto = ip->protocol;

	/* Ports only for unfragmented TCP/UDP without IP options. */
	if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) && ip->ihl == 5 &&
	    !(ip->frag_off & bpf_htons(0x3fff))) {
		__u16 *ports = (void *)(ip + 1);
		if ((void *)(ports + 2) > data_end)
			return TC_ACT_OK;
		sport = ports[0];
		dport = ports[1];
		l4 = 1;
	}

	if (l4) {
		struct ct_key rk = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport,
				    .proto = proto, .dir = 1};
		struct ct_val *rv = bpf_map_lookup_elem(&CT, &rk);

		if (rv) {
			/* A backend answering a translated flow: restore the VIP. */
			if (rewrite(skb, proto, IP_SRC_OFF, saddr, rv->addr, 0, sport, rv->port))
				return TC_ACT_SHOT;
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
					be = *fv;
				} else {
					struct backend_key bk;
					struct backend *b;
					struct ct_key back;
					struct ct_val vip = {.addr = daddr, .port = dport};

					if (sv->count == 0) {
						count(CNT_DROP_NO_BACKEND);
						return TC_ACT_SHOT;
					}
					bk.svc_id = sv->id;
					bk.slot = bpf_get_prandom_u32() % sv->count;
					b = bpf_map_lookup_elem(&BACKENDS, &bk);
					if (!b) {
						count(CNT_DROP_NO_BACKEND);
						return TC_ACT_SHOT;
					}
					be.addr = b->ip;
					be.port = b->port;
					be.pad = 0;
					back.saddr = be.addr;
					back.daddr = saddr;
					back.sport = be.port;
					back.dport = sport;
					back.proto = proto;
					back.dir = 1;
					back.pad = 0;
					bpf_map_update_elem(&CT, &back, &vip, BPF_ANY);
					bpf_map_update_elem(&CT, &fk, &be, BPF_ANY);
					count(CNT_CT_NEW);
				}
				if (rewrite(skb, proto, IP_DST_OFF, daddr, be.addr, 2, dport, be.port))
					return TC_ACT_SHOT;
				daddr = be.addr;
				count(CNT_DNAT);
			}
		}
	}

	struct endpoint *ep = bpf_map_lookup_elem(&ENDPOINTS, &daddr);
	if (!ep) {
		count(CNT_PASS);
		return TC_ACT_OK;
	}
	/* Same-node delivery: straight into the destination pod's veth. */
	if (bpf_skb_store_bytes(skb, 0, ep->mac, 6, 0) ||
	    bpf_skb_store_bytes(skb, 6, ep->host_mac, 6, 0))
		return TC_ACT_SHOT;
	count(CNT_FORWARD);
	return bpf_redirect(ep->ifindex, 0);
}

SEC("classifier")
int from_pod(struct __sk_buff *skb)
{
	return try_from_pod(skb);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
