/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Istio L4 authorization for a new TCP connection to a local workload (ztunnel src/rbac.rs
 * semantics), evaluated over the tables the agent compiles (bpf/kmesh_abi.h, "authz" section;
 * agent/src/policy/compile.cpp). The kernel never compares strings: the source address maps to an
 * identity id, and each match group names the identity ids it accepts.
 *
 * Entry points for the hooks (sk_lookup on the pod netns, the socket iterator):
 *   authz_check(src, dst, dst_port, count)  -> KMESH_AUTHZ_ALLOW / KMESH_AUTHZ_DENY
 *   authz_count_closed()                    after the caller closed a connection authz_check just
 *                                           denied (count == false re-check): counts it
 *
 * Cost: a verdict cache (LRU, keyed by (src, dst, dst port), valid for one state word) serves
 * repeated connections with two lookups; a miss walks the destination's policies with bpf_loop
 * (5.17+), so the walk is bounded by the data, not by an unrolled limit.
 *
 * Every map value is copied to the stack before the next lookup: since 6.1 a freed hash element can
 * be reused at once (bpf_mem_alloc), see bpf/sock_connect.c.
 */
#ifndef KMESH_BPF_AUTHZ_H
#define KMESH_BPF_AUTHZ_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "kmesh_abi.h"

/* Per-generation capacities, set by the agent before load (its --max-authz-* flags). The arrays
 * hold two generations: generation g uses [g * per_gen, (g + 1) * per_gen). */
const volatile __u32 kmesh_authz_sets_per_gen = KMESH_AUTHZ_DEFAULT_MAX_SETS;
const volatile __u32 kmesh_authz_setpol_per_gen = KMESH_AUTHZ_DEFAULT_MAX_SETPOL;
const volatile __u32 kmesh_authz_policies_per_gen = KMESH_AUTHZ_DEFAULT_MAX_POLICIES;
const volatile __u32 kmesh_authz_rows_per_gen = KMESH_AUTHZ_DEFAULT_MAX_ROWS;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_authz_config);
	__uint(max_entries, 1);
} km_authz_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u8[16]);
	__type(value, struct kmesh_authz_ident_value);
	__uint(max_entries, KMESH_AUTHZ_DEFAULT_MAX_IDENTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_ident SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_authz_dst_key);
	__type(value, struct kmesh_authz_dst_value);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_DSTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_authz_set_value);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_SETS);
} km_authz_set SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_authz_setpol_value);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_SETPOL);
} km_authz_setpol SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_authz_policy_value);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_POLICIES);
} km_authz_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct kmesh_authz_row_value);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_ROWS);
} km_authz_row SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_authz_idset_key);
	__type(value, struct kmesh_authz_present);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_idset SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct kmesh_authz_cidr_key);
	__type(value, struct kmesh_authz_present);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_cidr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct kmesh_authz_port_key);
	__type(value, struct kmesh_authz_present);
	__uint(max_entries, 2 * KMESH_AUTHZ_DEFAULT_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} km_authz_port SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct kmesh_authz_cache_key);
	__type(value, struct kmesh_authz_cache_value);
	__uint(max_entries, KMESH_AUTHZ_DEFAULT_MAX_CACHE);
} km_authz_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_AUTHZ_DEFAULT_MAX_POLICIES *KMESH_AUTHZ_HIT_COUNT);
} km_authz_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, KMESH_AUTHZ_TOTAL_COUNT);
} km_authz_totals SEC(".maps");

/* The deciding slot of this CPU's last authz_check, for authz_count_closed (BPF programs run with
 * migration disabled, so the check and the count that follows see the same CPU's entry). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} km_authz_last SEC(".maps");

/* The walk's state, on the caller's stack; bpf_loop callbacks get a pointer to it. */
struct authz_eval {
	__u8 src[16];
	__u8 dst[16];
	__u64 state;
	__u32 gen;
	__u32 identity;
	__u32 port;
	__u32 set_first;
	__u32 row_first;
	__u32 clause_hit;
	__u32 rule_failed;
	__u32 matched;
	/* result */
	__u32 total; /* enum kmesh_authz_total */
	__u32 slot;  /* deciding policy */
	__u32 dry[KMESH_AUTHZ_CACHE_DRY];
	__u32 dry_count; /* may exceed KMESH_AUTHZ_CACHE_DRY: then not cacheable */
	__u32 error;	 /* a table entry was missing (torn read during a publish) */
	__u32 count;	 /* count dry-run matches beyond the cacheable ones as they happen */
};

