/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map definitions. Sizes here are placeholders: the agent sets max_entries from its flags. */
#ifndef KMESH_BPF_MAPS_H
#define KMESH_BPF_MAPS_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "kmesh_abi.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_frontend_key);
	__type(value, struct kmesh_frontend_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_frontend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct kmesh_service_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_service SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_endpoint_key);
	__type(value, struct kmesh_endpoint_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_ENDPOINTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_endpoint SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct kmesh_backend_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_backend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_port_key);
	__type(value, struct kmesh_port_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_PORTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_port SEC(".maps");

/* Weighted clusters of kernel-native mode: split id -> services and cumulative weights. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct kmesh_split_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_SPLITS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_split SEC(".maps");

/* Circuit breaking (kernel-native): open connections per (client netns, service). Written by
 * connect() (entries created on first use) and by the release paths; the agent deletes a pod's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_cb_key);
	__type(value, struct kmesh_cb_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_CB);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_cb SEC(".maps");

/* Local rate limit (kernel-native): limit id -> bucket parameters, written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_limit_cfg);
	__uint(max_entries, KMESH_DEFAULT_MAX_LIMITS);
} km_limit_cfg SEC(".maps");

/* The buckets, per (client netns, limit id), made by connect() on first use. A plain hash: a
 * value with a bpf_spin_lock cannot live in an LRU map. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_ratelimit_key);
	__type(value, struct kmesh_ratelimit_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_RATELIMITS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_ratelimit SEC(".maps");

/* Per socket: the reservation connect() made, so that the close releases exactly that one. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct kmesh_native_sk);
} km_native_sk SEC(".maps");

/* (service, backend) membership, written by the agent (kmesh_abi.h, load balancing section). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_member_key);
	__type(value, struct kmesh_member_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_MEMBERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_member SEC(".maps");

/* Round-robin counters, indexed by service id (the agent sizes it to max services + 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_DEFAULT_MAX_SERVICES + 1);
} km_rr SEC(".maps");

/* Session affinity: (client netns, service, family) -> backend, last use (LRU: bounded). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kmesh_affinity_key);
	__type(value, struct kmesh_affinity_value);
	__uint(max_entries, KMESH_DEFAULT_MAX_AFFINITY);
} km_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_STAT_MAX);
} km_stats SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&km_stats, &slot);

	/* The test-only build (kmesh-daemon-variant) counts with other instructions: programs that
	 * really differ (new tags), to test an upgrade end to end. */
	if (v)
#ifdef KMESH_PROGRAM_VARIANT
		__sync_fetch_and_add(v, 1);
#else
		*v += 1; /* per-CPU slot: no atomics needed */
#endif
}

#endif
