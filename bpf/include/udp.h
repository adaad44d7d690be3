/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Address transparency state (docs/udp.md): what a socket asked for and what it was sent to
 * instead, so that the application keeps seeing the address it used.
 *
 *   km_sock_peer  per connected socket (TCP and UDP): VIP -> endpoint, for getpeername() and for
 *                 recvfrom() on a connected UDP socket. Socket storage: freed with the socket.
 *   km_udp_rev    per unconnected UDP socket (cookie): the translations sendmsg made, for recvmsg.
 *                 LRU and emptied by cgroup/sock_release (sock_udp.c).
 *
 * Included by sock_connect.c (connect records km_sock_peer) and sock_udp.c.
 */
#ifndef KMESH_BPF_UDP_H
#define KMESH_BPF_UDP_H

#include <bpf/bpf_endian.h>

#include "maps.h"
#include "backend.h"
#include "endpoint.h"

/*
 * Whether replies are checked against km_member (the service still lists the backend) before they
 * are rewritten. Set by the agent before load: true once its map writer fills km_member (issue 10
 * section 2). Without it a reply is rewritten while the backend still exists as the same workload
 * at the same address, which covers a deleted workload but not one that only left the service.
 */
const volatile bool kmesh_udp_check_member = false;

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct kmesh_sock_peer);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_sock_peer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64); /* socket cookie */
	__type(value, struct kmesh_udp_rev_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_UDP_SOCKETS);
} km_udp_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_UDP_STAT_MAX);
} km_udp_stats SEC(".maps");

static __always_inline void udp_stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&km_udp_stats, &slot);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline bool addr16_eq(const __u8 *a, const __u8 *b)
{
	__u32 x[4], y[4];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/* 16-byte form of an IPv4 address (network order), as every kmesh map stores it. */
static __always_inline void addr16_from_v4(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = ip4;
}

/*
 * Remembers, after a translated connect, what the socket asked for (vip) and where it went
 * (backend), for getpeername() and recvfrom(). A failure to create the storage does not fail the
 * connect: the socket works, getpeername() then shows the endpoint (counted).
 */
static __always_inline void peer_remember(struct bpf_sock_addr *ctx, const __u8 vip[16],
					  __u16 vip_port, const __u32 backend[4],
					  __u16 backend_port)
{
	struct bpf_sock *sk = ctx->sk;
	struct kmesh_sock_peer *st;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&km_sock_peer, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		udp_stat_inc(KMESH_UDP_STAT_PEER_NO_STORAGE);
		return;
	}
	__builtin_memcpy(st->vip_addr, vip, 16);
	__builtin_memcpy(st->backend_addr, backend, 16);
	st->vip_port = vip_port;
	st->backend_port = backend_port;
	st->flags = KMESH_SOCK_PEER_VALID;
}

/* A connect that is not translated (a UDP socket connected again elsewhere) forgets the last one.
 */
static __always_inline void peer_forget(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct kmesh_sock_peer *st;

	if (!sk)
		return;
	st = bpf_sk_storage_get(&km_sock_peer, sk, 0, 0);
	if (st)
		st->flags = 0;
}

/*
 * The VIP the socket was connected through, when `peer` (16 bytes) / `port` is the endpoint it
 * was connected to. Returns true and fills vip / vip_port.
 */
static __always_inline bool peer_vip(struct bpf_sock_addr *ctx, const __u32 peer[4], __u16 port,
				     __u32 vip[4], __u16 *vip_port)
{
	struct bpf_sock *sk = ctx->sk;
	struct kmesh_sock_peer *st;
	struct kmesh_sock_peer p;

	if (!sk)
		return false;
	st = bpf_sk_storage_get(&km_sock_peer, sk, 0, 0);
	if (!st)
		return false;
	__builtin_memcpy(&p, st, sizeof(p));
	if (!(p.flags & KMESH_SOCK_PEER_VALID) || p.backend_port != port ||
	    !addr16_eq(p.backend_addr, (const __u8 *)peer))
		return false;
	__builtin_memcpy(vip, p.vip_addr, 16);
	*vip_port = p.vip_port;
	return true;
}

/*
 * Whether the backend a slot names is still the one picked: the same workload (name hash: backend
 * ids are reused after a deletion) at the same address, and, once the agent writes km_member, still
 * an endpoint of the service. A reply failing this is from a backend that has left: it keeps its
 * own source address rather than being passed off as the VIP.
 */
static __always_inline bool udp_slot_valid(const struct kmesh_udp_rev_slot *s)
{
	const struct kmesh_backend_value *be = backend_lookup(s->backend_id);
	struct kmesh_backend_value b;
	__u32 a[4];

	if (!be)
		return false;
	__builtin_memcpy(&b, be, sizeof(b));
	if (b.name_hash != s->backend_name_hash)
		return false;
	__builtin_memcpy(a, s->backend_addr, 16);
	if (a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff)) {
		if (!(b.flags & KMESH_BACKEND_HAS_V4) || !addr16_eq(b.addr4, s->backend_addr))
			return false;
	} else {
		if (!(b.flags & KMESH_BACKEND_HAS_V6) || !addr16_eq(b.addr6, s->backend_addr))
			return false;
	}
	if (kmesh_udp_check_member && !endpoint_is_member(s->service_id, s->backend_id))
		return false;
	return true;
}

#endif
