/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TEMPORARY stand-in for bpf/include/authz.h (owned by authz-kernel, branch h9-authz): same
 * signature, always allows. Deleted as soon as h9-authz is merged.
 */
#ifndef KMESH_BPF_AUTHZ_PLACEHOLDER_H
#define KMESH_BPF_AUTHZ_PLACEHOLDER_H

#include "vmlinux.h"

#define KMESH_AUTHZ_ALLOW 0
#define KMESH_AUTHZ_DENY  1

static __always_inline int authz_check(const __u8 *src, const __u8 *dst, __u16 dst_port, bool count)
{
	return KMESH_AUTHZ_ALLOW;
}

#endif
