// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * The one BPF object the agent loads (one skeleton, one set of maps shared by every program):
 * each program file is included here rather than linked, so that maps are defined exactly once.
 */
#include "sock_connect.c"
/* The authz evaluator and its maps (the sk_lookup entry includes it too; the guard keeps one copy).
 */
#include "include/authz.h"
#include "sock_lookup.c"
#include "waypoint.c"
/* Issue 10: UDP translation + address transparency, and same-node sockmap acceleration. */
#include "sock_udp.c"
#include "sock_accel.c"
/* Issue 11: the iterator that reports bytes of open connections (docs/telemetry.md). */
#include "sock_telemetry.c"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
