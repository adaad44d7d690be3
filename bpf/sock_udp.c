// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * UDP service translation and address transparency (issue 10 section 1; docs/udp.md).
 *
 *   cgroup/sendmsg4|6       an unconnected datagram to a service VIP:port goes to an endpoint
 *                           (the same frontend -> service -> endpoint pick as connect), and the
 *                           socket's reverse entry (km_udp_rev, by socket cookie) remembers it.
 *   cgroup/recvmsg4|6       a datagram's source that is such an endpoint is shown as the VIP:port
 *                           the application sent to (connected sockets: km_sock_peer).
 *   cgroup/getpeername4|6   a socket connected through a VIP (TCP or UDP) reports the VIP.
 *   cgroup/sock_release     a closing UDP socket's reverse entry goes with it.
 *
 * Connected UDP sockets are translated by cgroup/connect4|6 (sock_connect.c), included before this
 * file. Like there, each hook is a thin entry around a worker returning 0 or -errno; the v4 and v6
 * workers run in parallel on 16-byte (IPv4-mapped) addresses.
 *
 * A dual-stack IPv6 socket sending to ::ffff:a.b.c.d is handled by udp_sendmsg(), so the kernel
 * runs sendmsg4 for it with the IPv4 address; sendmsg6 still treats a mapped address as IPv4 in
 * case it sees one. Its replies come through recvmsg6 as ::ffff:a.b.c.d: the reverse entries keep
 * every address in the 16-byte form, so either hook finds them.
 */
#include "include/udp.h"

/* recvmsg and getpeername programs must return 1: they can only rewrite the address. */
#define SYS_ACCEPT 1

/*
 * The socket's reverse entry holds one slot per (VIP, port) it sends to. Returns the index of
 * key's slot, or -1.
 */
static __always_inline int udp_rev_find_vip(const struct kmesh_udp_rev_value *v,
					    const struct kmesh_frontend_key *key)
{
#pragma unroll
	for (int i = 0; i < KMESH_UDP_REV_SLOTS; i++) {
		if ((__u32)i >= v->used)
			break;
		if (v->slot[i].vip_port == key->port && addr16_eq(v->slot[i].vip_addr, key->addr))
			return i;
	}
	return -1;
}

/*
 * The socket's backend for this VIP, when it still serves it: the same workload at the same
 * address and target port, and the service still has endpoints of this family (scaled to zero:
 * refused by the fresh pick instead). Keeping it makes a socket's datagrams to one service go to
 * one backend, as a connected socket's do, and bounds the reverse entry by services, not backends.
 */
static __always_inline bool udp_keep_slot(const struct kmesh_udp_rev_slot *s,
					  const struct kmesh_frontend_key *key,
					  const struct kmesh_frontend_value *fe, __u32 family)
{
	const struct kmesh_service_value *svc_ptr;
	struct kmesh_service_value svc;
	__u32 count = 0;

	if (s->service_id != fe->service_id || !udp_slot_valid(s))
		return false;
	if (backend_target_port(s->backend_id, key, fe) != s->backend_port)
		return false;
	svc_ptr = service_lookup(fe->service_id);
	if (!svc_ptr)
		return false;
	__builtin_memcpy(&svc, svc_ptr, sizeof(svc));
	return service_pick_prio(&svc, family, &count) >= 0;
}

struct udp_pick {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 backend_id;
};

/*
 * The endpoint pick, as a BPF subprogram with its own stack frame: inlined next to the socket's
 * reverse entry (a 264-byte copy) and session affinity, sendmsg's single frame would pass the
 * 512-byte stack limit. Five arguments at most: the results come back in *out.
 */
static __noinline int udp_select(struct bpf_sock_addr *ctx, const struct kmesh_frontend_key *key,
				 __u32 family, struct udp_pick *out)
{
	return sock_select_endpoint(ctx, key, family, out->addr, &out->port, &out->backend_id);
}