static __always_inline void authz_bump(void *map, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(map, &idx);

	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

static __always_inline __u64 authz_state(void)
{
	__u32 zero = 0;
	const struct kmesh_authz_config *cfg = bpf_map_lookup_elem(&km_authz_config, &zero);

	return cfg ? *(volatile const __u64 *)&cfg->state : 0;
}

static __always_inline bool authz_cidr_has(const struct authz_eval *ev, __u32 row, __u32 kind,
					   const __u8 *addr)
{
	/* IPv4 peers are IPv4-mapped; only IPv6 peers look among the IPv6 prefixes. */
	bool v4 = addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == 0 && addr[4] == 0 &&
		  addr[5] == 0 && addr[6] == 0 && addr[7] == 0 && addr[8] == 0 && addr[9] == 0 &&
		  addr[10] == 0xff && addr[11] == 0xff;
	struct kmesh_authz_cidr_key key = {
	    .prefixlen = 32 + 128,
	    .match = KMESH_AUTHZ_MATCH_ID(ev->gen, row, kind) | (v4 ? 0 : KMESH_AUTHZ_CIDR_V6),
	};

	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&km_authz_cidr, &key) != NULL;
}

static __always_inline bool authz_port_has(const struct authz_eval *ev, __u32 row, __u32 kind)
{
	struct kmesh_authz_port_key key = {
	    .match = KMESH_AUTHZ_MATCH_ID(ev->gen, row, kind),
	    .port = (__u16)ev->port,
	};

	return bpf_map_lookup_elem(&km_authz_port, &key) != NULL;
}

/* One match group: every present field type must match, every not_ list must not. */
static __always_inline bool authz_group(const struct authz_eval *ev, __u32 row,
					const struct kmesh_authz_row_value *rv)
{
	__u32 flags = rv->flags;

	if (flags & KMESH_AUTHZ_ROW_IDENT) {
		struct kmesh_authz_idset_key key = {
		    .gen = ev->gen,
		    .idset = rv->idset,
		    .identity = ev->identity,
		};
		bool in = bpf_map_lookup_elem(&km_authz_idset, &key) != NULL;

		/* The set holds the accepted identities, or with INVERT the rejected ones. */
		if (in == !!(flags & KMESH_AUTHZ_ROW_IDENT_INVERT))
			return false;
	}
	if ((flags & KMESH_AUTHZ_ROW_SRC) &&
	    !authz_cidr_has(ev, row, KMESH_AUTHZ_KIND_SRC, ev->src))
		return false;
	if ((flags & KMESH_AUTHZ_ROW_NOT_SRC) &&
	    authz_cidr_has(ev, row, KMESH_AUTHZ_KIND_NOT_SRC, ev->src))
		return false;
	if ((flags & KMESH_AUTHZ_ROW_DST) &&
	    !authz_cidr_has(ev, row, KMESH_AUTHZ_KIND_DST, ev->dst))
		return false;
	if ((flags & KMESH_AUTHZ_ROW_NOT_DST) &&
	    authz_cidr_has(ev, row, KMESH_AUTHZ_KIND_NOT_DST, ev->dst))
		return false;
	if ((flags & KMESH_AUTHZ_ROW_PORT) && !authz_port_has(ev, row, KMESH_AUTHZ_KIND_PORT))
		return false;
	if ((flags & KMESH_AUTHZ_ROW_NOT_PORT) &&
	    authz_port_has(ev, row, KMESH_AUTHZ_KIND_NOT_PORT))
		return false;
	return true;
}

/*
 * One row of the current policy. Rows come rule by rule, clause by clause: a clause holds when one
 * of its groups matched, a rule when all its clauses held, the policy when one rule did.
 */
static long authz_row_cb(__u64 i, void *data)
{
	struct authz_eval *ev = data;
	__u32 row = ev->row_first + (__u32)i;
	__u32 idx = ev->gen * kmesh_authz_rows_per_gen + row;
	const struct kmesh_authz_row_value *ptr = bpf_map_lookup_elem(&km_authz_row, &idx);
	struct kmesh_authz_row_value rv;

	if (!ptr) {
		ev->error = 1;
		return 1;
	}
	rv = *ptr;
	if (rv.flags & KMESH_AUTHZ_ROW_ALWAYS) {
		ev->matched = 1;
		return 1;
	}
	if (!ev->rule_failed && !ev->clause_hit && authz_group(ev, row, &rv))
		ev->clause_hit = 1;
	if (rv.flags & KMESH_AUTHZ_ROW_END_CLAUSE) {
		if (!ev->clause_hit)
			ev->rule_failed = 1;
		ev->clause_hit = 0;
	}
	if (rv.flags & KMESH_AUTHZ_ROW_END_RULE) {
		if (!ev->rule_failed) {
			ev->matched = 1;
			return 1;
		}
		ev->rule_failed = 0;
	}
	return 0;
}

