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

/* The field and enum comments below are aligned by hand; clang-format would break them across
 * lines (it cannot keep a trailing comment and a long name on one 100-column line). */
/* clang-format off */

/* Maps are pinned under maps/v<KMESH_ABI_VERSION>/: bump it with any layout change, and an upgraded
 * agent fills fresh maps before it moves the pods to its programs (no reuse of old layouts). */
#define KMESH_ABI_VERSION 8

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
/* service_id is a km_split id: pick the service by weight first (kernel-native weighted clusters). */
#define KMESH_FRONTEND_SPLIT		  (1u << 1)
/* Each backend carries its own port (kernel-native: an endpoint is address:port); target_port is
 * only the fallback for a backend without KMESH_BACKEND_HAS_PORT. */
#define KMESH_FRONTEND_BACKEND_PORT	  (1u << 2)
/* limit_id names a token bucket (km_limit_cfg): kernel-native local rate limit. */
#define KMESH_FRONTEND_LIMITED		  (1u << 3)

struct kmesh_frontend_value {
	__u32 service_id;
	__u16 target_port; /* network byte order; the service's, unless km_port overrides it */
	__u16 flags;
	__u32 limit_id; /* with KMESH_FRONTEND_LIMITED: 1..max limits */
	__u32 pad;
};

