/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Circuit breaking (kernel-native mode; kmesh_abi.h, "Circuit breaking"): connect() reserves one
 * of a service's max_connections slots for the client pod before the connection exists, and the
 * socket gives it back exactly once when the connection closes or fails, or the socket is
 * released. The reservation is an atomic add whose old value decides, so N concurrent connects
 * against a limit of M admit exactly M (a check-then-count, as Kmesh's, admits them all).
 */
#ifndef KMESH_BPF_CIRCUIT_H
#define KMESH_BPF_CIRCUIT_H

#include "maps.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

/* Gives back the reservation the socket holds, if it still holds one: the fetch-and-clear of
 * the COUNTED flag makes the close paths (state change, release, a new connect) race safely. */
static __always_inline void cb_release_storage(struct kmesh_native_sk *st)
{
	struct kmesh_cb_key key = {};
	struct kmesh_cb_value *cb;
	__u64 old = __sync_fetch_and_and(&st->flags, ~(__u64)KMESH_NATIVE_SK_COUNTED);

	if (!(old & KMESH_NATIVE_SK_COUNTED))
		return;
	key.netns_cookie = st->netns_cookie;
	key.service_id = st->service_id;
	cb = bpf_map_lookup_elem(&km_cb, &key);
	if (!cb)
		return; /* the agent dropped the pod's entries: nothing to give back */
	/* Never below zero: an entry recreated under a live socket must not wrap to "full". */
	if (__sync_fetch_and_add(&cb->active, -1) == 0)
		__sync_fetch_and_add(&cb->active, 1);
}

/* The close paths: sockops (state CLOSE) and cgroup/sock_release. */
static __always_inline void cb_release(struct bpf_sock *sk)
{
	struct kmesh_native_sk *st = bpf_sk_storage_get(&km_native_sk, sk, 0, 0);

	if (st)
		cb_release_storage(st);
}

/*
 * connect(): reserves a slot of service_id's max_connections for this client pod. Returns 0 (a
 * slot reserved, or no limit), or -ECONNREFUSED when the limit is reached. A full km_cb or a
 * socket without storage lets the connection through uncounted (fail open), counted in km_stats.
 */
static __always_inline int cb_reserve(struct bpf_sock_addr *ctx, __u32 service_id, __u32 svc_flags,
				      __u32 max_connections, __u32 backend_id)
{
	struct kmesh_cb_key key = {};
	struct kmesh_cb_value zero = {}, *cb;
	struct kmesh_native_sk *st;

	if (!(svc_flags & KMESH_SERVICE_MAX_CONN) || ctx->type != 1 /* SOCK_STREAM */)
		return 0;
	st = bpf_sk_storage_get(&km_native_sk, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		stat_inc(KMESH_STAT_CB_UNTRACKED);
		return 0;
	}
	/* A socket connecting again after a failed attempt gives that attempt's slot back first. */
	cb_release_storage(st);
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	key.service_id = service_id;
	cb = bpf_map_lookup_elem(&km_cb, &key);
	if (!cb) {
		bpf_map_update_elem(&km_cb, &key, &zero, BPF_NOEXIST);
		cb = bpf_map_lookup_elem(&km_cb, &key);
		if (!cb) {
			stat_inc(KMESH_STAT_CB_UNTRACKED);
			return 0;
		}
	}
	if (__sync_fetch_and_add(&cb->active, 1) >= max_connections) {
		__sync_fetch_and_add(&cb->active, -1);
		stat_inc(KMESH_STAT_CB_OPEN);
		return -ECONNREFUSED;
	}
	st->netns_cookie = key.netns_cookie;
	st->service_id = service_id;
	st->backend_id = backend_id;
	__sync_fetch_and_or(&st->flags, (__u64)KMESH_NATIVE_SK_COUNTED);
	return 0;
}

/* sockops, before the SYN: a counted socket asks for state callbacks, so that a connection that
 * fails (refused, timed out) or closes gives its slot back without waiting for close(). */
static __always_inline void cb_tcp_connect(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct kmesh_native_sk *st = bpf_sk_storage_get(&km_native_sk, sk, 0, 0);

	if (st && (st->flags & KMESH_NATIVE_SK_COUNTED))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						     BPF_SOCK_OPS_STATE_CB_FLAG);
}

#endif
