/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Same-node sockmap acceleration (docs/sockmap.md): the maps and the sockops workers, included by
 * waypoint.c (cgroup_sockops calls them) and sock_accel.c (sk_msg_accel).
 *
 * Life of an accelerated connection between two enrolled pods of this node:
 *   client ACTIVE_ESTABLISHED   -> client socket into km_accel_sockhash (PENDING)
 *   server PASSIVE_ESTABLISHED  -> the client is there and not PASS: server socket in (PENDING)
 *   first send of either end    -> peer found, not PASS: ON, and every send from then on is
 *                                  redirected into the peer's receive queue (sk_msg_accel)
 *   close / RST / netns gone    -> the kernel takes the socket out of the sockhash (tcp_bpf's
 *                                  close and unhash), nothing for us to clean
 * A connection whose other end is not accelerated (not enrolled, on another node, a waypoint
 * socket, or the rare race below) goes PASS at its first send and leaves the sockhash at the
 * first ACK (RTT callback), back to the kernel's plain TCP operations.
 */
#ifndef KMESH_BPF_ACCEL_H
#define KMESH_BPF_ACCEL_H

#include "maps.h"
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef ENOENT
#define ENOENT 2
#endif
#ifndef EEXIST
#define EEXIST 17
#endif
#ifndef EOPNOTSUPP
#define EOPNOTSUPP 95
#endif

/* One 32-bit load of a context field at a constant offset: clang may otherwise narrow the load
 * or compute the field's address first, which the context rewriter refuses. */
#define ACCEL_CTX_U32(ctx, type, field)                                                            \
	({                                                                                         \
		__u32 __v;                                                                         \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                                              \
			     : "=r"(__v)                                                           \
			     : "r"(ctx), "i"(__builtin_offsetof(type, field)));                    \
		__v;                                                                               \
	})

/* Set by the agent (--sockmap): off, sockops puts nothing in the sockhash and the verifier prunes
 * that code. sk_msg_accel keeps redirecting sockets already in it until they close (stopping a
 * direction midway is safe; starting one midway is not). */
const volatile bool kmesh_accel_enabled = false;

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct kmesh_accel_key);
	__type(value, __u64);
	__uint(max_entries, KMESH_DEFAULT_MAX_ACCEL_SOCKETS);
} km_accel_sockhash SEC(".maps");

/*
 * The state of each socket in km_accel_sockhash, under the same key. A map of its own rather than
 * socket storage: the peer's state must be read by key, and a socket found in a sockhash from
 * sockops could not be released (bpf_sk_release is not available to sockops). Entries go with
 * the socket: at the first ACK of a PASS socket, at TCP_CLOSE for the others (state callback);
 * LRU so that a missed deletion can never fill it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kmesh_accel_key);
	__type(value, struct kmesh_accel_sock);
	__uint(max_entries, KMESH_DEFAULT_MAX_ACCEL_SOCKETS);
} km_accel_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_ACCEL_STAT_MAX);
} km_accel_stats SEC(".maps");

static __always_inline void accel_stat_add(__u32 slot, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&km_accel_stats, &slot);

	if (v)
		*v += n;
}

static __always_inline void accel_v4mapped(__u32 out[4], __u32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = ip4;
}

/* 127.0.0.0/8 (plain or IPv4-mapped) and ::1. Every pod has its own loopback, so such a 4-tuple
 * is not unique on the node and could name another pod's socket. */
static __always_inline bool accel_is_loopback(const __u32 a[4])
{
	if (a[0] || a[1])
		return false;
	if (a[2] == bpf_htonl(0xffff))
		return (bpf_ntohl(a[3]) >> 24) == 127;
	return a[2] == 0 && a[3] == bpf_htonl(1);
}

/*
 * The socket's own key (as it sees the connection) and, with mirror, its peer's. Ports: local_port
 * is host order, remote_port network order in the upper 16 bits (both contexts convert it so);
 * the key holds both in network order.
 */
static __always_inline int accel_key_ops(const struct bpf_sock_ops *skops,
					 struct kmesh_accel_key *k, bool mirror)
{
	__u32 l[4], r[4];
	__u16 lp = bpf_htonl(skops->local_port) >> 16,
	      rp = ACCEL_CTX_U32(skops, struct bpf_sock_ops, remote_port) >> 16;

	if (skops->family == AF_INET) {
		accel_v4mapped(l, skops->local_ip4);
		accel_v4mapped(r, skops->remote_ip4);
	} else if (skops->family == AF_INET6) {
		l[0] = skops->local_ip6[0];
		l[1] = skops->local_ip6[1];
		l[2] = skops->local_ip6[2];
		l[3] = skops->local_ip6[3];
		r[0] = skops->remote_ip6[0];
		r[1] = skops->remote_ip6[1];
		r[2] = skops->remote_ip6[2];
		r[3] = skops->remote_ip6[3];
	} else {
		return -EOPNOTSUPP;
	}
	if (accel_is_loopback(l) || accel_is_loopback(r))
		return -EOPNOTSUPP;
	if (mirror) {
		__builtin_memcpy(k->local, r, 16);
		__builtin_memcpy(k->remote, l, 16);
		k->local_port = rp;
		k->remote_port = lp;
	} else {
		__builtin_memcpy(k->local, l, 16);
		__builtin_memcpy(k->remote, r, 16);
		k->local_port = lp;
		k->remote_port = rp;
	}
	return 0;
}

