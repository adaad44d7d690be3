/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 2: service -> which priority to pick from and how many endpoints it has. */
#ifndef KMESH_BPF_SERVICE_H
#define KMESH_BPF_SERVICE_H

#include "maps.h"

#define READ_ONCE_U64(p) (*(volatile __u64 *)(p))

static __always_inline const struct kmesh_service_value *service_lookup(__u32 service_id)
{
	return bpf_map_lookup_elem(&km_service, &service_id);
}

/*
 * Returns the priority to pick from in the socket's family list and stores its endpoint count in
 * *count, or -1 when the service has no endpoint of that family. RANDOM keeps every endpoint in
 * priority 0, so it shares the STRICT path; FAILOVER takes the first priority non-empty for this
 * family. svc is the caller's stack copy.
 */
static __always_inline int service_pick_prio(const struct kmesh_service_value *svc, __u32 family,
					     __u32 *count)
{
	const __u32 *counts = family == KMESH_FAMILY_V4 ? svc->endpoint_count[KMESH_FAMILY_V4]
							: svc->endpoint_count[KMESH_FAMILY_V6];

	if (svc->lb_mode != KMESH_LB_FAILOVER) {
		*count = counts[0];
		return *count ? 0 : -1;
	}
#pragma unroll
	for (int prio = 0; prio < KMESH_PRIO_COUNT; prio++) {
		if (counts[prio]) {
			*count = counts[prio];
			return prio;
		}
	}
	return -1;
}

/*
 * The 1-based index to pick among count endpoints. Round robin: the service's shared counter,
 * advanced with an atomic add (BPF_XADD, which every kernel since 4.x verifies; the fetching form
 * needs 5.12 and -mcpu=v3). The add and the read are two steps, so two connects racing on two CPUs
 * may read the same value: each still advances the counter exactly once, so the rotation stays
 * balanced to within the number of concurrent connects, and serialised connects rotate exactly.
 * Otherwise (or without a counter slot) a uniform random index. last: the final attempt after
 * races with the agent takes index 1, which exists whenever count is non-zero.
 */
static __always_inline __u32 service_pick_index(const struct kmesh_service_value *svc,
						__u32 service_id, __u32 count, bool last)
{
	__u64 *counter;

	if (last)
		return 1;
	if (svc->flags & KMESH_SERVICE_ROUND_ROBIN) {
		counter = bpf_map_lookup_elem(&km_rr, &service_id);
		if (counter) {
			__sync_fetch_and_add(counter, 1);
			return (__u32)(READ_ONCE_U64(counter) % count) + 1;
		}
	}
	return bpf_get_prandom_u32() % count + 1;
}

#endif
