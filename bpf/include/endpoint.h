/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 3: (service, family, priority, random 1-based index) -> backend id. */
#ifndef KMESH_BPF_ENDPOINT_H
#define KMESH_BPF_ENDPOINT_H

#include "maps.h"

static __always_inline const struct kmesh_endpoint_value *
endpoint_lookup(__u32 service_id, __u32 family, __u32 prio, __u32 index)
{
	struct kmesh_endpoint_key key = {
	    .service_id = service_id,
	    .family = family,
	    .prio = prio,
	    .index = index,
	};

	return bpf_map_lookup_elem(&km_endpoint, &key);
}

/* Whether backend_id is (still) an endpoint of service_id, in any family or priority (km_member).
 */
static __always_inline bool endpoint_is_member(__u32 service_id, __u32 backend_id)
{
	struct kmesh_member_key key = {
	    .service_id = service_id,
	    .backend_id = backend_id,
	};

	return bpf_map_lookup_elem(&km_member, &key) != NULL;
}

/* The backend's km_member entry for the service (weight), or NULL when it is not a member. */
static __always_inline const struct kmesh_member_value *endpoint_member(__u32 service_id,
									__u32 backend_id)
{
	struct kmesh_member_key key = {
	    .service_id = service_id,
	    .backend_id = backend_id,
	};

	return bpf_map_lookup_elem(&km_member, &key);
}

#endif
