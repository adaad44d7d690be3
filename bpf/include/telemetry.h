/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection telemetry (issue 11, docs/telemetry.md "Kernel events"): the maps and the workers that
 * report TCP connections of enrolled pods to the agent through a BPF ring buffer.
 *
 *   ACTIVE_ESTABLISHED   the client end in an enrolled pod: km_conn storage (role SOURCE, the VIP
 *                        connect() was given, from km_sock_peer), STATE_CB on, OPEN
 *   PASSIVE_ESTABLISHED  the accepted end in an enrolled pod: the same with role DESTINATION
 *   STATE_CB -> CLOSE    CLOSE with the bytes not reported yet and the duration
 *   iter_conn_report     (sock_telemetry.c, run by the agent every flush interval) UPDATE with the
 *                        bytes moved since the last report, for connections still open
 *   sk_lookup_authz      (sock_lookup.c) DENIED for a SYN refused by policy
 *
 * Nothing here runs per packet: the kernel counts bytes in tcp_sock (bytes_acked, bytes_received)
 * anyway, and we read them at open, close and when the agent asks. Every event is best effort: a
 * full ring buffer drops the event and counts it (KMESH_TEL_STAT_DROPPED); a connection is never
 * delayed or refused because of telemetry.
 *
 * Included by waypoint.c (cgroup_sockops), sock_lookup.c (DENIED) and sock_telemetry.c.
 */
#ifndef KMESH_BPF_TELEMETRY_H
#define KMESH_BPF_TELEMETRY_H

#include "maps.h"
#include "udp.h"
#include "waypoint.h"
/* ACCEL_CTX_U32, the accel key (KMESH_CONN_F_ACCEL at close) and the AF_* / errno fallbacks. */
#include "accel.h"

#ifndef ENOSPC
#define ENOSPC 28
#endif
#ifndef EAGAIN
#define EAGAIN 11
#endif

/*
 * Set by the agent before load: false when the kernel lacks BPF ring buffers (then km_conn_events
 * is a placeholder of another type and the verifier prunes every use of it; see the loader).
 */
const volatile bool kmesh_tel_supported = true;

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct kmesh_conn);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_conn SEC(".maps");

/* Sized by the agent (--telemetry-ringbuf-bytes). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, KMESH_DEFAULT_TEL_RINGBUF_BYTES);
} km_conn_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_tel_config);
	__uint(max_entries, 1);
} km_tel_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_TEL_STAT_MAX);
} km_tel_stats SEC(".maps");

static __always_inline void tel_stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&km_tel_stats, &slot);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

/* Whether new connections are tracked (monitoring on). Tracked ones report until they close. */
static __always_inline bool tel_enabled(void)
{
	__u32 zero = 0;
	struct kmesh_tel_config *c;

	if (!kmesh_tel_supported)
		return false;
	c = bpf_map_lookup_elem(&km_tel_config, &zero);
	return c && c->enabled;
}

/*
 * Reserves an event in the ring buffer. NULL when it is full: the event is lost and counted, the
 * caller goes on (a connection never waits for the agent to read).
 */
static __always_inline struct kmesh_conn_event *tel_reserve(void)
{
	struct kmesh_conn_event *ev;

	if (!kmesh_tel_supported)
		return NULL;
	ev = bpf_ringbuf_reserve(&km_conn_events, sizeof(*ev), 0);
	if (!ev) {
		tel_stat_inc(KMESH_TEL_STAT_DROPPED);
		return NULL;
	}
	/* Reserved memory is not zeroed: every field is written by the callers, padding here. */
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	return ev;
}

static __always_inline void tel_submit(struct kmesh_conn_event *ev)
{
	bpf_ringbuf_submit(ev, 0);
	tel_stat_inc(KMESH_TEL_STAT_EVENTS);
}

/*
 * Takes the bytes from *reported up to now as this report's share and returns that delta. The
 * iterator and the close callback of one socket can run at once on two CPUs (the iterator does not
 * hold the socket lock): a compare-and-swap makes each byte reported exactly once, and a stale
 * (smaller) reading never moves *reported back.
 */
static __always_inline __u64 tel_claim(__u64 *reported, __u64 now)
{
	__u64 old = *reported;

	if (now <= old)
		return 0;
	if (__sync_val_compare_and_swap(reported, old, now) != old)
		return 0; /* the other reporter took it; its event carries these bytes */
	return now - old;
}