/* The state of the socket under key, NONE when there is none. */
static __always_inline __u8 accel_state_of(struct kmesh_accel_key *key)
{
	struct kmesh_accel_sock *st = bpf_map_lookup_elem(&km_accel_state, key);

	return st ? st->state : KMESH_ACCEL_NONE;
}

static __always_inline int accel_insert(struct bpf_sock_ops *skops, struct kmesh_accel_key *key)
{
	struct kmesh_accel_sock st = {.state = KMESH_ACCEL_PENDING};

	/* Written before the socket is reachable through the sockhash, so sk_msg_accel and the
	 * peer never see it there without a state. */
	if (bpf_map_update_elem(&km_accel_state, key, &st, BPF_ANY)) {
		accel_stat_add(KMESH_ACCEL_STAT_SOCKHASH_FULL, 1);
		return -ENOMEM;
	}
	/* NOEXIST: a key taken already (addresses not unique after all) must not evict the socket
	 * another peer redirects to. */
	if (bpf_sock_hash_update(skops, &km_accel_sockhash, key, BPF_NOEXIST)) {
		bpf_map_delete_elem(&km_accel_state, key);
		accel_stat_add(KMESH_ACCEL_STAT_SOCKHASH_FULL, 1);
		return -EEXIST;
	}
	/* RTT: the first ACK of data sent over TCP takes a PASS socket out again. STATE: the state
	 * entry goes when the socket closes. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG |
					     BPF_SOCK_OPS_STATE_CB_FLAG);
	accel_stat_add(KMESH_ACCEL_STAT_INSERTED, 1);
	return 0;
}

/*
 * The client end, established: inserted on trust. Whether the server end is accelerated is known
 * only at its PASSIVE_ESTABLISHED (a local enrolled pod) or never (anything else); the first send
 * decides (sk_msg_accel).
 */
static __always_inline int accel_active_established(struct bpf_sock_ops *skops)
{
	struct kmesh_accel_key key = {};
	int err;

	if (!kmesh_accel_enabled)
		return 0;
	err = accel_key_ops(skops, &key, false);
	if (err)
		return err;
	return accel_insert(skops, &key);
}

/*
 * The server end, established (before accept() returns it): inserted only when the client end
 * is in the sockhash and not PASS, i.e. an enrolled pod of this node whose first send (if any)
 * was not already sent through TCP.
 */
static __always_inline int accel_passive_established(struct bpf_sock_ops *skops)
{
	struct kmesh_accel_key key = {}, peer = {};
	__u8 state;
	int err;

	if (!kmesh_accel_enabled)
		return 0;
	err = accel_key_ops(skops, &peer, true);
	if (err)
		return err;
	state = accel_state_of(&peer);
	if (state != KMESH_ACCEL_PENDING && state != KMESH_ACCEL_ON) {
		accel_stat_add(KMESH_ACCEL_STAT_PEER_UNKNOWN, 1);
		return -ENOENT;
	}
	err = accel_key_ops(skops, &key, false);
	if (err)
		return err;
	return accel_insert(skops, &key);
}

/*
 * An ACK of data that went through TCP. A PASS socket leaves the sockhash (sockops may delete from
 * a sockhash, sk_msg programs may not), which gives it back the kernel's plain TCP operations:
 * left in, each send is copied through tcp_bpf and a blocking recv() woken without data can see
 * EAGAIN. Only PASS sockets are taken out: nobody redirects to them (a peer checks the state
 * before redirecting), while leaving the sockhash drops what sits in the socket's redirect queue.
 */
static __always_inline int accel_rtt(struct bpf_sock_ops *skops)
{
	struct kmesh_accel_key key = {};
	struct kmesh_accel_sock *st;

	if (accel_key_ops(skops, &key, false))
		return 0;
	st = bpf_map_lookup_elem(&km_accel_state, &key);
	if (!st || st->state == KMESH_ACCEL_PENDING)
		return 0; /* PENDING: e.g. a FIN acked before any send; wait for the first send */
	if (st->state == KMESH_ACCEL_PASS) {
		bpf_map_delete_elem(&km_accel_sockhash, &key);
		bpf_map_delete_elem(&km_accel_state, &key);
		accel_stat_add(KMESH_ACCEL_STAT_RELEASED, 1);
	}
	/* ON sockets stay until they close; either way no more RTT callbacks are needed. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
	return 0;
}

/* The socket closed (the kernel took it out of the sockhash already): its state entry goes too. */
static __always_inline int accel_state_change(struct bpf_sock_ops *skops)
{
	struct kmesh_accel_key key = {};

	if (skops->args[1] != BPF_TCP_CLOSE)
		return 0;
	if (accel_key_ops(skops, &key, false))
		return 0;
	bpf_map_delete_elem(&km_accel_state, &key);
	return 0;
}

#endif
