/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 4: backend id -> the workload's address. */
#ifndef KMESH_BPF_BACKEND_H
#define KMESH_BPF_BACKEND_H

#include "maps.h"

static __always_inline const struct kmesh_backend_value *backend_lookup(__u32 backend_id)
{
	return bpf_map_lookup_elem(&km_backend, &backend_id);
}

static __always_inline bool backend_has_family(__u32 flags, __u32 family)
{
	return flags & (family == KMESH_FAMILY_V4 ? KMESH_BACKEND_HAS_V4 : KMESH_BACKEND_HAS_V6);
}

/* The workload's own target port for this service port, if it has one. fe is a stack copy. */
static __always_inline __u16 backend_target_port(__u32 backend_id,
						 const struct kmesh_frontend_key *key,
						 const struct kmesh_frontend_value *fe)
{
	struct kmesh_port_key pk = {
	    .backend_id = backend_id,
	    .service_id = fe->service_id,
	    .service_port = key->port,
	};
	const struct kmesh_port_value *pv;

	/* Kernel-native endpoints are address:port. The connect path reads the port with the
	 * backend it picked; this lookup serves the other callers (affinity, UDP replies). */
	if (fe->flags & KMESH_FRONTEND_BACKEND_PORT) {
		const struct kmesh_backend_value *be = backend_lookup(backend_id);
		__u32 flags;
		__u16 port;

		if (!be)
			return fe->target_port;
		flags = be->flags;
		port = be->port;
		return (flags & KMESH_BACKEND_HAS_PORT) ? port : fe->target_port;
	}
	if (!(fe->flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS))
		return fe->target_port;
	pv = bpf_map_lookup_elem(&km_port, &pk);
	return pv ? pv->target_port : fe->target_port;
}

#endif
