/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Local rate limit (kernel-native mode; kmesh_abi.h, "Local rate limit"): a token bucket per
 * client pod and limit id, one token per new connection. The refill and the take run under the
 * bucket's spin lock: N concurrent connects against B tokens admit exactly B (Kmesh's
 * read-modify-write without a lock can admit more, and never refuses anyway).
 */
#ifndef KMESH_BPF_RATELIMIT_H
#define KMESH_BPF_RATELIMIT_H

#include "maps.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

/* Returns 0 (a token taken, or no bucket configured) or -ECONNREFUSED (bucket empty). */
static __always_inline int ratelimit_take(struct bpf_sock_addr *ctx, __u32 limit_id)
{
	struct kmesh_ratelimit_key key = {};
	struct kmesh_ratelimit_value *b;
	const struct kmesh_limit_cfg *cfg_ptr = bpf_map_lookup_elem(&km_limit_cfg, &limit_id);
	struct kmesh_limit_cfg cfg;
	__u64 now, n;
	int ret = 0;

	if (!cfg_ptr)
		return 0;
	cfg = *cfg_ptr;
	if (cfg.max_tokens == 0 || cfg.fill_interval_ns == 0)
		return 0;
	key.netns_cookie = bpf_get_netns_cookie(ctx);
	key.limit_id = limit_id;
	now = bpf_ktime_get_ns();
	b = bpf_map_lookup_elem(&km_ratelimit, &key);
	if (!b) {
		/* A new bucket starts full, as Envoy's. NOEXIST: a concurrent first connect of the
		 * same pod may have made it; both then take from that one below. */
		struct kmesh_ratelimit_value fresh = {};

		fresh.tokens = cfg.max_tokens;
		fresh.last_fill_ns = now;
		bpf_map_update_elem(&km_ratelimit, &key, &fresh, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&km_ratelimit, &key);
		if (!b) {
			stat_inc(KMESH_STAT_RL_UNTRACKED);
			return 0;
		}
	}
	bpf_spin_lock(&b->lock);
	if (now > b->last_fill_ns) {
		n = (now - b->last_fill_ns) / cfg.fill_interval_ns;
		if (n) {
			/* Whole intervals only; the remainder carries over to the next refill. */
			b->last_fill_ns += n * cfg.fill_interval_ns;
			if (n > cfg.max_tokens)
				n = cfg.max_tokens;
			b->tokens += n * cfg.tokens_per_fill;
			if (b->tokens > cfg.max_tokens)
				b->tokens = cfg.max_tokens;
		}
	}
	if (b->tokens)
		b->tokens--;
	else
		ret = -ECONNREFUSED;
	bpf_spin_unlock(&b->lock);
	if (ret)
		stat_inc(KMESH_STAT_RATE_LIMITED);
	return ret;
}

#endif