struct kmesh_service_value {
	/*
	 * Written as a whole with BPF_ANY on a hash map: the kernel swaps in a new element under
	 * RCU, so a reader sees either the old or the new counts, never a torn mix.
	 */
	__u32 endpoint_count[KMESH_FAMILY_COUNT][KMESH_PRIO_COUNT];
	__u32 lb_mode; /* enum kmesh_lb_mode */
	__u32 flags;   /* KMESH_SERVICE_* (load-balancing section below) */
	__u64 name_hash; /* lets a restarted agent recover the id of "namespace/hostname" */
	__u32 affinity_timeout; /* seconds, with KMESH_SERVICE_AFFINITY */
	__u32 max_connections;	/* with KMESH_SERVICE_MAX_CONN: per client pod (kernel-native) */
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

#define KMESH_BACKEND_HAS_V4   (1u << 0)
#define KMESH_BACKEND_HAS_V6   (1u << 1)
#define KMESH_BACKEND_HAS_PORT (1u << 2)

struct kmesh_backend_value {
	__u8 addr4[16]; /* IPv4-mapped, valid with KMESH_BACKEND_HAS_V4 */
	__u8 addr6[16]; /* valid with KMESH_BACKEND_HAS_V6 */
	__u32 flags;
	__u16 port; /* network byte order, with KMESH_BACKEND_HAS_PORT (ambient backends: 0) */
	__u16 pad;
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
	KMESH_STAT_CB_OPEN = 4,	    /* kernel-native: max_connections reached: ECONNREFUSED */
	KMESH_STAT_CB_UNTRACKED = 5, /* km_cb or socket storage full: let through uncounted */
	KMESH_STAT_RATE_LIMITED = 6, /* kernel-native: the token bucket was empty: ECONNREFUSED */
	KMESH_STAT_RL_UNTRACKED = 7, /* km_ratelimit full: let through */
	KMESH_STAT_MAX = 8,
};

/* ===================== authz (issue 9, L4 authorization; bpf/include/authz.h) ==============
 *
 * The agent compiles every Istio Authorization that applies to a local workload into tables the
 * kernel walks without ever comparing strings (docs/authz.md, "kernel evaluation"):
 *
 *   km_authz_ident   addr16 -> source identity id (0 = no identity; incremental, not generational)
 *   km_authz_dst     (gen, local workload addr16) -> policy set id
 *   km_authz_set     [gen * sets_per_gen + set]   -> slice of km_authz_setpol, flags
 *   km_authz_setpol  [gen * setpol_per_gen + i]   -> policy index (dry-run first, then DENY, ALLOW)
 *   km_authz_policy  [gen * policies_per_gen + p] -> slice of km_authz_row, action, counter slot
 *   km_authz_row     [gen * rows_per_gen + r]     -> one match group: which checks it makes
 *   km_authz_idset   (gen, identity set, identity id) -> present (accept set, or reject set)
 *   km_authz_cidr    LPM (gen, row, kind, addr16)  -> source / destination CIDRs of a row
 *   km_authz_port    (gen, row, kind, port)        -> destination ports of a row
 *   km_authz_config  [0] -> state word: bit 0 = active generation, bits 1.. = epoch
 *   km_authz_cache   LRU (src, dst, port) -> verdict, deciding slot, epoch
 *   km_authz_hits    per-CPU [slot * KMESH_AUTHZ_HIT_COUNT + enum kmesh_authz_hit]
 *   km_authz_totals  per-CPU [enum kmesh_authz_total]
 *
 * The agent writes the inactive generation completely, then flips bit 0 of the state word (one
 * 64-bit store, which also bumps the epoch), so the kernel never sees a half-written policy set.
 * The epoch also bumps when an address changes identity: cached verdicts of older epochs are
 * ignored.
 */
#define KMESH_AUTHZ_ALLOW 0
#define KMESH_AUTHZ_DENY  1

/* Per-generation capacities (agent flags); arrays hold two generations. */
#define KMESH_AUTHZ_DEFAULT_MAX_POLICIES 16384
#define KMESH_AUTHZ_DEFAULT_MAX_ROWS	 131072
#define KMESH_AUTHZ_DEFAULT_MAX_SETS	 4096
#define KMESH_AUTHZ_DEFAULT_MAX_SETPOL	 262144
#define KMESH_AUTHZ_DEFAULT_MAX_DSTS	 16384
#define KMESH_AUTHZ_DEFAULT_MAX_ENTRIES	 262144 /* identity-set, CIDR, port entries (each) */
#define KMESH_AUTHZ_DEFAULT_MAX_IDENTS	 262144 /* source addresses with an identity */
#define KMESH_AUTHZ_DEFAULT_MAX_CACHE	 65536	/* verdict cache (LRU) */

/* km_authz_config[0]. One 64-bit word so that generation and epoch change together. */
struct kmesh_authz_config {
	__u64 state; /* bit 0: active generation; state >> 1: epoch */
};

struct kmesh_authz_ident_value {
	__u32 identity; /* 0 = no identity */
};

struct kmesh_authz_dst_key {
	__u32 gen;
	__u8 addr[16];
};

struct kmesh_authz_dst_value {
	__u32 set; /* index inside its generation */
};

#define KMESH_AUTHZ_SET_HAS_ALLOW (1u << 0) /* a non-dry-run ALLOW policy applies */

struct kmesh_authz_set_value {
	__u32 first; /* first km_authz_setpol index inside the generation */
	__u32 count; /* policies in the set */
	__u32 flags; /* KMESH_AUTHZ_SET_* */
	__u32 pad;
};

struct kmesh_authz_setpol_value {
	__u32 policy; /* km_authz_policy index inside the generation */
};

#define KMESH_AUTHZ_POLICY_DENY	   (1u << 0)
#define KMESH_AUTHZ_POLICY_DRY_RUN (1u << 1)

struct kmesh_authz_policy_value {
	__u32 first_row; /* km_authz_row index inside the generation */
	__u32 rows;	 /* 0: the policy never matches */
	__u32 slot;	 /* counter slot (stable for the policy's key) */
	__u32 flags;	 /* KMESH_AUTHZ_POLICY_* */
};

/*
 * One match group. Rows of a policy are ordered by rule, then clause; END_CLAUSE / END_RULE mark
 * the last row of each. A rule that always matches is one row with ALWAYS.
 */
#define KMESH_AUTHZ_ROW_ALWAYS	     (1u << 0)
#define KMESH_AUTHZ_ROW_END_CLAUSE   (1u << 1)
#define KMESH_AUTHZ_ROW_END_RULE     (1u << 2)
#define KMESH_AUTHZ_ROW_IDENT	     (1u << 3) /* identity must be in (or, INVERT, not in) idset */
#define KMESH_AUTHZ_ROW_IDENT_INVERT (1u << 4)
#define KMESH_AUTHZ_ROW_SRC	     (1u << 5) /* source in a KMESH_AUTHZ_KIND_SRC CIDR */
#define KMESH_AUTHZ_ROW_NOT_SRC	     (1u << 6) /* source in no KMESH_AUTHZ_KIND_NOT_SRC CIDR */
#define KMESH_AUTHZ_ROW_DST	     (1u << 7)
#define KMESH_AUTHZ_ROW_NOT_DST	     (1u << 8)
#define KMESH_AUTHZ_ROW_PORT	     (1u << 9)
#define KMESH_AUTHZ_ROW_NOT_PORT     (1u << 10)

struct kmesh_authz_row_value {
	__u32 idset; /* identity set id, with KMESH_AUTHZ_ROW_IDENT */
	__u32 flags; /* KMESH_AUTHZ_ROW_* */
};

struct kmesh_authz_idset_key {
	__u32 gen;
	__u32 idset;
	__u32 identity;
};

enum kmesh_authz_kind {
	KMESH_AUTHZ_KIND_SRC = 0,
	KMESH_AUTHZ_KIND_NOT_SRC = 1,
	KMESH_AUTHZ_KIND_DST = 2,
	KMESH_AUTHZ_KIND_NOT_DST = 3,
	KMESH_AUTHZ_KIND_PORT = 0,
	KMESH_AUTHZ_KIND_NOT_PORT = 1,
};

/* (gen << 31) | (row << 2) | kind: rows per generation stay below 2^28 (bit 30: KMESH_AUTHZ_CIDR_V6). */
#define KMESH_AUTHZ_MATCH_ID(gen, row, kind)                                                       \
	(((__u32)(gen) << 31) | ((__u32)(row) << 2) | (__u32)(kind))
#define KMESH_AUTHZ_MAX_ROWS_LIMIT (1u << 28)
/*
 * Set in a CIDR key's match for IPv6 prefixes (bit 30, above every row). IPv4 lives IPv4-mapped in
 * the same trie, so without it an IPv6 prefix such as ::/0 would also cover every IPv4 peer, where
 * Istio never matches an address against a CIDR of the other family.
 */
#define KMESH_AUTHZ_CIDR_V6 (1u << 30)

/* LPM trie key: prefixlen counts the 32 bits of match plus the address prefix (IPv4 as mapped). */
struct kmesh_authz_cidr_key {
	__u32 prefixlen;
	__u32 match; /* KMESH_AUTHZ_MATCH_ID (always fully inside the prefix, so byte order is moot)
		      */
	__u8 addr[16];
};

struct kmesh_authz_port_key {
	__u32 match; /* KMESH_AUTHZ_MATCH_ID */
	__u16 port;  /* host byte order */
	__u16 pad;
};

/* Value of the presence-only maps (idset, cidr, port). */
struct kmesh_authz_present {
	__u8 present;
	__u8 pad[3];
};

struct kmesh_authz_cache_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 port; /* host byte order */
	__u16 pad;
};

