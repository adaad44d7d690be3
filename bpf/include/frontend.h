/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Stage 1: (destination address, port) -> service. */
#ifndef KMESH_BPF_FRONTEND_H
#define KMESH_BPF_FRONTEND_H

#include "maps.h"

static __always_inline const struct kmesh_frontend_value *
frontend_lookup(const struct kmesh_frontend_key *key)
{
	return bpf_map_lookup_elem(&km_frontend, key);
}

#endif
