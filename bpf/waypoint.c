// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The TLV half of the waypoint redirect (docs/waypoint.md). cgroup/connect4|6 (sock_connect.c)
 * sent the socket to a waypoint and kept its original destination in km_wp_sk; here:
 *   cgroup_sockops  (attached to each enrolled pod's cgroup) puts such a socket into
 *                   km_wp_sockhash once it is established;
 *   sk_msg_tlv      (attached to km_wp_sockhash by the agent) prepends the original-destination
 *                   TLV to the first bytes sent, exactly once, then passes everything untouched.
 */
#include "include/waypoint.h"
/* Same-node acceleration (docs/sockmap.md) shares this sockops program: one per pod cgroup. */
#include "include/accel.h"
/* So does connection telemetry (docs/telemetry.md): open and close reports. */
#include "include/telemetry.h"
/* And circuit breaking's release of a failed or closed connection's slot. */
#include "include/circuit.h"

#define SK_DROP 0
#define SK_PASS 1

/*
 * The waypoint half: an established waypoint-bound socket goes into km_wp_sockhash. Returns 1
 * when the socket is a waypoint socket (it must then stay out of km_accel_sockhash: a socket in
 * two sockmaps with different sk_msg programs is refused with EBUSY), else 0.
 */
static __always_inline int wp_established(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct kmesh_wp_sock *st;
	__u64 cookie;

	st = bpf_sk_storage_get(&km_wp_sk, sk, 0, 0);
	if (!st || st->state != KMESH_WP_SOCK_PENDING)
		return 0;
	cookie = bpf_get_socket_cookie(skops);
	st->cookie = cookie;
	if (bpf_sock_hash_update(skops, &km_wp_sockhash, &cookie, BPF_NOEXIST)) {
		wp_stat_inc(KMESH_WP_STAT_SOCKHASH_FULL);
		return 1;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_RTT_CB_FLAG);
	return 1;
}

/*
 * The first RTT sample after the TLV went out (an ACK of data): take the socket out of the
 * sockhash (sk_msg programs may not; sockops may), so that the kernel restores its plain TCP
 * operations. Left in, every send is copied through tcp_bpf and tcp_bpf's recvmsg can answer
 * EAGAIN to a blocking recv woken by write space. Returns 1 when the socket was a waypoint socket.
 */
static __always_inline int wp_rtt(struct bpf_sock_ops *skops, struct bpf_sock *sk)
{
	struct kmesh_wp_sock *st;
	__u64 cookie;

	st = bpf_sk_storage_get(&km_wp_sk, sk, 0, 0);
	if (!st || st->state == KMESH_WP_SOCK_NONE)
		return 0;
	if (st->state != KMESH_WP_SOCK_SENT)
		return 1;
	cookie = st->cookie;
	bpf_map_delete_elem(&km_wp_sockhash, &cookie);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_RTT_CB_FLAG);
	wp_stat_inc(KMESH_WP_STAT_RELEASED);
	return 1;
}

SEC("sockops")
int cgroup_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return 1;
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		if (!wp_established(skops, sk))
			accel_active_established(skops);
		/* After the waypoint step: it decides whether the socket goes to a waypoint, which
		 * the report names. Its result never changes the connection. */
		tel_established(skops, sk, KMESH_CONN_ROLE_SOURCE);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		/* A waypoint's accepted socket never finds its client in km_accel_sockhash (the
		 * client sits in km_wp_sockhash), so it stays out too. */
		accel_passive_established(skops);
		tel_established(skops, sk, KMESH_CONN_ROLE_DESTINATION);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		if (!wp_rtt(skops, sk))
			accel_rtt(skops);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		cb_tcp_connect(skops, sk);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			cb_release(sk);
		/* Telemetry first: it asks km_accel_state whether the socket was accelerated, and
		 * accel forgets that at close. */
		tel_state_change(skops, sk);
		accel_state_change(skops);
		break;
	}
	return 1;
}

static __always_inline void tlv_header(__u8 *p, __u8 value_len)
{
	p[0] = KMESH_TLV_ORIG_DST;
	p[1] = 0;
	p[2] = 0;
	p[3] = 0;
	p[4] = value_len;
}

static __always_inline void tlv_end(__u8 *p)
{
	p[0] = KMESH_TLV_END;
	p[1] = 0;
	p[2] = 0;
	p[3] = 0;
	p[4] = 0;
}

SEC("sk_msg")
int sk_msg_tlv(struct sk_msg_md *msg)
{
	struct kmesh_wp_sock *st;
	struct bpf_sock *sk = msg->sk;
	__u8 *data, *end;

	if (!sk)
		return SK_PASS;
	st = bpf_sk_storage_get(&km_wp_sk, sk, 0, 0);
	if (!st || st->state != KMESH_WP_SOCK_PENDING)
		return SK_PASS;
	if (st->v4) {
		if (bpf_msg_push_data(msg, 0, KMESH_TLV_V4_SIZE, 0))
			goto fail;
		data = msg->data;
		end = msg->data_end;
		if (data + KMESH_TLV_V4_SIZE > end)
			goto fail;
		tlv_header(data, 6);
		__builtin_memcpy(data + 5, &st->orig_addr[12], 4);
		__builtin_memcpy(data + 9, &st->orig_port, 2);
		tlv_end(data + 11);
	} else {
		if (bpf_msg_push_data(msg, 0, KMESH_TLV_V6_SIZE, 0))
			goto fail;
		data = msg->data;
		end = msg->data_end;
		if (data + KMESH_TLV_V6_SIZE > end)
			goto fail;
		tlv_header(data, 18);
		__builtin_memcpy(data + 5, st->orig_addr, 16);
		__builtin_memcpy(data + 21, &st->orig_port, 2);
		tlv_end(data + 23);
	}
	st->state = KMESH_WP_SOCK_SENT;
	wp_stat_inc(KMESH_WP_STAT_TLV_SENT);
	return SK_PASS;
fail:
	/* Data without its TLV would be misread by the waypoint: this send fails (EACCES) instead.
	 */
	wp_stat_inc(KMESH_WP_STAT_TLV_FAILED);
	return SK_DROP;
}