enum kmesh_authz_total {
	KMESH_AUTHZ_TOTAL_ALLOWED = 0,
	KMESH_AUTHZ_TOTAL_DENIED_POLICY = 1,
	KMESH_AUTHZ_TOTAL_DENIED_NO_ALLOW = 2,
	KMESH_AUTHZ_TOTAL_CLOSED = 3,
	KMESH_AUTHZ_TOTAL_CACHE_HITS = 4,
	KMESH_AUTHZ_TOTAL_COUNT = 5,
};

#define KMESH_AUTHZ_NO_SLOT   0xffffffffu
#define KMESH_AUTHZ_CACHE_DRY 2 /* dry-run slots remembered by a cache entry */

struct kmesh_authz_cache_value {
	__u64 epoch;
	__u32 slot;  /* deciding policy, or KMESH_AUTHZ_NO_SLOT */
	__u32 total; /* enum kmesh_authz_total of the decision */
	__u32
	    dry[KMESH_AUTHZ_CACHE_DRY]; /* dry-run policies that matched, or KMESH_AUTHZ_NO_SLOT */
};

enum kmesh_authz_hit {
	KMESH_AUTHZ_HIT_MATCHED = 0,
	KMESH_AUTHZ_HIT_DRY_RUN = 1,
	KMESH_AUTHZ_HIT_CLOSED = 2,
	KMESH_AUTHZ_HIT_COUNT = 3,
};
/* ===================== end authz ===================== */

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

