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
 * Returns the priority to pick from and stores its endpoint count in *count, or -1 when the
 * service has no usable endpoint. RANDOM keeps every endpoint in priority 0, so it shares the
 * STRICT path.
 */
static __always_inline int service_pick_prio(const struct kmesh_service_value *svc, __u32 *count)
{
	if (svc->lb_mode != KMESH_LB_FAILOVER) {
		*count = svc->endpoint_count[0];
		return *count ? 0 : -1;
	}
#pragma unroll
	for (int prio = 0; prio < KMESH_PRIO_COUNT; prio++) {
		if (svc->endpoint_count[prio]) {
			*count = svc->endpoint_count[prio];
			return prio;
		}
	}
	return -1;
}

#endif
