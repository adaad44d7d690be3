#!/usr/bin/env bash
# Address-family-aware load balancing, with the kernel as oracle: a dual-stack VIP whose endpoints
# are 10 IPv4-only pods and 2 dual-stack ones. IPv6 clients must always connect, spread evenly
# over the 2 dual-stack pods; IPv4 (and IPv4-mapped) clients over all 12. Then the kernel-feature
# fallback: with bpf_set_retval pretended missing, a refused connect fails with EPERM.
# Usage: e2e_family_lb.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

config() { # <workload lines>: echo plus a service without endpoints
    echo_service '- {name: empty, namespace: default, hostname: empty.default.svc.cluster.local, addresses: ["10.96.0.20"], ports: [{service_port: 80, target_port: 8080}]}' "$1"
}
MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(config "")"
agent_start "$MESH"
wait_log "config generation 1 applied" 1

pod_create client
WL=""
for i in $(seq 1 10); do
    pod_create v4-$i
    WL+="$(printf -- '- {uid: Kubernetes//Pod/default/v4-%s, name: v4-%s, namespace: default, addresses: ["%s"], services: {default/echo.default.svc.cluster.local: }}' "$i" "$i" "$POD_IP4")"$'\n'
    pod_serve v4-$i v4-$i 8080
done
for i in 1 2; do
    pod_create ds-$i
    WL+="$(echo_workload ds-$i "$POD_IP4" "$POD_IP6")"$'\n'
    pod_serve ds-$i ds-$i 8080
done
replace_file "$MESH" "$(config "$WL")"
wait_log "config generation 2 applied" 1
sleep 0.3 # let the echo servers bind

N=300
count_of() { grep -cx -- "$2" <<<"$1" || true; }
# Uniform over k choices with N draws, each name gets N/k on average. The floor is <percent> of that:
# 60% for 2 names (7 sigma below), 30% for 12 names (3.6 sigma; all 12 pass with p > 0.998).
even_over() { # <percent> <output> <names...>
    local pct=$1 out=$2 min n
    shift 2
    min=$((N * pct / 100 / $#))
    for n in "$@"; do (($(count_of "$out" "$n") >= min)) || { echo "$n: $(count_of "$out" "$n") < $min"; return 1; }; done
}
summary() { sort <<<"$1" | uniq -c | xargs; }

out=$(pod_connect client fd00:96::10 80 $N)
check "IPv6 client: every connect succeeds, only dual-stack pods answer ($(summary "$out"))" \
    test "$(grep -cxE 'ds-[12]' <<<"$out")" = $N
check "IPv6 client: picks spread evenly over the 2 dual-stack pods" even_over 60 "$out" ds-1 ds-2

out=$(pod_connect client 10.96.0.10 80 $N)
all12=(ds-1 ds-2)
for i in $(seq 1 10); do all12+=(v4-$i); done
check "IPv4 client: every connect succeeds ($(summary "$out"))" test "$(grep -cxE '(ds-[12]|v4-[0-9]+)' <<<"$out")" = $N
check "IPv4 client: picks spread over all 12 pods" even_over 30 "$out" "${all12[@]}"

out=$(pod_connect client 10.96.0.10 80 $N --mapped)
check "IPv4-mapped client: every connect succeeds ($(summary "$out"))" \
    test "$(grep -cxE '(ds-[12]|v4-[0-9]+)' <<<"$out")" = $N
check "IPv4-mapped client: picks spread over all 12 pods" even_over 30 "$out" "${all12[@]}"

dump=$(kmeshctl dump)
check "kmeshctl dump shows both family lists" grep -q "IPv6 priority 0: 2 endpoint(s)" <<<"$dump"
check "kmeshctl dump counts 12 IPv4 endpoints" grep -q "IPv4 priority 0: 12 endpoint(s)" <<<"$dump"

# Only IPv4-only pods behind an IPv6 socket: unreachable from that family (not "no endpoints").
replace_file "$MESH" "$(config "$(grep -v ds- <<<"$WL")")"
wait_log "config generation 3 applied" 1
out=$(pod_connect client fd00:96::10 80 1)
check "IPv6 client with only IPv4-only endpoints fails fast with EHOSTUNREACH: '$out'" test "$out" = "error EHOSTUNREACH"

# Kernel portability: the agent probes bpf_set_retval (5.18+) and, without it, loads programs that
# skip the call, so a refused connect fails with the default EPERM.
out=$(pod_connect client 10.96.0.20 80 1)
check "with bpf_set_retval, an empty service refuses with ECONNREFUSED: '$out'" test "$out" = "error ECONNREFUSED"
agent_stop
KMESH_PRETEND_NO_SET_RETVAL=1 agent_start "$MESH"
check "the agent logs why it degrades" grep -q "bpf_set_retval unavailable (KMESH_PRETEND_NO_SET_RETVAL is set)" "$TMP/agent.log"
out=$(pod_connect client 10.96.0.20 80 1)
check "without bpf_set_retval, an empty service fails with EPERM: '$out'" test "$out" = "error EPERM"
out=$(pod_connect client 10.96.0.10 80 20)
check "and translation still works ($(summary "$out"))" test "$(grep -cxE 'v4-[0-9]+' <<<"$out")" = 20
agent_stop
agent_start "$MESH"
out=$(pod_connect client 10.96.0.20 80 1)
check "back on a normal load, ECONNREFUSED again: '$out'" test "$out" = "error ECONNREFUSED"