/* ===================== kernel-native mode (issue 13; docs/design/kernel-native.md) ====== */

/*
 * Weighted clusters (kernel-native mode: tcp_proxy weighted_clusters, a route's weighted
 * clusters): a frontend with KMESH_FRONTEND_SPLIT names a km_split entry instead of a service, and
 * connect() first picks one of up to KMESH_SPLIT_MAX services by weight: r = random % total, the
 * first i with r < cum_weight[i]. Written before the frontend that names it and deleted after it
 * (the writer's order contract). Weights need not sum to 100.
 */
/*
 * Circuit breaking (cluster circuit_breakers.thresholds.max_connections): a service with
 * KMESH_SERVICE_MAX_CONN admits at most max_connections open connections per client pod (Envoy
 * counts per proxy, and a sidecar is one per pod). km_cb holds the count per (client netns,
 * service); connect() reserves a slot with an atomic add before the connection exists, so
 * concurrent connects cannot all pass a check, and undoes it when over the limit (-ECONNREFUSED).
 * The socket remembers its reservation in km_native_sk; it is released exactly once (an atomic
 * fetch-and-clear of KMESH_NATIVE_SK_COUNTED) when the connection closes or fails (sockops state
 * change to CLOSE) or the socket is released (close()), whichever comes first.
 */
#define KMESH_SERVICE_MAX_CONN	  (1u << 2)
#define KMESH_DEFAULT_MAX_CB	  65536

struct kmesh_cb_key {
	__u64 netns_cookie;
	__u32 service_id;
	__u32 pad;
};

struct kmesh_cb_value {
	__u64 active; /* reserved slots: connections open or being opened */
};

#define KMESH_NATIVE_SK_COUNTED (1u << 0)

struct kmesh_native_sk {
	__u64 netns_cookie;
	__u32 service_id;
	__u32 backend_id;
	__u64 flags; /* KMESH_NATIVE_SK_*; 64 bits for the BPF atomics of clang's default CPU */
};

/*
 * Local rate limit (the network filter envoy.filters.network.local_ratelimit: one token per new
 * connection, a bucket per filter chain and per proxy): a frontend with KMESH_FRONTEND_LIMITED
 * takes a token from the client pod's bucket km_ratelimit[(netns, limit_id)] at connect(), or is
 * refused with ECONNREFUSED. Buckets start full (max_tokens) and gain tokens_per_fill every
 * fill_interval_ns, up to max_tokens; the refill and the take happen under the bucket's spin lock,
 * so concurrent connects never take more tokens than exist. Several frontends (the VIPs of one
 * 0.0.0.0_<port> listener) can share a limit id, as they share Envoy's filter chain.
 */
#define KMESH_DEFAULT_MAX_LIMITS     4096
#define KMESH_DEFAULT_MAX_RATELIMITS 65536

struct kmesh_limit_cfg {
	__u64 max_tokens; /* 0: no bucket configured (let through) */
	__u64 tokens_per_fill;
	__u64 fill_interval_ns;
	__u64 name_hash; /* lets a restarted agent recover which limit holds this id */
};

struct kmesh_ratelimit_key {
	__u64 netns_cookie;
	__u32 limit_id;
	__u32 pad;
};

#ifdef __BPF__
struct kmesh_ratelimit_value {
	struct bpf_spin_lock lock;
	__u32 pad;
	__u64 tokens;
	__u64 last_fill_ns;
};
#else
struct kmesh_ratelimit_value { /* the same layout, as user space sees it */
	__u32 lock;
	__u32 pad;
	__u64 tokens;
	__u64 last_fill_ns;
};
#endif

#define KMESH_SPLIT_MAX		  16
#define KMESH_DEFAULT_MAX_SPLITS 16384

