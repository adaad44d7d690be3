/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 2: service -> which priority to pick from and how many endpoints it has. */
#ifndef KMESH_BPF_SERVICE_H
#define KMESH_BPF_SERVICE_H

#include "maps.h"

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

#endif