/*
 * One policy of the destination's set. The set lists dry-run policies first (all evaluated and
 * remembered), then DENY (the first match decides), then ALLOW (the first match decides).
 */
static long authz_policy_cb(__u64 i, void *data)
{
	struct authz_eval *ev = data;
	__u32 idx = ev->gen * kmesh_authz_setpol_per_gen + ev->set_first + (__u32)i;
	const struct kmesh_authz_setpol_value *sp = bpf_map_lookup_elem(&km_authz_setpol, &idx);
	const struct kmesh_authz_policy_value *pp;
	struct kmesh_authz_policy_value pol;

	if (!sp) {
		ev->error = 1;
		return 1;
	}
	idx = ev->gen * kmesh_authz_policies_per_gen + sp->policy;
	pp = bpf_map_lookup_elem(&km_authz_policy, &idx);
	if (!pp) {
		ev->error = 1;
		return 1;
	}
	pol = *pp;
	if (pol.rows == 0)
		return 0; /* no rules: never matches */
	ev->row_first = pol.first_row;
	ev->clause_hit = 0;
	ev->rule_failed = 0;
	ev->matched = 0;
	bpf_loop(pol.rows, authz_row_cb, ev, 0);
	if (ev->error || !ev->matched)
		return ev->error ? 1 : 0;
	if (pol.flags & KMESH_AUTHZ_POLICY_DRY_RUN) {
		__u32 n = ev->dry_count;

		if (n < KMESH_AUTHZ_CACHE_DRY)
			ev->dry[n] = pol.slot;
		else if (ev->count)
			authz_bump(&km_authz_hits,
				   pol.slot * KMESH_AUTHZ_HIT_COUNT + KMESH_AUTHZ_HIT_DRY_RUN);
		ev->dry_count = n + 1;
		return 0;
	}
	ev->slot = pol.slot;
	ev->total = (pol.flags & KMESH_AUTHZ_POLICY_DENY) ? KMESH_AUTHZ_TOTAL_DENIED_POLICY
							  : KMESH_AUTHZ_TOTAL_ALLOWED;
	return 1;
}

#define AUTHZ_NOT_OURS 2

/* The cold path: walks the destination's policy set in generation (state & 1). */
static __always_inline int authz_evaluate(struct authz_eval *ev)
{
	struct kmesh_authz_dst_key dk = {.gen = ev->gen};
	const struct kmesh_authz_dst_value *dv;
	const struct kmesh_authz_set_value *sv;
	const struct kmesh_authz_ident_value *iv;
	struct kmesh_authz_set_value set;
	__u32 idx;

	__builtin_memcpy(dk.addr, ev->dst, 16);
	dv = bpf_map_lookup_elem(&km_authz_dst, &dk);
	if (!dv)
		return AUTHZ_NOT_OURS;
	idx = ev->gen * kmesh_authz_sets_per_gen + dv->set;
	sv = bpf_map_lookup_elem(&km_authz_set, &idx);
	if (!sv) {
		ev->error = 1;
		return 0;
	}
	set = *sv;
	iv = bpf_map_lookup_elem(&km_authz_ident, ev->src);
	ev->identity = iv ? iv->identity : 0;

	ev->set_first = set.first;
	ev->slot = KMESH_AUTHZ_NO_SLOT;
	ev->dry[0] = KMESH_AUTHZ_NO_SLOT;
	ev->dry[1] = KMESH_AUTHZ_NO_SLOT;
	ev->dry_count = 0;
	ev->total = (set.flags & KMESH_AUTHZ_SET_HAS_ALLOW) ? KMESH_AUTHZ_TOTAL_DENIED_NO_ALLOW
							    : KMESH_AUTHZ_TOTAL_ALLOWED;
	bpf_loop(set.count, authz_policy_cb, ev, 0);
	return 0;
}

