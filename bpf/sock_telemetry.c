// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Periodic byte reports of open connections (issue 11, docs/telemetry.md "Kernel events").
 *
 * iter/tcp: the agent runs it every flush interval (and before a scrape) in each enrolled pod's
 * network namespace (a TCP iterator walks the sockets of the netns it is created in). For each
 * socket tracked in km_conn, not closed yet, whose counters moved since its last report, it emits
 * an UPDATE with the bytes since then and takes them as reported. Long-lived connections thus show
 * their bytes while open, with nothing added to the per-packet path: the kernel counts
 * bytes_acked / bytes_received in tcp_sock anyway, and we only read them here.
 *
 * Why not iter/bpf_sk_storage_map over km_conn (one walk for the node, no netns switching): the
 * kernel this was tested on (6.18) refuses to load any such iterator (EPERM before verification).
 *
 * The iterator holds the socket's hash bucket, not the socket lock: the close callback may run at
 * the same time on another CPU; tel_claim makes each byte reported once.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/telemetry.h"

/* 16-byte addresses of a socket from its sock_common (IPv4 as IPv4-mapped). */
static __always_inline int iter_conn_addrs(const struct sock_common *skc, struct tel_addrs *a)
{
	__u16 family = skc->skc_family;

	if (family == AF_INET) {
		accel_v4mapped(a->local, skc->skc_rcv_saddr);
		accel_v4mapped(a->remote, skc->skc_daddr);
	} else if (family == AF_INET6) {
		__builtin_memcpy(a->local, &skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(a->remote, &skc->skc_v6_daddr, 16);
	} else {
		return -EOPNOTSUPP;
	}
	a->local_port = skc->skc_num; /* host order */
	a->remote_port = bpf_ntohs(skc->skc_dport);
	return 0;
}

/* Reports one socket's bytes since its last report. Returns 0, or -errno when nothing was sent. */
static __always_inline int iter_conn_report_one(struct tcp_sock *tp, struct kmesh_conn *conn)
{
	struct kmesh_conn_event *ev;
	struct tel_addrs a = {};
	__u64 acked, received, sent, recv;

	if (conn->closed)
		return -ENOENT;
	acked = tp->bytes_acked;
	received = tp->bytes_received;
	/* Cheap test first: most sockets of a busy node are idle between two flushes. */
	if (acked <= conn->reported_sent && received <= conn->reported_recv)
		return -EAGAIN;
	if (iter_conn_addrs(&tp->inet_conn.icsk_inet.sk.__sk_common, &a))
		return -EOPNOTSUPP;
	/* Reserved before claiming: a full ring buffer leaves the bytes to the next report (or the
	 * close) instead of losing them with the event. */
	ev = tel_reserve();
	if (!ev)
		return -ENOSPC;
	sent = tel_claim(&conn->reported_sent, acked);
	recv = tel_claim(&conn->reported_recv, received);
	if (!sent && !recv) { /* the close callback got there first */
		bpf_ringbuf_discard(ev, 0);
		return -EAGAIN;
	}
	tel_put_addrs(ev, &a);
	ev->cookie = bpf_get_socket_cookie(tp);
	ev->type = KMESH_CONN_EV_UPDATE;
	ev->role = conn->role;
	ev->flags = conn->flags;
	ev->sent_bytes = sent;
	ev->recv_bytes = recv;
	__builtin_memcpy(ev->orig_addr, conn->orig_addr, 16);
	ev->orig_port = conn->orig_port;
	tel_submit(ev);
	return 0;
}

SEC("iter/tcp")
int iter_conn_report(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct kmesh_conn *conn;
	struct tcp_sock *tp;

	if (!kmesh_tel_supported || !skc)
		return 0;
	/* Full sockets only: request and time-wait sockets have no storage (and reported already).
	 */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	conn = bpf_sk_storage_get(&km_conn, tp, 0, 0);
	if (!conn)
		return 0; /* not tracked: another pod's socket, loopback, monitoring was off */
	iter_conn_report_one(tp, conn);
	return 0;
}