/*
 * Stores the translation key -> pick in the socket's reverse entry: in key's own slot, else the
 * first free one, else the oldest. The entry is copied to the stack (an LRU element may be evicted
 * and reused for another socket while we hold it) and written back whole with one update, so a
 * concurrent recvmsg sees the old or the new one. A subprogram: the 264-byte copy gets a frame of
 * its own instead of adding to sendmsg's (the verifier limits the frames of a call chain to 512).
 */
static __noinline void udp_rev_store(__u64 cookie, const struct kmesh_frontend_key *key,
				     __u32 service_id, const struct udp_pick *pick)
{
	const struct kmesh_backend_value *be = backend_lookup(pick->backend_id);
	const struct kmesh_udp_rev_value *rv;
	struct kmesh_udp_rev_value v;
	struct kmesh_udp_rev_slot *s;
	__u64 name_hash;
	int idx;

	if (!be) /* removed since the pick: the reply will not be translated anyway */
		return;
	name_hash = be->name_hash;
	rv = bpf_map_lookup_elem(&km_udp_rev, &cookie);
	if (rv)
		__builtin_memcpy(&v, rv, sizeof(v));
	else
		__builtin_memset(&v, 0, sizeof(v));
	if (v.used > KMESH_UDP_REV_SLOTS)
		v.used = KMESH_UDP_REV_SLOTS;
	idx = udp_rev_find_vip(&v, key);
	if (idx < 0) {
		if (v.used < KMESH_UDP_REV_SLOTS) {
			idx = v.used;
			v.used = idx + 1;
		} else {
			idx = v.next % KMESH_UDP_REV_SLOTS;
			v.next = idx + 1;
			udp_stat_inc(KMESH_UDP_STAT_SLOT_EVICTED);
		}
	}
	if (idx < 0 || idx >= KMESH_UDP_REV_SLOTS)
		return;
	s = &v.slot[idx];
	__builtin_memcpy(s->backend_addr, pick->addr, 16);
	__builtin_memcpy(s->vip_addr, key->addr, 16);
	s->backend_name_hash = name_hash;
	s->service_id = service_id;
	s->backend_id = pick->backend_id;
	s->backend_port = pick->port;
	s->vip_port = key->port;
	s->pad = 0;
	if (bpf_map_update_elem(&km_udp_rev, &cookie, &v, BPF_ANY))
		udp_stat_inc(KMESH_UDP_STAT_REV_FAILED);
}

/*
 * The socket's kept backend for key, if udp_keep_slot() says it still serves: fills *out. Reads
 * only the matching slot (a 64-byte copy, validated as a whole) in its own frame.
 */
static __noinline bool udp_rev_kept(__u64 cookie, const struct kmesh_frontend_key *key,
				    const struct kmesh_frontend_value *fe, __u32 family,
				    struct udp_pick *out)
{
	const struct kmesh_udp_rev_value *rv = bpf_map_lookup_elem(&km_udp_rev, &cookie);
	struct kmesh_udp_rev_slot s;
	__u32 used;

	if (!rv)
		return false;
	used = rv->used;
	for (int i = 0; i < KMESH_UDP_REV_SLOTS; i++) {
		if ((__u32)i >= used)
			break;
		__builtin_memcpy(&s, &rv->slot[i], sizeof(s));
		if (s.vip_port != key->port || !addr16_eq(s.vip_addr, key->addr))
			continue;
		if (!udp_keep_slot(&s, key, fe, family))
			return false;
		__builtin_memcpy(out->addr, s.backend_addr, 16);
		out->port = s.backend_port;
		out->backend_id = s.backend_id;
		return true;
	}
	return false;
}

/*
 * An unconnected datagram to key (VIP:port, 16-byte form). On 0, addr/port hold the endpoint.
 * -ENOENT: not a service, left alone. Other -errno: the send fails.
 */