struct kmesh_split_value {
	__u32 count; /* services in use, 1..KMESH_SPLIT_MAX */
	__u32 total; /* cum_weight[count - 1] */
	__u32 service_id[KMESH_SPLIT_MAX];
	__u32 cum_weight[KMESH_SPLIT_MAX]; /* strictly increasing */
	__u64 name_hash; /* lets a restarted agent recover which split holds this id */
};

/* ===================== load balancing (issue 10 section 2: weights, round robin, affinity) ====
 * Owned by the LB work: service flags/affinity fields, km_rr / km_affinity. */

/*
 * km_member: (service id, backend id) -> present while the backend is an endpoint of the service
 * (in any family or priority). The writer adds it before the backend's first endpoint slot of the
 * service and deletes it after its last, so "is this backend still one of the service's endpoints"
 * costs one lookup: session affinity re-checks a remembered backend, and a UDP reply from a backend
 * that has left the service is not translated back to the VIP.
 */
#define KMESH_DEFAULT_MAX_MEMBERS 131072

struct kmesh_member_key {
	__u32 service_id;
	__u32 backend_id;
};

struct kmesh_member_value {
	__u32 weight; /* the backend's share (Workload.capacity); 0 = draining: no new connections */
	__u32 pad;
};

/*
 * Weighted endpoints: a backend of weight w occupies w endpoint slots of a (family, priority) list,
 * after dividing the list's weights by their gcd, so the pick stays one random (or round-robin)
 * index into a dense list. A list needing more than KMESH_MAX_WEIGHT_SLOTS slots (or than its
 * member count, when that is larger) is scaled down proportionally, each backend keeping >= 1 slot.
 */
#define KMESH_MAX_WEIGHT_SLOTS 256

/* kmesh_service_value.flags */
#define KMESH_SERVICE_ROUND_ROBIN (1u << 0) /* index = km_rr[service id]++ % count + 1 */
#define KMESH_SERVICE_AFFINITY	  (1u << 1) /* ClientIP-style stickiness through km_affinity */

/* Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds (3 hours), and its maximum. */
#define KMESH_DEFAULT_AFFINITY_TIMEOUT 10800
#define KMESH_MAX_AFFINITY_TIMEOUT     86400
#define KMESH_DEFAULT_MAX_AFFINITY     65536

/*
 * km_rr: array indexed by service id (ids are 1..max services), one shared counter per service,
 * advanced with an atomic add. Never written by the agent: a reused id inherits a counter value,
 * which only shifts where its rotation starts.
 */

/*
 * km_affinity (LRU): which backend a client last got for a service. At connect() the source
 * address is not chosen yet, so the client is its network namespace (bpf_get_netns_cookie): one
 * pod, one IP, which is what Kubernetes' ClientIP affinity keys on.
 */
struct kmesh_affinity_key {
	__u64 netns_cookie;
	__u32 service_id;
	__u32 family; /* enum kmesh_family: a backend remembered for IPv4 may lack IPv6 */
};

struct kmesh_affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns() of the last connect that used it */
	__u32 backend_id;
	__u32 pad;
};

/* ===================== end load balancing ===================== */




/* ===================== UDP and address transparency (issue 10 section 1) =====================
 * Owned by the UDP work: sendmsg/recvmsg/getpeername, per-socket reverse entries (km_udp_rev...).
 * Design and reasons: docs/udp.md.
 *
 * km_udp_rev     LRU: socket cookie -> the (VIP:port -> backend addr:port) translations sendmsg
 * made for that unconnected UDP socket, so recvmsg can show a reply as coming from the VIP the
 * application sent to. One entry per socket, so cgroup/sock_release removes all of a socket's
 * translations with one delete; LRU so that sockets whose release hook could not run (a kernel
 * without it) or churn beyond the size cannot fill it. km_sock_peer   socket storage: the
 * destination a connected socket (TCP or UDP) asked for and the endpoint it was connected to
 * instead, for getpeername() and for recvfrom() on a connected UDP socket. Freed with the socket.
 * km_udp_stats   per-CPU counters (enum kmesh_udp_stat).
 */
