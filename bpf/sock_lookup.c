// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * L4 authorization at the destination pod (issue 9 part 1).
 *
 * sk_lookup/sk_lookup_authz: attached by kmesh-cni (or the agent's reconciler) to each enrolled
 * pod's network namespace. It runs when the kernel looks for a listener for an inbound TCP SYN;
 * SK_DROP makes that lookup fail, so the kernel answers the SYN with an RST and the client gets
 * ECONNREFUSED at once (never a silent timeout). It never assigns a socket: the normal lookup
 * continues when it passes.
 *
 * iter/tcp/iter_tcp_authz: run by the agent inside each enrolled pod's netns after a policy
 * change; re-checks every inbound established connection and closes the ones now denied with the
 * bpf_sock_destroy kfunc (kernel >= 6.5; the agent does not load it otherwise).
 *
 * Addresses are passed to authz_check as 16 bytes, IPv4 as ::ffff:a.b.c.d, so a v4 client, a v6
 * client and a v4 client of a dual-stack listener are all one key shape.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/authz.h"
/* A refused SYN is reported as a DENIED connection event (docs/telemetry.md). */
#include "include/telemetry.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif
#ifndef SK_DROP
#define SK_DROP 0
#define SK_PASS 1
#endif
#ifndef EAFNOSUPPORT
#define EAFNOSUPPORT 97
#endif
#ifndef EACCES
#define EACCES 13
#endif

/* TCP states (include/net/tcp_states.h) */
#define KM_TCP_ESTABLISHED 1
#define KM_TCP_CLOSE_WAIT  8
#define KM_TCP_LISTEN	   10

static __always_inline void addr_v4_mapped(__u8 out[16], __u32 addr_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr_be, 4);
}

static __always_inline void addr_v6(__u8 out[16], const __u32 addr_be[4])
{
	__builtin_memcpy(out, addr_be, 16);
}

/* Workers: 0 allows, -EACCES denies. */
static __always_inline int sk_lookup_authz_v4(const struct bpf_sk_lookup *ctx)
{
	__u8 src[16], dst[16];

	addr_v4_mapped(src, ctx->remote_ip4);
	addr_v4_mapped(dst, ctx->local_ip4);
	if (authz_check(src, dst, (__u16)ctx->local_port, true) != KMESH_AUTHZ_DENY)
		return 0;
	tel_denied(src, bpf_ntohs(ctx->remote_port), dst, (__u16)ctx->local_port, true);
	return -EACCES;
}

static __always_inline int sk_lookup_authz_v6(const struct bpf_sk_lookup *ctx)
{
	__u8 src[16], dst[16];
	__u32 remote[4], local[4];

	/* The context fields are read one word at a time (the verifier refuses wider loads). */
	remote[0] = ctx->remote_ip6[0];
	remote[1] = ctx->remote_ip6[1];
	remote[2] = ctx->remote_ip6[2];
	remote[3] = ctx->remote_ip6[3];
	local[0] = ctx->local_ip6[0];
	local[1] = ctx->local_ip6[1];
	local[2] = ctx->local_ip6[2];
	local[3] = ctx->local_ip6[3];
	addr_v6(src, remote);
	addr_v6(dst, local);
	if (authz_check(src, dst, (__u16)ctx->local_port, true) != KMESH_AUTHZ_DENY)
		return 0;
	tel_denied(src, bpf_ntohs(ctx->remote_port), dst, (__u16)ctx->local_port, false);
	return -EACCES;
}

static __always_inline bool sk_lookup_remote_is_zero(const struct bpf_sk_lookup *ctx)
{
	if (ctx->family == AF_INET)
		return ctx->remote_ip4 == 0;
	return (ctx->remote_ip6[0] | ctx->remote_ip6[1] | ctx->remote_ip6[2] |
		ctx->remote_ip6[3]) == 0;
}

SEC("sk_lookup")
int sk_lookup_authz(struct bpf_sk_lookup *ctx)
{
	int ret;

	/* UDP and others are not enforced (Istio's L4 policy is TCP). */
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	/*
	 * A lookup made by a BPF program (connect4's bpf_sk_lookup_tcp asking whether the caller's
	 * netns serves the waypoint port) is no connection to authorize, and refusing it would make
	 * a waypoint redirect its own traffic. It is told apart by what no packet has: no ingress
	 * device and an all-zero source. Port 0 alone is not enough: a raw socket can send a SYN
	 * from port 0, and it must meet the policies like any other.
	 */
	if (ctx->remote_port == 0 && ctx->ingress_ifindex == 0 && sk_lookup_remote_is_zero(ctx))
		return SK_PASS;
	if (ctx->family == AF_INET)
		ret = sk_lookup_authz_v4(ctx);
	else if (ctx->family == AF_INET6)
		ret = sk_lookup_authz_v6(ctx);
	else
		ret = -EAFNOSUPPORT;
	return ret == -EACCES ? SK_DROP : SK_PASS;
}

/*
 * Close-on-change. The iterator sees the netns it was created in (the agent creates it after
 * setns into the pod's netns). Listening sockets come first (listening hash, then established
 * hash), so local ports with a listener are noted in this pass's generation; an established socket
 * whose local port has a listener is an inbound (accepted) connection and is re-checked. Outbound
 * connections of the pod (local ephemeral port) are never touched: they are the destination's
 * business.
 */
__u32 authz_iter_gen;
__u32 authz_listen_gen[65536];

extern int bpf_sock_destroy(struct sock_common *sk) __ksym __weak;

/* One line per closed connection, read by the agent (agent/src/policy/closer.cpp). */
struct authz_closed_record {
	__u8 src[16];
	__u8 dst[16];
	__u16 dst_port;
	__u16 family;
	__s32 err; /* bpf_sock_destroy's result */
};

static __always_inline int iter_tcp_addrs(const struct sock_common *skc, __u8 src[16], __u8 dst[16])
{
	__u16 family = skc->skc_family;

	if (family == AF_INET) {
		addr_v4_mapped(src, skc->skc_daddr);
		addr_v4_mapped(dst, skc->skc_rcv_saddr);
		return 0;
	}
	if (family == AF_INET6) {
		__builtin_memcpy(src, &skc->skc_v6_daddr, 16);
		__builtin_memcpy(dst, &skc->skc_v6_rcv_saddr, 16);
		return 0;
	}
	return -EAFNOSUPPORT;
}

SEC("iter/tcp")
int iter_tcp_authz(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct authz_closed_record rec = {};
	__u16 port;
	__u8 state;

	if (ctx->meta->seq_num == 0)
		authz_iter_gen++;
	if (!skc)
		return 0;
	state = skc->skc_state;
	port = skc->skc_num;
	if (state == KM_TCP_LISTEN) {
		authz_listen_gen[port] = authz_iter_gen;
		return 0;
	}
	if (state != KM_TCP_ESTABLISHED && state != KM_TCP_CLOSE_WAIT)
		return 0;
	if (authz_listen_gen[port] != authz_iter_gen)
		return 0;
	if (iter_tcp_addrs(skc, rec.src, rec.dst) < 0)
		return 0;
	if (authz_check(rec.src, rec.dst, port, false) != KMESH_AUTHZ_DENY)
		return 0;
	rec.dst_port = port;
	rec.family = skc->skc_family;
	rec.err = bpf_sock_destroy(skc);
	if (rec.err == 0)
		authz_count_closed(); /* per policy and in total, for the admin server */
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}