/* A connection's addresses as its socket sees them (16-byte forms, ports in host order). */
struct tel_addrs {
	__u32 local[4];
	__u32 remote[4];
	__u16 local_port;
	__u16 remote_port;
	__u32 flags; /* KMESH_CONN_F_V4 */
};

/* The socket's addresses from sockops; -EOPNOTSUPP for loopback (and non-IP). */
static __always_inline int tel_addrs_ops(const struct bpf_sock_ops *skops, struct tel_addrs *a)
{
	if (skops->family == AF_INET) {
		accel_v4mapped(a->local, skops->local_ip4);
		accel_v4mapped(a->remote, skops->remote_ip4);
	} else if (skops->family == AF_INET6) {
		a->local[0] = skops->local_ip6[0];
		a->local[1] = skops->local_ip6[1];
		a->local[2] = skops->local_ip6[2];
		a->local[3] = skops->local_ip6[3];
		a->remote[0] = skops->remote_ip6[0];
		a->remote[1] = skops->remote_ip6[1];
		a->remote[2] = skops->remote_ip6[2];
		a->remote[3] = skops->remote_ip6[3];
	} else {
		return -EOPNOTSUPP;
	}
	/* A pod talking to itself over lo is no mesh traffic (Istio reports none for it either),
	 * and every pod has the same loopback addresses. */
	if (accel_is_loopback(a->local) || accel_is_loopback(a->remote))
		return -EOPNOTSUPP;
	a->local_port = (__u16)skops->local_port; /* host order already */
	a->remote_port = bpf_ntohs(ACCEL_CTX_U32(skops, struct bpf_sock_ops, remote_port) >> 16);
	/* An AF_INET6 socket talking IPv4 sees IPv4-mapped addresses: IPv4 all the same. */
	a->flags = a->remote[0] == 0 && a->remote[1] == 0 && a->remote[2] == bpf_htonl(0xffff)
		       ? KMESH_CONN_F_V4
		       : 0;
	return 0;
}

static __always_inline void tel_put_addrs(struct kmesh_conn_event *ev, const struct tel_addrs *a)
{
	__builtin_memcpy(ev->local_addr, a->local, 16);
	__builtin_memcpy(ev->remote_addr, a->remote, 16);
	ev->local_port = a->local_port;
	ev->remote_port = a->remote_port;
}

/* Whether sk_msg_accel redirects this socket's sends (its bytes then bypass the TCP counters). */
static __always_inline bool tel_accelerated(const struct bpf_sock_ops *skops)
{
	struct kmesh_accel_key key = {};

	if (!kmesh_accel_enabled)
		return false;
	if (accel_key_ops(skops, &key, false))
		return false;
	return accel_state_of(&key) == KMESH_ACCEL_ON;
}

/*
 * What connect() was given, for a client socket: km_sock_peer (written by connect4/6 when they
 * translated a VIP) names it, if the socket is still connected to the endpoint recorded there.
 */
static __always_inline void tel_orig(struct bpf_sock *sk, struct kmesh_conn *conn,
				     const struct tel_addrs *a)
{
	struct kmesh_sock_peer *peer;
	struct kmesh_wp_sock *wp;

	peer = bpf_sk_storage_get(&km_sock_peer, sk, 0, 0);
	if (peer && (peer->flags & KMESH_SOCK_PEER_VALID) &&
	    bpf_ntohs(peer->backend_port) == a->remote_port &&
	    addr16_eq(peer->backend_addr, (const __u8 *)a->remote)) {
		__builtin_memcpy(conn->orig_addr, peer->vip_addr, 16);
		conn->orig_port = bpf_ntohs(peer->vip_port);
		conn->flags |= KMESH_CONN_F_TRANSLATED;
	}
	wp = bpf_sk_storage_get(&km_wp_sk, sk, 0, 0);
	if (wp && wp->state != KMESH_WP_SOCK_NONE)
		conn->flags |= KMESH_CONN_F_WAYPOINT;
}

/*
 * An enrolled pod's connection is established (role: which end we are). Tracks it in km_conn and
 * reports OPEN. Returns 0, -EOPNOTSUPP (not tracked: loopback, monitoring off), -ENOMEM (no socket
 * storage: counted, the connection just goes unreported).
 */
