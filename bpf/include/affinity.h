/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Session affinity (ClientIP-style, per service): the backend a client got last time, reused while
 * it is fresh and still fit to serve.
 *
 * The client is its network namespace cookie: at connect() the source address is not chosen yet,
 * and a pod is one network namespace with one IP (per family), which is what Kubernetes'
 * sessionAffinity: ClientIP keys on. The family is part of the key because the v4 and v6 endpoint
 * lists differ.
 */
#ifndef KMESH_BPF_AFFINITY_H
#define KMESH_BPF_AFFINITY_H

#include "maps.h"
#include "backend.h"
#include "endpoint.h"

static __always_inline void affinity_key(struct kmesh_affinity_key *key, struct bpf_sock_addr *ctx,
					 __u32 service_id, __u32 family)
{
	key->netns_cookie = bpf_get_netns_cookie(ctx);
	key->service_id = service_id;
	key->family = family;
}

/*
 * Returns the remembered backend id (filling addr) when the entry is younger than the service's
 * timeout and the backend is still a member of the service with a weight above 0 and an address
 * of this family; else 0, and the caller picks afresh. A hit refreshes the entry's time (Kubernetes
 * counts the timeout from the last use).
 */
static __always_inline __u32 affinity_reuse(struct bpf_sock_addr *ctx, __u32 service_id,
					    const struct kmesh_service_value *svc, __u32 family,
					    __u32 addr[4])
{
	struct kmesh_affinity_key key = {};
	struct kmesh_affinity_value val;
	const struct kmesh_affinity_value *vp;
	const struct kmesh_member_value *member;
	const struct kmesh_backend_value *be;
	__u64 now = bpf_ktime_get_ns();
	__u32 backend_id;

	affinity_key(&key, ctx, service_id, family);
	vp = bpf_map_lookup_elem(&km_affinity, &key);
	if (!vp)
		return 0;
	val = *vp;
	if (now - val.last_used_ns > (__u64)svc->affinity_timeout * 1000000000ull)
		return 0; /* expired: pick again (and overwrite) */
	backend_id = val.backend_id;
	member = endpoint_member(service_id, backend_id);
	/* Left the service, or draining (weight 0: no new connections, sticky ones included). */
	if (!member || member->weight == 0)
		return 0;
	be = backend_lookup(backend_id);
	if (!be || !backend_has_family(be->flags, family))
		return 0;
	__builtin_memcpy(addr, family == KMESH_FAMILY_V4 ? be->addr4 : be->addr6, 16);
	val.last_used_ns = now;
	bpf_map_update_elem(&km_affinity, &key, &val, BPF_ANY);
	return backend_id;
}

static __always_inline void affinity_remember(struct bpf_sock_addr *ctx, __u32 service_id,
					      __u32 family, __u32 backend_id)
{
	struct kmesh_affinity_key key = {};
	struct kmesh_affinity_value val = {
	    .last_used_ns = bpf_ktime_get_ns(),
	    .backend_id = backend_id,
	};

	affinity_key(&key, ctx, service_id, family);
	/* LRU: a full map evicts the least recently used client, never fails the connect. */
	bpf_map_update_elem(&km_affinity, &key, &val, BPF_ANY);
}

#endif
