// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * cgroup/connect4 and cgroup/connect6: service VIP -> endpoint translation at connect() time.
 *
 * These programs are attached by kmesh-cni to each enrolled pod's cgroup, so pods that are not in
 * the mesh never run them. Each hook is a thin entry around a worker that returns 0 or -errno.
 *
 * A destination with a waypoint (include/waypoint.h) is first rewritten to the waypoint's address
 * and port 15019, then goes through the same frontend lookup (a waypoint named by hostname is a
 * service VIP, whose pods are picked like any endpoint); the original destination is kept in the
 * socket's storage for sk_msg_tlv (waypoint.c).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/backend.h"
#include "include/endpoint.h"
#include "include/frontend.h"
#include "include/service.h"
#include "include/split.h"
#include "include/circuit.h"
#include "include/ratelimit.h"
#include "include/udp.h"
#include "include/affinity.h"

#define SOCK_STREAM  1
#define ENOENT	     2
#define ENOMEM	     12
#define ECONNREFUSED 111
#define EHOSTUNREACH 113

#include "include/waypoint.h"

#define SYS_REJECT  0
#define SYS_PROCEED 1

/*
 * The agent may shrink a service while we read it: we can load a count of N, then the agent
 * moves entry N into a hole, decrements the count and deletes entry N before our endpoint lookup
 * runs. Picking again with a freshly read count is enough; the last try takes index 1, which
 * exists whenever the count is non-zero.
 */
#define PICK_ATTEMPTS 3

/*
 * Set by the agent before load: false on kernels without bpf_set_retval (< 5.18). The verifier
 * then prunes the call as dead code, and a refused connect fails with the default EPERM.
 */
const volatile bool kmesh_has_set_retval = true;

/*
 * Picks an endpoint for *key and fills addr/port, and *picked with its backend id. Returns 0,
 * -ENOENT (not ours) or -errno. ctx is the calling hook's (connect or sendmsg): per-client state
 * such as session affinity keys on it.
 *
 * Every map value is copied to the stack before the next lookup: since 6.1 a hash element freed by
 * a concurrent agent update can be reused at once (bpf_mem_alloc), so a pointer held across another
 * helper call may already show someone else's value.
 */