static __always_inline int udp_sendmsg_xlate(struct bpf_sock_addr *ctx,
					     const struct kmesh_frontend_key *key, __u32 family,
					     __u32 addr[4], __u16 *port)
{
	const struct kmesh_frontend_value *fe_ptr = frontend_lookup(key);
	struct kmesh_frontend_value fe;
	struct udp_pick pick = {};
	__u64 cookie;
	int ret;

	if (!fe_ptr)
		return -ENOENT; /* not a service: no socket state is read or made */
	fe = *fe_ptr;
	cookie = bpf_get_socket_cookie(ctx);
	if (udp_rev_kept(cookie, key, &fe, family, &pick)) {
		__builtin_memcpy(addr, pick.addr, 16);
		*port = pick.port;
		udp_stat_inc(KMESH_UDP_STAT_SEND_KEPT);
		return 0;
	}
	ret = udp_select(ctx, key, family, &pick);
	if (ret) {
		if (ret != -ENOENT)
			udp_stat_inc(KMESH_UDP_STAT_SEND_REFUSED);
		return ret;
	}
	__builtin_memcpy(addr, pick.addr, 16);
	*port = pick.port;
	udp_stat_inc(KMESH_UDP_STAT_SEND_PICKED);
	udp_rev_store(cookie, key, fe.service_id, &pick);
	return 0;
}

static __always_inline int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	struct kmesh_frontend_key key = {};
	__u32 addr[4], dst = ctx->user_ip4;
	__u16 port;
	int ret;

	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	__builtin_memcpy(&key.addr[12], &dst, sizeof(dst));
	key.port = (__u16)ctx->user_port;
	ret = udp_sendmsg_xlate(ctx, &key, KMESH_FAMILY_V4, addr, &port);
	if (ret)
		return ret;
	ctx->user_ip4 = addr[3];
	ctx->user_port = port;
	return 0;
}

static __always_inline int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	struct kmesh_frontend_key key = {};
	__u32 dst[4], addr[4];
	__u16 port;
	int ret;

	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	__builtin_memcpy(key.addr, dst, 16);
	key.port = (__u16)ctx->user_port;
	ret = udp_sendmsg_xlate(
	    ctx, &key, addr6_is_v4mapped(dst) ? KMESH_FAMILY_V4 : KMESH_FAMILY_V6, addr, &port);
	if (ret)
		return ret;
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
	ctx->user_port = port;
	return 0;
}

/*
 * The VIP:port a datagram from src (16-byte form) / src_port should be shown as coming from.
 * A connected socket: the VIP it was connected through, while src is its endpoint (the kernel
 * delivers nothing else to it). An unconnected one: the slot whose backend sent it, if that backend
 * still serves the service; a reply from one that left keeps its own address (counted).
 */
static __always_inline int udp_recvmsg_xlate(struct bpf_sock_addr *ctx, const __u32 src[4],
					     __u16 src_port, __u32 vip[4], __u16 *vip_port)
{
	const struct kmesh_udp_rev_value *rv;
	__u64 cookie;

	if (peer_vip(ctx, src, src_port, vip, vip_port))
		return 0;
	cookie = bpf_get_socket_cookie(ctx);
	rv = bpf_map_lookup_elem(&km_udp_rev, &cookie);
	if (!rv)
		return -ENOENT;
#pragma unroll
	for (int i = 0; i < KMESH_UDP_REV_SLOTS; i++) {
		struct kmesh_udp_rev_slot s;

		if ((__u32)i >= rv->used)
			break;
		__builtin_memcpy(&s, &rv->slot[i], sizeof(s));
		if (s.backend_port != src_port || !addr16_eq(s.backend_addr, (const __u8 *)src))
			continue;
		if (!udp_slot_valid(&s)) {
			udp_stat_inc(KMESH_UDP_STAT_RECV_STALE);
			return -ENOENT;
		}
		__builtin_memcpy(vip, s.vip_addr, 16);
		*vip_port = s.vip_port;
		udp_stat_inc(KMESH_UDP_STAT_RECV_XLATED);
		return 0;
	}
	return -ENOENT;
}

static __always_inline int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	__u32 src[4], vip[4];
	__u16 vip_port;
	int ret;

	addr16_from_v4(src, ctx->user_ip4);
	ret = udp_recvmsg_xlate(ctx, src, (__u16)ctx->user_port, vip, &vip_port);
	if (ret)
		return ret;
	ctx->user_ip4 = vip[3];
	ctx->user_port = vip_port;
	return 0;
}

