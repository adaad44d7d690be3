/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 4: backend id -> the workload's address. */
#ifndef KMESH_BPF_BACKEND_H
#define KMESH_BPF_BACKEND_H

#include "maps.h"

static __always_inline const struct kmesh_backend_value *backend_lookup(__u32 backend_id)
{
	return bpf_map_lookup_elem(&km_backend, &backend_id);
}

static __always_inline bool backend_has_family(const struct kmesh_backend_value *be, bool want_v4)
{
	return be->flags & (want_v4 ? KMESH_BACKEND_HAS_V4 : KMESH_BACKEND_HAS_V6);
}

#endif