static __always_inline int sock_select_endpoint(struct bpf_sock_addr *ctx,
						const struct kmesh_frontend_key *key, __u32 family,
						__u32 addr[4], __u16 *port, __u32 *picked)
{
	const struct kmesh_frontend_value *fe_ptr = frontend_lookup(key);
	struct kmesh_frontend_value fe;

	if (!fe_ptr)
		return -ENOENT;
	fe = *fe_ptr;
	/* Envoy's local_ratelimit filter runs when the listener accepts, before tcp_proxy picks a
	 * cluster: the token is taken first. TCP only (the filter limits connections). */
	if ((fe.flags & KMESH_FRONTEND_LIMITED) && ctx->type == SOCK_STREAM) {
		int ret = ratelimit_take(ctx, fe.limit_id);

		if (ret)
			return ret;
	}
	/* A weighted split picks the service first; from here on the frontend stands for it. */
	if (fe.flags & KMESH_FRONTEND_SPLIT) {
		__u32 service_id = 0;
		int ret = split_pick(fe.service_id, &service_id);

		if (ret)
			return ret;
		fe.service_id = service_id;
	}

#pragma unroll
	for (int attempt = 0; attempt < PICK_ATTEMPTS; attempt++) {
		const struct kmesh_service_value *svc_ptr = service_lookup(fe.service_id);
		const struct kmesh_endpoint_value *ep;
		const struct kmesh_backend_value *be;
		struct kmesh_service_value svc;
		__u32 count = 0, index, backend_id, flags;
		__u16 be_port;
		int prio;

		/* Frontends are written after and deleted before their service, so this is a
		 * service in the middle of removal: leave the connect alone. */
		if (!svc_ptr)
			return -ENOENT;
		__builtin_memcpy(&svc, svc_ptr, sizeof(svc));

		prio = service_pick_prio(&svc, family, &count);
		if (prio < 0) {
			__u32 other = 0;

			/* Endpoints exist, none of this socket's family: the host is unreachable
			 * from here, which is not the same as a service without endpoints. */
			if (service_pick_prio(&svc, family ^ 1, &other) >= 0) {
				stat_inc(KMESH_STAT_NO_FAMILY);
				return -EHOSTUNREACH;
			}
			stat_inc(KMESH_STAT_NO_ENDPOINT);
			return -ECONNREFUSED;
		}
		/* Session affinity: the backend this client had, while fresh, still a member with
		 * weight > 0 and of this family; otherwise a fresh pick, remembered below. Checked
		 * on the first attempt only: a retry means the agent is rewriting this service. */
		if (attempt == 0 && (svc.flags & KMESH_SERVICE_AFFINITY)) {
			backend_id = affinity_reuse(ctx, fe.service_id, &svc, family, addr);
			if (backend_id) {
				int ret = cb_reserve(ctx, fe.service_id, svc.flags,
						     svc.max_connections, backend_id);

				if (ret)
					return ret;
				*port = backend_target_port(backend_id, key, &fe);
				*picked = backend_id;
				stat_inc(KMESH_STAT_TRANSLATED);
				return 0;
			}
		}
		/* Weighted backends hold several slots, so a uniform index is a weighted pick. */
		index =
		    service_pick_index(&svc, fe.service_id, count, attempt == PICK_ATTEMPTS - 1);
		ep = endpoint_lookup(fe.service_id, family, prio, index);
		if (!ep) {
			stat_inc(KMESH_STAT_RACE_RETRY);
			continue;
		}
		backend_id = ep->backend_id;
		be = backend_lookup(backend_id);
		if (!be) {
			stat_inc(KMESH_STAT_RACE_RETRY);
			continue;
		}
		flags = be->flags;
		be_port = be->port;
		__builtin_memcpy(addr, family == KMESH_FAMILY_V4 ? be->addr4 : be->addr6, 16);
		/* The per-family lists only hold backends of that family; a backend that just lost
		 * it is on its way out of the list: pick again. */
		if (!backend_has_family(flags, family)) {
			stat_inc(KMESH_STAT_RACE_RETRY);
			continue;
		}
		if ((fe.flags & KMESH_FRONTEND_BACKEND_PORT) && (flags & KMESH_BACKEND_HAS_PORT))
			*port = be_port; /* read with the backend above: no second lookup */
		else
			*port = backend_target_port(backend_id, key, &fe);
		/* Circuit breaking last: nothing after it refuses, so a slot is only taken for a
		 * connect that goes ahead (and a refused connect's socket releases it at close). */
		{
			int ret = cb_reserve(ctx, fe.service_id, svc.flags, svc.max_connections,
					     backend_id);

			if (ret)
				return ret;
		}
		*picked = backend_id; /* UDP reverse entries re-check it (docs/udp.md) */
		if (svc.flags & KMESH_SERVICE_AFFINITY)
			affinity_remember(ctx, fe.service_id, family, backend_id);
		stat_inc(KMESH_STAT_TRANSLATED);
		return 0;
	}
	return -ECONNREFUSED;
}

