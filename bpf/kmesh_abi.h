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
#define KMESH_ABI_VERSION 4

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

/* ---- waypoint redirect (issue 9; docs/waypoint.md) ----------------------------------------------
 *
 * km_wp_dest  destination address (16 bytes, IPv4-mapped for IPv4) -> waypoint id
 *             a service VIP whose service has a waypoint, or a workload address whose workload has
 *             one. Keyed by address only: like ztunnel and Kmesh, the waypoint decision does not
 *             depend on the port.
 * km_waypoint waypoint id (64-bit hash of its name) -> where to connect instead (per family)
 * km_wp_sk    per-socket storage: the original destination, kept from connect() to the first send
 * km_wp_sockhash  sockets waiting for the TLV; sk_msg_tlv is attached to it
 */

/* The waypoint's plaintext listener that reads Kmesh's TLV (not HBONE's 15008). */
#define KMESH_WAYPOINT_PORT 15019

#define KMESH_DEFAULT_MAX_WAYPOINTS	   4096
#define KMESH_DEFAULT_MAX_WAYPOINT_ADDRS   65536
#define KMESH_DEFAULT_MAX_WAYPOINT_SOCKETS 65536

#define KMESH_WAYPOINT_HAS_V4 (1u << 0)
#define KMESH_WAYPOINT_HAS_V6 (1u << 1)

/* A waypoint without any address (a hostname naming no known service) has flags 0: connects that
 * should go through it fail with EHOSTUNREACH rather than bypass it. */
struct kmesh_waypoint_value {
	__u8 addr4[16]; /* IPv4-mapped, valid with KMESH_WAYPOINT_HAS_V4 */
	__u8 addr6[16]; /* valid with KMESH_WAYPOINT_HAS_V6 */
	__u32 flags;
	__u16 port; /* network byte order: KMESH_WAYPOINT_PORT */
	/*
	 * A waypoint named by hostname is a VIP. Istio's waypoint service lists 15008 (HBONE) and
	 * 15021, not 15019: when (VIP, port) has no frontend, a pod is picked through (VIP,
	 * lookup_port), the GatewayAddress's hbone_mtls_port, and connected to on `port`. 0: none.
	 */
	__u16 lookup_port;
};

struct kmesh_wp_dest_key {
	__u8 addr[16]; /* IPv4-mapped for IPv4 */
};

enum kmesh_wp_kind {
	KMESH_WP_KIND_SERVICE = 1,  /* a service VIP */
	KMESH_WP_KIND_WORKLOAD = 2, /* a workload's own address */
};

struct kmesh_wp_dest_value {
	__u64 waypoint_id;
	__u32 kind; /* enum kmesh_wp_kind */
	__u32 pad;
};

enum kmesh_wp_sock_state {
	KMESH_WP_SOCK_NONE = 0,
	KMESH_WP_SOCK_PENDING = 1, /* redirected, TLV not sent yet */
	KMESH_WP_SOCK_SENT = 2,	   /* TLV sent: sk_msg_tlv passes everything untouched */
};

/* TLV of reference §3: 0x01, length (BE32, 6 or 18), address, port, then 0xfe and a zero BE32. */
#define KMESH_TLV_ORIG_DST 0x01
#define KMESH_TLV_END	   0xfe
#define KMESH_TLV_V4_SIZE  16
#define KMESH_TLV_V6_SIZE  28

struct kmesh_wp_sock {
	__u64 cookie; /* socket cookie, the km_wp_sockhash key (set by sockops) */
	/* As the client asked, IPv4-mapped for IPv4 (and for IPv4-mapped sockets). */
	__u8 orig_addr[16];
	__u16 orig_port; /* network byte order */
	__u8 state;	 /* enum kmesh_wp_sock_state */
	__u8 v4;	 /* 1: the destination is IPv4 on the wire, send the 16-byte form */
	__u32 pad;
};

/* Slots of the per-CPU counter array km_wp_stats. */
enum kmesh_wp_stat {
	KMESH_WP_STAT_REDIRECTED = 0,	 /* connect sent to a waypoint */
	KMESH_WP_STAT_NO_FAMILY = 1,	 /* the waypoint has no address of the socket's family */
	KMESH_WP_STAT_SELF = 2,		 /* destination is the waypoint itself: not redirected */
	KMESH_WP_STAT_FROM_WAYPOINT = 3, /* the caller serves the waypoint port: not redirected */
	KMESH_WP_STAT_NO_STORAGE = 4,	 /* socket storage could not be created: connect refused */
	KMESH_WP_STAT_SOCKHASH_FULL = 5, /* socket not tracked: its first send goes without TLV */
	KMESH_WP_STAT_TLV_SENT = 6,	 /* TLV prepended */
	KMESH_WP_STAT_TLV_FAILED = 7,	 /* bpf_msg_push_data failed: that send is dropped */
	KMESH_WP_STAT_RELEASED = 8,	 /* TLV acknowledged: socket back to plain TCP */
	KMESH_WP_STAT_MAX = 9,
};

#endif /* KMESH_ABI_H */