#define KMESH_DEFAULT_MAX_UDP_SOCKETS 65536 /* km_udp_rev entries: UDP sockets talking to VIPs */

/*
 * Translations kept per unconnected socket. A socket keeps one backend per (VIP, port) it sends to
 * (re-picked only when that backend leaves), so this bounds the services one socket talks to at
 * once, not the backends or the query rate: a resolver socket querying 2-3 DNS VIPs fits. A fifth
 * service evicts the oldest slot (round robin); replies to the evicted one then arrive from the
 * backend's own address (counted: KMESH_UDP_STAT_SLOT_EVICTED).
 */
#define KMESH_UDP_REV_SLOTS 4

struct kmesh_udp_rev_slot {
	__u8
	    backend_addr[16]; /* where datagrams go (and replies come from); IPv4-mapped for IPv4 */
	__u8 vip_addr[16];    /* what the application sent to; IPv4-mapped for IPv4 */
	__u64
	    backend_name_hash; /* km_backend's name_hash when picked: a reused backend id differs */
	__u32 service_id;
	__u32 backend_id;
	__u16 backend_port; /* network byte order */
	__u16 vip_port;	    /* network byte order */
	__u32 pad;
};

struct kmesh_udp_rev_value {
	struct kmesh_udp_rev_slot slot[KMESH_UDP_REV_SLOTS];
	__u32 used; /* slots 0..used-1 are valid */
	__u32 next; /* the slot a new service takes once all are used */
};

#define KMESH_SOCK_PEER_VALID (1u << 0)

struct kmesh_sock_peer {
	__u8 vip_addr[16];     /* the destination connect() was given; IPv4-mapped for IPv4 */
	__u8 backend_addr[16]; /* where the socket was connected instead; IPv4-mapped for IPv4 */
	__u16 vip_port;	       /* network byte order */
	__u16 backend_port;    /* network byte order */
	__u32 flags;	       /* KMESH_SOCK_PEER_* */
};

/* Slots of the per-CPU counter array km_udp_stats. */
enum kmesh_udp_stat {
	KMESH_UDP_STAT_SEND_PICKED = 0,	 /* sendmsg to a VIP: a backend picked for the socket */
	KMESH_UDP_STAT_SEND_KEPT = 1,	 /* sendmsg to a VIP: the socket's backend reused */
	KMESH_UDP_STAT_SEND_REFUSED = 2, /* sendmsg to a VIP without endpoints: refused */
	KMESH_UDP_STAT_REV_FAILED = 3,	 /* reverse entry not stored (map update failed) */
	KMESH_UDP_STAT_SLOT_EVICTED = 4, /* a socket's 5th service took the oldest slot */
	KMESH_UDP_STAT_RECV_XLATED = 5,	 /* reply source rewritten to the VIP */
	KMESH_UDP_STAT_RECV_STALE = 6,	 /* reply from a backend that left: not rewritten */
	KMESH_UDP_STAT_PEER_XLATED = 7,	 /* getpeername answered the VIP */
	KMESH_UDP_STAT_PEER_NO_STORAGE =
	    8,			     /* socket storage not created: getpeername shows the backend */
	KMESH_UDP_STAT_RELEASED = 9, /* sock_release removed a socket's reverse entry */
	KMESH_UDP_STAT_CONNECT_XLATED = 10, /* connect() of a UDP socket translated */
	KMESH_UDP_STAT_MAX = 11,
};

/* ===================== end UDP ===================== */




/* ===================== same-node sockmap acceleration (issue 10 section 3) ====================
 * Owned by the sockmap work (docs/sockmap.md; bpf/include/accel.h, bpf/sock_accel.c).
 *
 * km_accel_sockhash  (local addr, remote addr, local port, remote port) as the socket sees it ->
 *                    the socket. cgroup_sockops puts a connection's sockets there when both ends
 *                    are enrolled pods of this node; sk_msg_accel (attached to it) looks a send's
 *                    peer up under the mirrored key and redirects the bytes into the peer's receive
 *                    queue (bpf_msg_redirect_hash, BPF_F_INGRESS): they never enter the TCP stack.
 * km_accel_state     the same key -> whether that socket redirects (enum kmesh_accel_state); LRU,
 *                    entries deleted with the socket.
 * km_accel_stats     per-CPU counters (enum kmesh_accel_stat).
 *
 * Keys are node-wide, across network namespaces: pod addresses are unique on a node, loopback
 * ones are not, so loopback connections are never accelerated.
 */
