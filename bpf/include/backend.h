/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 4: backend id -> the workload's address. */
#ifndef KMESH_BPF_BACKEND_H
#define KMESH_BPF_BACKEND_H

#include "maps.h"

static __always_inline const struct kmesh_backend_value *backend_lookup(__u32 backend_id)
{
	return bpf_map_lookup_elem(&km_backend, &backend_id);
}

#endif
