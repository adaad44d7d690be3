/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The map ABI shared by the BPF programs and the C++ agent and CNI plugin.
 *
 * This is the only header both sides include. Every struct has explicit padding so that its
 * layout is identical under clang -target bpf and the host compiler; common/abi.hpp static_asserts
 * each size and offset. Any layout change bumps KMESH_ABI_VERSION (below).
 *
 * Lookup stages (one header each under bpf/include/):
 *   frontend (VIP, port) -> service id + target port
 *   service  id          -> endpoint count per (address family, priority), LB mode
 *   endpoint (service id, family, priority, 1-based index) -> backend id
 *   backend  id          -> workload addresses
 *   port     (backend, service, port) -> per-workload target port, where it differs
 */
#ifndef KMESH_ABI_H
#define KMESH_ABI_H

#ifdef __BPF__
/* vmlinux.h provides the __u* types. */
#else
#include <linux/types.h>
#endif

/* Maps are pinned under maps/v<KMESH_ABI_VERSION>/: bump it with any layout change, and an upgraded
 * agent fills fresh maps before it moves the pods to its programs (no reuse of old layouts). */
#define KMESH_ABI_VERSION 3

/* Priorities a service's endpoints are spread over (locality failover); 0 is the closest. */
#define KMESH_PRIO_COUNT 7

/*
 * Each service keeps one endpoint list per address family, so a connect picks uniformly among the
 * endpoints that can serve its socket (and never fails while one exists). A dual-stack backend sits
 * in both lists. IPv4 and IPv4-mapped IPv6 sockets pick from the IPv4 list, IPv6 ones from the
 * IPv6.
 */
enum kmesh_family {
	KMESH_FAMILY_V4 = 0,
	KMESH_FAMILY_V6 = 1,
	KMESH_FAMILY_COUNT = 2,
};

/* Default map capacities; the agent takes them as flags. */
#define KMESH_DEFAULT_MAX_SERVICES  20000
#define KMESH_DEFAULT_MAX_FRONTENDS 262144
#define KMESH_DEFAULT_MAX_ENDPOINTS 131072
#define KMESH_DEFAULT_MAX_BACKENDS  131072
#define KMESH_DEFAULT_MAX_PORTS	    131072

enum kmesh_lb_mode {
	KMESH_LB_RANDOM = 0,   /* all endpoints live in priority 0 */
	KMESH_LB_STRICT = 1,   /* only priority 0; none there means refuse */
	KMESH_LB_FAILOVER = 2, /* first non-empty priority */
};

/*
 * Addresses are always 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). A connect4 to
 * 10.96.0.10 and a connect6 to ::ffff:10.96.0.10 (Java's dual-stack sockets) therefore hit the
 * same frontend entry without a second lookup.
 */
struct kmesh_frontend_key {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u16 pad;
};

/* Some endpoints of this (service, port) listen on another target port: look in km_port. */
#define KMESH_FRONTEND_PER_WORKLOAD_PORTS (1u << 0)

struct kmesh_frontend_value {
	__u32 service_id;
	__u16 target_port; /* network byte order; the service's, unless km_port overrides it */
	__u16 flags;
};

struct kmesh_service_value {
	/*
	 * Written as a whole with BPF_ANY on a hash map: the kernel swaps in a new element under
	 * RCU, so a reader sees either the old or the new counts, never a torn mix.
	 */
	__u32 endpoint_count[KMESH_FAMILY_COUNT][KMESH_PRIO_COUNT];
	__u32 lb_mode; /* enum kmesh_lb_mode */
	__u32 pad;
	__u64 name_hash; /* lets a restarted agent recover the id of "namespace/hostname" */
};

struct kmesh_endpoint_key {
	__u32 service_id;
	__u16 family; /* enum kmesh_family */
	__u16 prio;
	__u32 index; /* 1-based and dense: 1..endpoint_count[family][prio] */
};

struct kmesh_endpoint_value {
	__u32 backend_id;
};

#define KMESH_BACKEND_HAS_V4 (1u << 0)
#define KMESH_BACKEND_HAS_V6 (1u << 1)

struct kmesh_backend_value {
	__u8 addr4[16]; /* IPv4-mapped, valid with KMESH_BACKEND_HAS_V4 */
	__u8 addr6[16]; /* valid with KMESH_BACKEND_HAS_V6 */
	__u32 flags;
	__u32 pad;
	__u64 name_hash; /* hash of the workload uid */
};

/*
 * Per-workload target ports (Istio resolves named ports per pod): (backend, service, service port)
 * -> target port, only where it differs from the frontend's.
 */
struct kmesh_port_key {
	__u32 backend_id;
	__u32 service_id;
	__u16 service_port; /* network byte order */
	__u16 pad;
};

struct kmesh_port_value {
	__u16 target_port; /* network byte order */
	__u16 pad;
};

/* Slots of the per-CPU counter array km_stats, read by the agent's metrics and dumps. */
enum kmesh_stat {
	KMESH_STAT_TRANSLATED = 0,  /* connect rewritten to an endpoint */
	KMESH_STAT_NO_ENDPOINT = 1, /* service without endpoints: refused */
	KMESH_STAT_NO_FAMILY = 2,   /* endpoints exist, none of the socket's family: EHOSTUNREACH */
	KMESH_STAT_RACE_RETRY =
	    3, /* an entry vanished (or lost the family) between lookups; picked again */
	KMESH_STAT_MAX = 4,
};

#endif /* KMESH_ABI_H */