#define KMESH_DEFAULT_MAX_ACCEL_SOCKETS 65536

struct kmesh_accel_key {
	/* Network byte order, 32-bit words (the shape of bpf_sock_ops and sk_msg_md's fields);
	 * IPv4 is IPv4-mapped, so an IPv4 socket and an IPv4-mapped IPv6 peer share one form. */
	__u32 local[4];
	__u32 remote[4];
	__u16 local_port;  /* network byte order */
	__u16 remote_port; /* network byte order */
};

enum kmesh_accel_state {
	KMESH_ACCEL_NONE = 0,	 /* not in km_accel_sockhash */
	KMESH_ACCEL_PENDING = 1, /* in the sockhash, nothing sent yet */
	KMESH_ACCEL_ON = 2,	 /* redirects to its peer: stays in the sockhash until it closes */
	/* Its first send found no accelerated peer and went through TCP: every later send does too
	 * (TCP-then-redirect could reorder bytes at the receiver), and sockops takes the socket out
	 * of the sockhash at the first ACK, back to plain TCP. */
	KMESH_ACCEL_PASS = 3,
};

struct kmesh_accel_sock {
	__u8 state; /* enum kmesh_accel_state */
	__u8 pad[7];
};

/* Slots of the per-CPU counter array km_accel_stats. */
enum kmesh_accel_stat {
	KMESH_ACCEL_STAT_INSERTED = 0,	    /* sockets put in km_accel_sockhash */
	KMESH_ACCEL_STAT_SOCKHASH_FULL = 1, /* not inserted: km_accel_sockhash full (or update failed) */
	KMESH_ACCEL_STAT_PEER_UNKNOWN = 2,  /* server side: the client is not accelerated, not inserted */
	KMESH_ACCEL_STAT_CONNECTIONS = 3,   /* sockets whose first send found the peer: redirecting */
	KMESH_ACCEL_STAT_PASSED = 4,	    /* sockets whose first send found no peer: plain TCP */
	KMESH_ACCEL_STAT_RELEASED = 5,	    /* PASS sockets taken out of the sockhash by sockops */
	KMESH_ACCEL_STAT_MSGS = 6,	    /* sends redirected */
	KMESH_ACCEL_STAT_BYTES = 7,	    /* bytes redirected */
	KMESH_ACCEL_STAT_PEER_GONE = 8,	    /* a redirecting socket's send found its peer closed: TCP */
	KMESH_ACCEL_STAT_REDIRECT_FAILED = 9, /* bpf_msg_redirect_hash refused: that send goes via TCP */
	KMESH_ACCEL_STAT_MAX = 10,
};

/* ===================== end sockmap ===================== */

/* ===================== telemetry (issue 11; docs/telemetry.md) ====================
 * Owned by the telemetry work (bpf/include/telemetry.h, sockops in bpf/waypoint.c, the iterator
 * in bpf/sock_telemetry.c; agent/src/telemetry/).
 *
 * km_conn            socket storage: one entry per TCP connection tracked for metrics (created at
 *                    ACTIVE/PASSIVE_ESTABLISHED in an enrolled pod's cgroup while monitoring is on;
 *                    STATE_CB reports its close). Freed with the socket.
 * km_conn_events     BPF ring buffer of struct kmesh_conn_event. A full buffer drops the event and
 *                    counts it (KMESH_TEL_STAT_DROPPED); nothing ever waits on it.
 * km_tel_config      array[1] of struct kmesh_tel_config, written by the agent at run time.
 * km_tel_stats       per-CPU counters (enum kmesh_tel_stat).
 * iter_conn_report   iter/tcp, run by the agent in each enrolled pod's netns every flush interval
 *                    (and before a scrape); for sockets with a km_conn entry emits a KMESH_CONN_EV_UPDATE for each open connection
 *                    whose byte counters moved since its last report, so long-lived connections
 *                    report bytes while open. Nothing runs per packet.
 *
 * Byte counters are the kernel's tcp_sock bytes_acked (our side's payload the peer acknowledged;
 * the SYN and FIN count one each) and bytes_received. Events carry deltas since the previous report
 * of the same connection and role, so the agent only adds.
 */