static __always_inline bool sock_is_tcp(const struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

/* A connected UDP socket keeps the endpoint picked here for its life (the kernel keeps the peer):
 * docs/udp.md. Waypoints are not used for UDP: their listener reads a TCP stream (Kmesh's TLV). */
static __always_inline bool sock_is_udp(const struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
}

/* connect() fails with the worker's errno where bpf_set_retval exists (5.18+), else with EPERM. */
static __always_inline int sock_verdict(int ret)
{
	if (ret == 0 || ret == -ENOENT)
		return SYS_PROCEED;
	if (kmesh_has_set_retval)
		bpf_set_retval(ret);
	return SYS_REJECT;
}

static __always_inline int sock4_connect(struct bpf_sock_addr *ctx)
{
	struct kmesh_frontend_key key = {}, orig;
	__u32 addr[4], dst, backend_id = 0;
	__u16 port, lookup_port = 0, orig_port;
	int ret, redirected = 0;
	bool tcp = sock_is_tcp(ctx);

	if (!tcp && !sock_is_udp(ctx))
		return -ENOENT;
	dst = ctx->user_ip4;
	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	/* memcpy, not a __u32 store: addr[12] is only 2-byte aligned on the stack. */
	__builtin_memcpy(&key.addr[12], &dst, sizeof(dst));
	key.port = (__u16)ctx->user_port;

	orig = key;
	if (tcp) {
		redirected = wp_select(ctx, &key, KMESH_FAMILY_V4, &lookup_port);
		if (redirected < 0)
			return redirected;
	}
	ret = sock_select_endpoint(ctx, &key, KMESH_FAMILY_V4, addr, &port, &backend_id);
	if (ret == -ENOENT && redirected && lookup_port) {
		/* Istio's waypoint service: pick a pod through its HBONE port, connect on 15019. */
		orig_port = key.port;
		key.port = lookup_port;
		ret = sock_select_endpoint(ctx, &key, KMESH_FAMILY_V4, addr, &port, &backend_id);
		port = orig_port;
		key.port = orig_port;
	}
	if (ret == -ENOENT && redirected) { /* a waypoint address without a frontend: as is */
		__builtin_memcpy(addr, key.addr, 16);
		port = key.port;
		ret = 0;
	}
	if (ret == -ENOENT) {
		peer_forget(ctx);
		return tcp ? wp_remember(ctx, false, orig.addr, orig.port, true) ?: -ENOENT
			   : -ENOENT;
	}
	if (ret)
		return ret;
	if (tcp) {
		ret = wp_remember(ctx, redirected, orig.addr, orig.port, true);
		if (ret)
			return ret;
	} else {
		udp_stat_inc(KMESH_UDP_STAT_CONNECT_XLATED);
	}
	peer_remember(ctx, orig.addr, orig.port, addr, port);
	ctx->user_ip4 = addr[3];
	ctx->user_port = port;
	return 0;
}

static __always_inline bool addr6_is_v4mapped(const __u32 addr[4])
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff);
}

static __always_inline int sock6_connect(struct bpf_sock_addr *ctx)
{
	struct kmesh_frontend_key key = {}, orig;
	__u32 dst[4], addr[4], family, backend_id = 0;
	__u16 port, lookup_port = 0, orig_port;
	int ret, redirected = 0;
	bool tcp = sock_is_tcp(ctx);

	if (!tcp && !sock_is_udp(ctx))
		return -ENOENT;
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	__builtin_memcpy(key.addr, dst, 16);
	key.port = (__u16)ctx->user_port;

	/* A dual-stack socket connecting to ::ffff:a.b.c.d goes out as IPv4 and only this hook
	 * sees it (connect4 does not run), so it needs an IPv4 endpoint, written back mapped. */
	family = addr6_is_v4mapped(dst) ? KMESH_FAMILY_V4 : KMESH_FAMILY_V6;
	orig = key;
	if (tcp) {
		redirected = wp_select(ctx, &key, family, &lookup_port);
		if (redirected < 0)
			return redirected;
	}
	ret = sock_select_endpoint(ctx, &key, family, addr, &port, &backend_id);
	if (ret == -ENOENT && redirected && lookup_port) {
		orig_port = key.port;
		key.port = lookup_port;
		ret = sock_select_endpoint(ctx, &key, family, addr, &port, &backend_id);
		port = orig_port;
		key.port = orig_port;
	}
	if (ret == -ENOENT && redirected) {
		__builtin_memcpy(addr, key.addr, 16);
		port = key.port;
		ret = 0;
	}
	/* A mapped socket's destination is IPv4 on the wire: it sends the IPv4 TLV. */
	if (ret == -ENOENT) {
		peer_forget(ctx);
		return tcp ? wp_remember(ctx, false, orig.addr, orig.port,
					 family == KMESH_FAMILY_V4)
				 ?: -ENOENT
			   : -ENOENT;
	}
	if (ret)
		return ret;
	if (tcp) {
		ret = wp_remember(ctx, redirected, orig.addr, orig.port, family == KMESH_FAMILY_V4);
		if (ret)
			return ret;
	} else {
		udp_stat_inc(KMESH_UDP_STAT_CONNECT_XLATED);
	}
	peer_remember(ctx, orig.addr, orig.port, addr, port);
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
	ctx->user_port = port;
	return 0;
}

SEC("cgroup/connect4")
int cgroup_connect4(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock4_connect(ctx));
}

SEC("cgroup/connect6")
int cgroup_connect6(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock6_connect(ctx));
}
