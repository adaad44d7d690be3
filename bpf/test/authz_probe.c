// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test-only program: runs the authz evaluator (bpf/include/authz.h) as an sk_lookup program, so a
 * test can feed it compiled tables and replay decisions with BPF_PROG_TEST_RUN (the production
 * entry, bpf/sock_lookup.c, is a separate program around the same evaluator).
 * Returns SK_PASS for allow, SK_DROP for deny.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/authz.h"

#define AF_INET 2

/* Set by the test: whether checks count (new connection) or not (re-check). */
volatile bool probe_count = true;

SEC("sk_lookup")
int authz_probe(struct bpf_sk_lookup *ctx)
{
	__u8 src[16] = {}, dst[16] = {};
	/* Every context field is read up front, unconditionally: the verifier refuses a ctx access
	 * through a pointer the compiler offset differently per branch. */
	__u32 r4 = ctx->remote_ip4, l4 = ctx->local_ip4;
	__u32 r6[4] = {ctx->remote_ip6[0], ctx->remote_ip6[1], ctx->remote_ip6[2],
		       ctx->remote_ip6[3]};
	__u32 l6[4] = {ctx->local_ip6[0], ctx->local_ip6[1], ctx->local_ip6[2], ctx->local_ip6[3]};

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		src[10] = src[11] = dst[10] = dst[11] = 0xff;
		__builtin_memcpy(&src[12], &r4, 4);
		__builtin_memcpy(&dst[12], &l4, 4);
	} else {
		__builtin_memcpy(src, r6, 16);
		__builtin_memcpy(dst, l6, 16);
	}
	return authz_check(src, dst, (__u16)ctx->local_port, probe_count) == KMESH_AUTHZ_ALLOW
		   ? SK_PASS
		   : SK_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