static __always_inline int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	__u32 src[4], vip[4];
	__u16 vip_port;
	int ret;

	src[0] = ctx->user_ip6[0];
	src[1] = ctx->user_ip6[1];
	src[2] = ctx->user_ip6[2];
	src[3] = ctx->user_ip6[3];
	ret = udp_recvmsg_xlate(ctx, src, (__u16)ctx->user_port, vip, &vip_port);
	if (ret)
		return ret;
	ctx->user_ip6[0] = vip[0];
	ctx->user_ip6[1] = vip[1];
	ctx->user_ip6[2] = vip[2];
	ctx->user_ip6[3] = vip[3];
	ctx->user_port = vip_port;
	return 0;
}

/* getpeername() of a socket connected through a VIP: the VIP, while it is still connected to the
 * endpoint connect() picked. */
static __always_inline int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	__u32 peer[4], vip[4];
	__u16 vip_port;

	addr16_from_v4(peer, ctx->user_ip4);
	if (!peer_vip(ctx, peer, (__u16)ctx->user_port, vip, &vip_port))
		return -ENOENT;
	ctx->user_ip4 = vip[3];
	ctx->user_port = vip_port;
	udp_stat_inc(KMESH_UDP_STAT_PEER_XLATED);
	return 0;
}

static __always_inline int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	__u32 peer[4], vip[4];
	__u16 vip_port;

	peer[0] = ctx->user_ip6[0];
	peer[1] = ctx->user_ip6[1];
	peer[2] = ctx->user_ip6[2];
	peer[3] = ctx->user_ip6[3];
	if (!peer_vip(ctx, peer, (__u16)ctx->user_port, vip, &vip_port))
		return -ENOENT;
	ctx->user_ip6[0] = vip[0];
	ctx->user_ip6[1] = vip[1];
	ctx->user_ip6[2] = vip[2];
	ctx->user_ip6[3] = vip[3];
	ctx->user_port = vip_port;
	udp_stat_inc(KMESH_UDP_STAT_PEER_XLATED);
	return 0;
}

SEC("cgroup/sendmsg4")
int cgroup_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock4_sendmsg(ctx));
}

SEC("cgroup/sendmsg6")
int cgroup_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock6_sendmsg(ctx));
}

SEC("cgroup/recvmsg4")
int cgroup_recvmsg4(struct bpf_sock_addr *ctx)
{
	sock4_recvmsg(ctx);
	return SYS_ACCEPT;
}

SEC("cgroup/recvmsg6")
int cgroup_recvmsg6(struct bpf_sock_addr *ctx)
{
	sock6_recvmsg(ctx);
	return SYS_ACCEPT;
}

SEC("cgroup/getpeername4")
int cgroup_getpeername4(struct bpf_sock_addr *ctx)
{
	sock4_getpeername(ctx);
	return SYS_ACCEPT;
}

SEC("cgroup/getpeername6")
int cgroup_getpeername6(struct bpf_sock_addr *ctx)
{
	sock6_getpeername(ctx);
	return SYS_ACCEPT;
}

/*
 * The socket is going: its reverse entry goes with it, so closed sockets leave nothing behind
 * (the LRU bound is only the backstop). Only UDP sockets ever have one.
 */
SEC("cgroup/sock_release")
int cgroup_sock_release(struct bpf_sock *sk)
{
	__u64 cookie;

	if (sk->type == SOCK_STREAM) {
		cb_release(sk); /* circuit breaking: close() gives the connection's slot back */
		return SYS_ACCEPT;
	}
	if (sk->type != SOCK_DGRAM)
		return SYS_ACCEPT;
	cookie = bpf_get_socket_cookie(sk);
	if (bpf_map_delete_elem(&km_udp_rev, &cookie) == 0)
		udp_stat_inc(KMESH_UDP_STAT_RELEASED);
	return SYS_ACCEPT;
}
