// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Same-node sockmap acceleration (issue 10 section 3, docs/sockmap.md). cgroup_sockops (waypoint.c)
 * puts both ends of a connection between two enrolled pods of this node into km_accel_sockhash
 * (include/accel.h); sk_msg_accel, attached to that sockhash by the agent, hands each send of such
 * a socket straight to the peer socket's receive queue, so the bytes skip TCP/IP, the veth pair and
 * the bridge.
 */
#include "include/accel.h"

#ifndef SK_DROP
#define SK_DROP 0
#define SK_PASS 1
#endif

/* The socket's own key and its peer's (the mirror; see accel_key_ops for the port forms). */
static __always_inline int accel_keys_msg(const struct sk_msg_md *msg, struct kmesh_accel_key *own,
					  struct kmesh_accel_key *peer)
{
	__u32 l[4], r[4];
	__u16 lp = bpf_htonl(ACCEL_CTX_U32(msg, struct sk_msg_md, local_port)) >> 16,
	      rp = ACCEL_CTX_U32(msg, struct sk_msg_md, remote_port) >> 16;

	if (ACCEL_CTX_U32(msg, struct sk_msg_md, family) == AF_INET) {
		accel_v4mapped(l, ACCEL_CTX_U32(msg, struct sk_msg_md, local_ip4));
		accel_v4mapped(r, ACCEL_CTX_U32(msg, struct sk_msg_md, remote_ip4));
	} else if (ACCEL_CTX_U32(msg, struct sk_msg_md, family) == AF_INET6) {
		l[0] = ACCEL_CTX_U32(msg, struct sk_msg_md, local_ip6[0]);
		l[1] = ACCEL_CTX_U32(msg, struct sk_msg_md, local_ip6[1]);
		l[2] = ACCEL_CTX_U32(msg, struct sk_msg_md, local_ip6[2]);
		l[3] = ACCEL_CTX_U32(msg, struct sk_msg_md, local_ip6[3]);
		r[0] = ACCEL_CTX_U32(msg, struct sk_msg_md, remote_ip6[0]);
		r[1] = ACCEL_CTX_U32(msg, struct sk_msg_md, remote_ip6[1]);
		r[2] = ACCEL_CTX_U32(msg, struct sk_msg_md, remote_ip6[2]);
		r[3] = ACCEL_CTX_U32(msg, struct sk_msg_md, remote_ip6[3]);
	} else {
		return -EOPNOTSUPP;
	}
	__builtin_memcpy(own->local, l, 16);
	__builtin_memcpy(own->remote, r, 16);
	own->local_port = lp;
	own->remote_port = rp;
	__builtin_memcpy(peer->local, r, 16);
	__builtin_memcpy(peer->remote, l, 16);
	peer->local_port = rp;
	peer->remote_port = lp;
	return 0;
}

/*
 * One send of a socket in km_accel_sockhash. Returns 1 redirected, 0 through TCP, or -errno.
 * The first send decides for the socket's whole life: a peer that is there and not PASS makes it
 * ON, anything else PASS. A direction never goes from TCP to redirect: bytes already in the
 * peer's TCP receive queue would be read after the redirected ones (tcp_bpf reads its redirect
 * queue first).
 */
static __always_inline int accel_send(struct sk_msg_md *msg)
{
	struct kmesh_accel_key own = {}, peer = {};
	struct kmesh_accel_sock *st;
	__u8 peer_state;

	if (accel_keys_msg(msg, &own, &peer))
		return -EOPNOTSUPP;
	st = bpf_map_lookup_elem(&km_accel_state, &own);
	if (!st || (st->state != KMESH_ACCEL_PENDING && st->state != KMESH_ACCEL_ON))
		return 0;
	peer_state = accel_state_of(&peer);
	if (peer_state != KMESH_ACCEL_PENDING && peer_state != KMESH_ACCEL_ON) {
		if (st->state == KMESH_ACCEL_PENDING) {
			st->state = KMESH_ACCEL_PASS;
			accel_stat_add(KMESH_ACCEL_STAT_PASSED, 1);
		} else {
			/* Closed (it left the sockhash): TCP answers as it would, with an RST. */
			accel_stat_add(KMESH_ACCEL_STAT_PEER_GONE, 1);
		}
		return 0;
	}
	if (st->state == KMESH_ACCEL_PENDING) {
		st->state = KMESH_ACCEL_ON;
		accel_stat_add(KMESH_ACCEL_STAT_CONNECTIONS, 1);
	}
	if (bpf_msg_redirect_hash(msg, &km_accel_sockhash, &peer, BPF_F_INGRESS) != SK_PASS) {
		/* The peer left the sockhash (closing) after its state was read: as above. */
		accel_stat_add(KMESH_ACCEL_STAT_REDIRECT_FAILED, 1);
		return 0;
	}
	accel_stat_add(KMESH_ACCEL_STAT_MSGS, 1);
	accel_stat_add(KMESH_ACCEL_STAT_BYTES, msg->size);
	return 1;
}

SEC("sk_msg")
int sk_msg_accel(struct sk_msg_md *msg)
{
	/* Never drop: whatever is not redirected goes through TCP as if we were not here. */
	accel_send(msg);
	return SK_PASS;
}
