/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Waypoint redirect at connect() time (docs/waypoint.md): destination address -> waypoint, and the
 * per-socket original destination that sk_msg_tlv later sends as Kmesh's TLV.
 */
#ifndef KMESH_BPF_WAYPOINT_H
#define KMESH_BPF_WAYPOINT_H

#include "maps.h"
#include "backend.h"
#include "endpoint.h"
#include "frontend.h"
#include "service.h"

#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EHOSTUNREACH
#define EHOSTUNREACH 113
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_wp_dest_key);
	__type(value, struct kmesh_wp_dest_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_WAYPOINT_ADDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_wp_dest SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct kmesh_waypoint_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_WAYPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_waypoint SEC(".maps");

/* Freed with the socket: nothing to garbage-collect. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct kmesh_wp_sock);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_wp_sk SEC(".maps");

/* Sockets leave it when they close. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, __u64); /* socket cookie */
	__type(value, __u64);
	__uint(max_entries, KMESH_DEFAULT_MAX_WAYPOINT_SOCKETS);
} km_wp_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_WP_STAT_MAX);
} km_wp_stats SEC(".maps");

static __always_inline void wp_stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&km_wp_stats, &slot);

	if (v)
		*v += 1;
}

static __always_inline bool wp_addr_eq(const __u32 x[4], const __u32 y[4])
{
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef EINVAL
#define EINVAL 22
#endif

/*
 * Does the caller's network namespace own addr (the waypoint's address)? A listener on the waypoint
 * port proves nothing by itself: any pod can listen on a wildcard :15019. An address is another
 * matter: a pod cannot take another pod's IP without privileges that would let it do anything
 * else too. bpf_bind() to the address is the kernel's own answer: it fails (EADDRNOTAVAIL) unless
 * the address is local to this namespace, and binds no port (BIND_FORCE_ADDRESS_NO_PORT), so the
 * waypoint's socket only gets the source address the kernel would have picked for it anyway. A
 * socket the application bound itself (EINVAL) is judged by the address it is bound to.
 */
static __always_inline bool wp_caller_owns(struct bpf_sock_addr *ctx, const __u32 addr[4], bool v4)
{
	struct bpf_sock *sk = ctx->sk;
	int err;

	if (ctx->user_family == AF_INET) {
		struct sockaddr_in sa = {};

		sa.sin_family = AF_INET;
		sa.sin_addr.s_addr = addr[3];
		err = bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
		if (err == -EINVAL && sk)
			return sk->src_ip4 == addr[3];
		return err == 0;
	} else {
		struct sockaddr_in6 sa6 = {};

		/* IPv4 on a dual-stack socket: the mapped form, as the socket sees it. */
		sa6.sin6_family = AF_INET6;
		__builtin_memcpy(&sa6.sin6_addr, addr, 16);
		err = bpf_bind(ctx, (struct sockaddr *)&sa6, sizeof(sa6));
		if (err == -EINVAL && sk)
			return sk->src_ip6[0] == addr[0] && sk->src_ip6[1] == addr[1] &&
			       sk->src_ip6[2] == addr[2] && sk->src_ip6[3] == addr[3];
		return err == 0;
	}
}

/* Waypoint pods looked at when the waypoint is a service (see below). */
#define WP_POD_SCAN 8

/*
 * A waypoint named by hostname is a VIP, which no pod owns: the caller is the waypoint when it owns
 * the address of one of the waypoint service's pods (the endpoints connect4 would pick from, in the
 * socket's family). Only the first WP_POD_SCAN endpoint slots are tried: a waypoint deployment with
 * more replicas than that may see some of its own connects sent back to a sibling replica.
 */
static __always_inline bool wp_caller_is_waypoint_pod(struct bpf_sock_addr *ctx,
						      const __u32 addr[4], __u16 port,
						      __u16 lookup_port, bool v4)
{
	const struct kmesh_frontend_value *fe_ptr;
	const struct kmesh_service_value *svc_ptr;
	struct kmesh_service_value svc;
	struct kmesh_frontend_key key = {};
	__u32 family = v4 ? KMESH_FAMILY_V4 : KMESH_FAMILY_V6, count = 0, service_id, pod[4];
	int prio;

	__builtin_memcpy(key.addr, addr, 16);
	key.port = port;
	fe_ptr = frontend_lookup(&key);
	if (!fe_ptr && lookup_port) {
		key.port = lookup_port;
		fe_ptr = frontend_lookup(&key);
	}
	if (!fe_ptr)
		return false;
	service_id = fe_ptr->service_id;
	svc_ptr = service_lookup(service_id);
	if (!svc_ptr)
		return false;
	__builtin_memcpy(&svc, svc_ptr, sizeof(svc));
	prio = service_pick_prio(&svc, family, &count);
	if (prio < 0)
		return false;
	for (__u32 i = 1; i <= WP_POD_SCAN; i++) { /* a bounded loop: the verifier walks it */
		const struct kmesh_endpoint_value *ep;
		const struct kmesh_backend_value *be;

		if (i > count)
			break;
		ep = endpoint_lookup(service_id, family, prio, i);
		if (!ep)
			continue;
		be = backend_lookup(ep->backend_id);
		if (!be)
			continue;
		if (family == KMESH_FAMILY_V4)
			__builtin_memcpy(pod, be->addr4, 16);
		else
			__builtin_memcpy(pod, be->addr6, 16);
		if (wp_caller_owns(ctx, pod, v4))
			return true;
	}
	return false;
}

/*
 * Is the caller the waypoint itself? In Kubernetes waypoint pods are never enrolled, so they do
 * not run this code; in standalone setups (every pod of the chain enrolled) the waypoint's own
 * outbound connects must not be sent back to it. The waypoint's namespace is the one that serves
 * the waypoint port (a listener for the waypoint's address or a wildcard) AND owns the waypoint's
 * address (wp_caller_owns), with no state for the agent or kmesh-cni to keep. The listener check
 * comes first and is cheap: other pods never reach the bind.
 */
static __always_inline bool wp_caller_is_waypoint(struct bpf_sock_addr *ctx, const __u32 addr[4],
						  __u16 port, __u16 lookup_port, bool v4)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	if (v4) {
		t.ipv4.daddr = addr[3];
		t.ipv4.dport = port;
		sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(t.ipv6.daddr, addr, 16);
		t.ipv6.dport = port;
		sk = bpf_sk_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return wp_caller_owns(ctx, addr, v4) ||
	       wp_caller_is_waypoint_pod(ctx, addr, port, lookup_port, v4);
}

/*
 * Decides whether this connect goes to a waypoint. key holds the destination as the client asked
 * (IPv4-mapped for IPv4); on redirect it is rewritten to the waypoint's address and port, so the
 * caller's frontend lookup then resolves a waypoint given as a service hostname (a VIP) to one of
 * its pods (through *lookup_port when the VIP has no frontend on the waypoint port). Returns 1
 * redirected, 0 not, or -errno (connect fails).
 */
static __always_inline int wp_select(struct bpf_sock_addr *ctx, struct kmesh_frontend_key *key,
				     __u32 family, __u16 *lookup_port)
{
	const struct kmesh_wp_dest_value *dv;
	const struct kmesh_waypoint_value *wv;
	struct kmesh_wp_dest_key dk;
	struct kmesh_waypoint_value wp;
	__u64 id;
	__u32 need = family == KMESH_FAMILY_V4 ? KMESH_WAYPOINT_HAS_V4 : KMESH_WAYPOINT_HAS_V6;
	__u32 wp_addr[4], dst[4];

	__builtin_memcpy(dk.addr, key->addr, 16);
	dv = bpf_map_lookup_elem(&km_wp_dest, &dk);
	if (!dv)
		return 0;
	id = dv->waypoint_id;
	wv = bpf_map_lookup_elem(&km_waypoint, &id);
	if (!wv) /* written before and deleted after every address pointing at it: being removed */
		return 0;
	__builtin_memcpy(&wp, wv, sizeof(wp));
	if (!(wp.flags & need)) {
		wp_stat_inc(KMESH_WP_STAT_NO_FAMILY);
		return -EHOSTUNREACH;
	}
	/* Copies, not a pointer picked by a ternary: clang may then compute it with bit operations
	 * the verifier refuses on stack pointers. */
	if (family == KMESH_FAMILY_V4)
		__builtin_memcpy(wp_addr, wp.addr4, 16);
	else
		__builtin_memcpy(wp_addr, wp.addr6, 16);
	__builtin_memcpy(dst, key->addr, 16);
	if (wp_addr_eq(wp_addr, dst)) {
		wp_stat_inc(KMESH_WP_STAT_SELF);
		return 0;
	}
	if (wp_caller_is_waypoint(ctx, wp_addr, wp.port, wp.lookup_port,
				  family == KMESH_FAMILY_V4)) {
		wp_stat_inc(KMESH_WP_STAT_FROM_WAYPOINT);
		return 0;
	}
	__builtin_memcpy(key->addr, wp_addr, 16);
	key->port = wp.port;
	*lookup_port = wp.lookup_port;
	return 1;
}

/*
 * Remembers the original destination for sk_msg_tlv (state PENDING), or, for a connect that is not
 * redirected, forgets one left by an earlier connect attempt on the same socket.
 */
static __always_inline int wp_remember(struct bpf_sock_addr *ctx, bool redirected,
				       const __u8 orig[16], __u16 orig_port, bool v4)
{
	struct bpf_sock *sk = ctx->sk;
	struct kmesh_wp_sock *st;

	if (!sk)
		return redirected ? -ENOMEM : 0;
	st = bpf_sk_storage_get(&km_wp_sk, sk, 0, redirected ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!st) {
		if (!redirected)
			return 0;
		wp_stat_inc(KMESH_WP_STAT_NO_STORAGE);
		return -ENOMEM;
	}
	if (!redirected) {
		st->state = KMESH_WP_SOCK_NONE;
		return 0;
	}
	__builtin_memcpy(st->orig_addr, orig, 16);
	st->orig_port = orig_port;
	st->v4 = v4;
	st->state = KMESH_WP_SOCK_PENDING;
	wp_stat_inc(KMESH_WP_STAT_REDIRECTED);
	return 0;
}

#endif