static __always_inline int tel_established(struct bpf_sock_ops *skops, struct bpf_sock *sk,
					   __u8 role)
{
	struct kmesh_conn_event *ev;
	struct kmesh_conn *conn;
	struct tel_addrs a = {};
	int err;

	if (!tel_enabled())
		return -EOPNOTSUPP;
	err = tel_addrs_ops(skops, &a);
	if (err)
		return err;
	conn = bpf_sk_storage_get(&km_conn, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!conn) {
		tel_stat_inc(KMESH_TEL_STAT_NO_STORAGE);
		return -ENOMEM;
	}
	conn->start_ns = bpf_ktime_get_ns();
	/* The handshake already moved the counters (a SYN counts one in bytes_acked): the
	 * connection's bytes start from here. */
	conn->reported_sent = skops->bytes_acked;
	conn->reported_recv = skops->bytes_received;
	conn->role = role;
	conn->closed = 0;
	conn->flags = a.flags;
	conn->orig_port = 0;
	__builtin_memset(conn->orig_addr, 0, 16);
	if (role == KMESH_CONN_ROLE_SOURCE)
		tel_orig(sk, conn, &a);
	/* The close is reported from the state callback. OR-ed in: accel and the waypoint path set
	 * their own callbacks (RTT, STATE) on the same socket, before or after us. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	tel_stat_inc(KMESH_TEL_STAT_TRACKED);
	/* A full ring buffer loses only the OPEN: the connection stays tracked, so the iterator and
	 * the close report its bytes once there is room again. */
	ev = tel_reserve();
	if (!ev)
		return -ENOSPC;
	tel_put_addrs(ev, &a);
	ev->cookie = bpf_get_socket_cookie(skops);
	ev->type = KMESH_CONN_EV_OPEN;
	ev->role = role;
	ev->flags = conn->flags;
	__builtin_memcpy(ev->orig_addr, conn->orig_addr, 16);
	ev->orig_port = conn->orig_port;
	tel_submit(ev);
	return 0;
}

/*
 * The socket reached TCP_CLOSE (from any state: FIN handshake, RST, timeout). Reports CLOSE with
 * the bytes not reported yet, once. Runs before accel's state callback, which forgets
 * km_accel_state.
 */
static __always_inline int tel_state_change(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct kmesh_conn_event *ev;
	struct kmesh_conn *conn;
	struct tel_addrs a = {};
	__u64 sent, recv;
	__u32 flags;

	if (!kmesh_tel_supported || skops->args[1] != BPF_TCP_CLOSE)
		return 0;
	conn = bpf_sk_storage_get(&km_conn, sk, 0, 0);
	if (!conn || conn->closed)
		return 0;
	/* Marked first: the iterator skips closed sockets, whatever happens to the event. */
	conn->closed = 1;
	sent = tel_claim(&conn->reported_sent, skops->bytes_acked);
	recv = tel_claim(&conn->reported_recv, skops->bytes_received);
	flags = conn->flags;
	if (tel_accelerated(skops))
		flags |= KMESH_CONN_F_ACCEL;
	if (tel_addrs_ops(skops, &a))
		return -EOPNOTSUPP;
	ev = tel_reserve();
	if (!ev)
		return -ENOSPC;
	tel_put_addrs(ev, &a);
	ev->cookie = bpf_get_socket_cookie(skops);
	ev->type = KMESH_CONN_EV_CLOSE;
	ev->role = conn->role;
	ev->flags = flags;
	ev->duration_ns = ev->ts_ns - conn->start_ns;
	ev->sent_bytes = sent;
	ev->recv_bytes = recv;
	__builtin_memcpy(ev->orig_addr, conn->orig_addr, 16);
	ev->orig_port = conn->orig_port;
	tel_submit(ev);
	return 0;
}

/*
 * sk_lookup refused an inbound SYN (authorization): no socket exists, so the event is built from
 * the lookup's addresses (src = the client, local = the pod). src/dst are 16-byte forms.
 */
static __always_inline void tel_denied(const __u8 src[16], __u16 src_port, const __u8 dst[16],
				       __u16 dst_port, bool v4)
{
	struct kmesh_conn_event *ev;

	if (!tel_enabled())
		return;
	ev = tel_reserve();
	if (!ev)
		return;
	ev->type = KMESH_CONN_EV_DENIED;
	ev->role = KMESH_CONN_ROLE_DESTINATION;
	__builtin_memcpy(ev->local_addr, dst, 16);
	__builtin_memcpy(ev->remote_addr, src, 16);
	ev->local_port = dst_port;
	ev->remote_port = src_port;
	ev->flags = v4 ? KMESH_CONN_F_V4 : 0;
	tel_submit(ev);
}

#endif
