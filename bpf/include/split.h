/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Weighted clusters (kernel-native mode): a frontend with KMESH_FRONTEND_SPLIT names a km_split
 * entry, and the service is picked by weight before the endpoint is (kmesh_abi.h). This is Envoy's
 * tcp_proxy weighted_clusters and a catch-all route's weighted clusters, decided per connection.
 */
#ifndef KMESH_BPF_SPLIT_H
#define KMESH_BPF_SPLIT_H

#include "maps.h"

#ifndef ENOENT
#define ENOENT 2
#endif

/*
 * Sets *service_id to the service picked for split_id. Returns 0, or -ENOENT when the split is
 * gone (a frontend in the middle of removal: the connect is left alone, as for a missing service)
 * or malformed (count or total 0, weights not increasing up to total).
 */
static __always_inline int split_pick(__u32 split_id, __u32 *service_id)
{
	const struct kmesh_split_value *sp = bpf_map_lookup_elem(&km_split, &split_id);
	/* The part connect() reads (not name_hash, which is the agent's): the stack is tight. */
	struct {
		__u32 count, total;
		__u32 service_id[KMESH_SPLIT_MAX];
		__u32 cum_weight[KMESH_SPLIT_MAX];
	} s;
	__u32 r;

	_Static_assert(sizeof(s) == __builtin_offsetof(struct kmesh_split_value, name_hash),
		       "split copy covers count..cum_weight");
	if (!sp)
		return -ENOENT;
	/* A copy: the element may be reused by a concurrent agent update (see sock_connect.c). */
	__builtin_memcpy(&s, sp, sizeof(s));
	if (s.count == 0 || s.count > KMESH_SPLIT_MAX || s.total == 0)
		return -ENOENT;
	r = bpf_get_prandom_u32() % s.total;
	/* A bounded loop (verified since 5.3), not unrolled: the early exits defeat unrolling. */
	for (int i = 0; i < KMESH_SPLIT_MAX; i++) {
		if (i >= s.count)
			break;
		if (r < s.cum_weight[i]) {
			*service_id = s.service_id[i];
			return 0;
		}
	}
	return -ENOENT;
}

#endif