static __always_inline void authz_count(__u32 total, __u32 slot, const __u32 *dry)
{
	authz_bump(&km_authz_totals, total);
	if (slot != KMESH_AUTHZ_NO_SLOT)
		authz_bump(&km_authz_hits, slot * KMESH_AUTHZ_HIT_COUNT + KMESH_AUTHZ_HIT_MATCHED);
#pragma unroll
	for (int k = 0; k < KMESH_AUTHZ_CACHE_DRY; k++)
		if (dry[k] != KMESH_AUTHZ_NO_SLOT)
			authz_bump(&km_authz_hits,
				   dry[k] * KMESH_AUTHZ_HIT_COUNT + KMESH_AUTHZ_HIT_DRY_RUN);
}

static __always_inline void authz_remember(__u32 slot)
{
	__u32 zero = 0;
	__u32 *last = bpf_map_lookup_elem(&km_authz_last, &zero);

	if (last)
		*last = slot;
}

/* Verdict for a TCP connection to a local workload. src, dst: 16-byte addresses, IPv4 stored
 * IPv4-mapped (::ffff:a.b.c.d) like every kmesh map key; dst_port: host byte order.
 * count: bump the per-policy / total counters (false for re-checks of existing connections).
 * Returns KMESH_AUTHZ_ALLOW (0) or KMESH_AUTHZ_DENY (1). */
static __always_inline int authz_check(const __u8 *src, const __u8 *dst, __u16 dst_port, bool count)
{
	struct kmesh_authz_cache_key ck = {.port = dst_port};
	const struct kmesh_authz_cache_value *cp;
	struct kmesh_authz_cache_value cv;
	struct authz_eval ev = {};
	__u64 state = authz_state();
	bool stable = false;
	int ret = 0;

	__builtin_memcpy(ck.src, src, 16);
	__builtin_memcpy(ck.dst, dst, 16);
	cp = bpf_map_lookup_elem(&km_authz_cache, &ck);
	if (cp) {
		cv = *cp;
		if (cv.epoch == state) {
			authz_remember(cv.slot);
			if (count) {
				authz_count(cv.total, cv.slot, cv.dry);
				authz_bump(&km_authz_totals, KMESH_AUTHZ_TOTAL_CACHE_HITS);
			}
			return cv.total == KMESH_AUTHZ_TOTAL_ALLOWED ? KMESH_AUTHZ_ALLOW
								     : KMESH_AUTHZ_DENY;
		}
	}

	__builtin_memcpy(ev.src, src, 16);
	__builtin_memcpy(ev.dst, dst, 16);
	ev.port = dst_port;
	ev.count = count;
	/*
	 * The agent may flip generations (and start rewriting the one we read) while we walk it:
	 * the state word read again afterwards tells. One retry on the new generation; a second
	 * change within one walk keeps the verdict but does not cache it.
	 */
#pragma unroll
	for (int attempt = 0; attempt < 2; attempt++) {
		__u64 after;

		ev.state = state;
		ev.gen = (__u32)(state & 1);
		ev.error = 0;
		ret = authz_evaluate(&ev);
		after = authz_state();
		if (after == state && !ev.error) {
			stable = true;
			break;
		}
		state = after;
	}
	if (ret == AUTHZ_NOT_OURS)
		return KMESH_AUTHZ_ALLOW;
	if (ev.error && !stable)
		ev.total =
		    KMESH_AUTHZ_TOTAL_ALLOWED; /* tables vanished under us twice: fail open */

	if (stable && ev.dry_count <= KMESH_AUTHZ_CACHE_DRY) {
		cv.epoch = ev.state;
		cv.slot = ev.slot;
		cv.total = ev.total;
		cv.dry[0] = ev.dry[0];
		cv.dry[1] = ev.dry[1];
		bpf_map_update_elem(&km_authz_cache, &ck, &cv, BPF_ANY);
	}
	authz_remember(ev.slot);
	if (count)
		authz_count(ev.total, ev.slot, ev.dry);
	return ev.total == KMESH_AUTHZ_TOTAL_ALLOWED ? KMESH_AUTHZ_ALLOW : KMESH_AUTHZ_DENY;
}

/* The caller closed an existing connection that authz_check (count == false) just denied. */
static __always_inline void authz_count_closed(void)
{
	__u32 zero = 0;
	__u32 *last = bpf_map_lookup_elem(&km_authz_last, &zero);
	__u32 slot = last ? *last : KMESH_AUTHZ_NO_SLOT;

	authz_bump(&km_authz_totals, KMESH_AUTHZ_TOTAL_CLOSED);
	if (slot != KMESH_AUTHZ_NO_SLOT)
		authz_bump(&km_authz_hits, slot * KMESH_AUTHZ_HIT_COUNT + KMESH_AUTHZ_HIT_CLOSED);
}

#endif /* KMESH_BPF_AUTHZ_H */