#define KMESH_DEFAULT_TEL_RINGBUF_BYTES (256 * 1024) /* power of two, multiple of the page size */

enum kmesh_conn_event_type {
	KMESH_CONN_EV_OPEN = 1,	  /* established (sent/recv 0) */
	KMESH_CONN_EV_UPDATE = 2, /* still open: bytes since the last report (iterator) */
	KMESH_CONN_EV_CLOSE = 3,  /* closed: bytes since the last report, duration */
	KMESH_CONN_EV_DENIED = 4, /* refused by authorization (sk_lookup): no socket was created */
};

enum kmesh_conn_role {
	KMESH_CONN_ROLE_SOURCE = 1,	 /* the socket of the client, in an enrolled pod (reporter=source) */
	KMESH_CONN_ROLE_DESTINATION = 2, /* the accepted socket, in an enrolled pod (reporter=destination) */
};

/* kmesh_conn_event.flags */
#define KMESH_CONN_F_TRANSLATED (1u << 0) /* connect() went to a service VIP (orig_addr/port set) */
#define KMESH_CONN_F_WAYPOINT (1u << 1)	  /* sent to a waypoint */
#define KMESH_CONN_F_V4 (1u << 2)	  /* IPv4 (addresses are IPv4-mapped) */
#define KMESH_CONN_F_ACCEL (1u << 3)	  /* bytes moved by sockmap acceleration (not in TCP counters) */

struct kmesh_conn_event {
	__u64 cookie;	   /* socket cookie (DENIED: 0) */
	__u64 ts_ns;	   /* bpf_ktime_get_ns() at the event */
	__u64 duration_ns; /* CLOSE: since established; else 0 */
	__u64 sent_bytes;  /* this socket's payload acknowledged by the peer, since the last report */
	__u64 recv_bytes;  /* payload this socket received, since the last report */
	/* Addresses as this socket sees them; IPv4-mapped for IPv4; ports in host byte order. */
	__u8 local_addr[16];
	__u8 remote_addr[16]; /* the peer actually connected (a backend, not the VIP) */
	__u8 orig_addr[16];   /* SOURCE with KMESH_CONN_F_TRANSLATED: the VIP connect() was given */
	__u16 local_port;
	__u16 remote_port;
	__u16 orig_port;
	__u8 type;  /* enum kmesh_conn_event_type */
	__u8 role;  /* enum kmesh_conn_role */
	__u32 flags; /* KMESH_CONN_F_* */
	__u32 reason; /* DENIED: enum kmesh_authz_... decision detail (0 = denied by policy); else 0 */
};

struct kmesh_conn {
	__u64 start_ns;
	__u64 reported_sent; /* bytes_acked at the last report */
	__u64 reported_recv; /* bytes_received at the last report */
	__u8 orig_addr[16];
	__u16 orig_port; /* host byte order */
	__u8 role;
	__u8 closed; /* CLOSE reported: the iterator skips it */
	__u32 flags;
};

/* km_tel_config[0]. enabled=0 tracks nothing new (connections already tracked still report). */
struct kmesh_tel_config {
	__u32 enabled;
	__u32 pad;
};

enum kmesh_tel_stat {
	KMESH_TEL_STAT_EVENTS = 0,	   /* events written to km_conn_events */
	KMESH_TEL_STAT_DROPPED = 1,	   /* events lost: ring buffer full */
	KMESH_TEL_STAT_NO_STORAGE = 2,	   /* connection not tracked: socket storage not created */
	KMESH_TEL_STAT_TRACKED = 3,	   /* connections tracked (either role) */
	KMESH_TEL_STAT_MAX = 4,
};

/* ===================== end telemetry ===================== */

/* clang-format on */

#endif /* KMESH_ABI_H */
