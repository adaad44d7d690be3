#!/usr/bin/env bash
# Service load balancing at connect() time, for real: pods made by bridge + host-local chained with
# kmesh-cni, the agent fed by a config file, and a client reaching a VIP that exists nowhere but in
# our maps. Usage: e2e_service_lb.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

config() { # <workload lines>: echo plus a service without endpoints
    echo_service '- {name: empty, namespace: default, hostname: empty.default.svc.cluster.local, addresses: ["10.96.0.20"], ports: [{service_port: 80, target_port: 8080}]}' "$1"
}
wl() { echo_workload "$@"; }
# The agent runs first, as the DaemonSet does: kmesh-cni refuses pods until programs are pinned.
MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(config "")"
agent_start "$MESH"
wait_log "config generation 1 applied" 1

pod_create client
pod_create backend-1; B1_4=$POD_IP4 B1_6=$POD_IP6
pod_create backend-2; B2_4=$POD_IP4 B2_6=$POD_IP6
pod_create outsider plain
pod_serve backend-1 backend-1 8080
pod_serve backend-2 backend-2 8080

replace_file "$MESH" "$(config "$(wl backend-1 "$B1_4" "$B1_6"; wl backend-2 "$B2_4" "$B2_6")")"
wait_log "config generation 2 applied" 1
sleep 0.2  # let the echo servers bind

only_backends() { # <expected-set-regex>: every line names a backend matching the regex
    local out=$1 re=$2
    [[ -n $out ]] && ! grep -qvE "^($re)$" <<<"$out"
}
both_seen() { grep -qx backend-1 <<<"$1" && grep -qx backend-2 <<<"$1"; }

out=$(pod_connect client 10.96.0.10 80 40)
check "IPv4 VIP reaches only backends" only_backends "$out" "backend-1|backend-2"
check "IPv4 VIP spreads over both backends ($(sort <<<"$out" | uniq -c | xargs))" both_seen "$out"

out=$(pod_connect client fd00:96::10 80 40)
check "IPv6 VIP reaches only backends" only_backends "$out" "backend-1|backend-2"
check "IPv6 VIP spreads over both backends" both_seen "$out"

out=$(pod_connect client 10.96.0.10 80 40 --mapped)
check "IPv4-mapped VIP on a dual-stack socket is translated ($(sort <<<"$out" | uniq -c | xargs))" \
    only_backends "$out" "backend-1|backend-2"

out=$(pod_connect client 10.96.0.20 80 1)
check "service without endpoints refuses fast: '$out'" test "$out" = "error ECONNREFUSED"

out=$(pod_connect client 10.96.0.10 81 1 --timeout-ms 300)
# Untranslated, the VIP leads nowhere: the node has no route for it (never ECONNREFUSED, which
# would come from our program).
UNROUTED="error (ENETUNREACH|EHOSTUNREACH|ETIMEDOUT)"
check "a port the service does not expose is not translated: '$out'" only_backends "$out" "$UNROUTED"

out=$(pod_connect outsider "$B1_4" 8080 1)
check "unenrolled pod reaches a backend directly: '$out'" test "$out" = "backend-1"
out=$(pod_connect outsider 10.96.0.10 80 1 --timeout-ms 300)
check "unenrolled pod's connect to the VIP is not translated: '$out'" only_backends "$out" "$UNROUTED"

replace_file "$MESH" "$(config "$(wl backend-2 "$B2_4" "$B2_6")")"
wait_log "config generation 3 applied" 1
out=$(pod_connect client 10.96.0.10 80 30)
check "after removing backend-1, new connections avoid it" only_backends "$out" "backend-2"

# Bad configs are rejected with the reason, and the last good state keeps serving.
GOOD=$(config "$(wl backend-2 "$B2_4" "$B2_6")")
REJECTS=0
reject_case() { # <description> <config> <expected log text>
    replace_file "$MESH" "$2"
    REJECTS=$((REJECTS + 1))
    wait_log "rejected, still serving the last good state" $REJECTS
    check "$1 is rejected: '$3'" grep -q -- "$3" "$TMP/agent.log"
    out=$(pod_connect client 10.96.0.10 80 10)
    check "after the rejected $1, the last good state serves" only_backends "$out" "backend-2"
}
reject_case "unknown field" "${GOOD/  hostname: echo.default/  colour: blue
  hostname: echo.default}" "unknown field 'colour'"
reject_case "invalid IP" "${GOOD/10.96.0.10/10.96.0.300}" "'10.96.0.300' is not an IP address"
reject_case "duplicate VIP" "${GOOD/10.96.0.20/10.96.0.10}" "share the VIP 10.96.0.10"
reject_case "empty file" "" "the config is empty"
check "no rejected config was applied" test "$(grep -c "applied:" "$TMP/agent.log")" = 3

replace_file "$MESH" "$(config "$(wl backend-1 "$B1_4" "$B1_6"; wl backend-2 "$B2_4" "$B2_6")")"
wait_log "config generation 4 applied" 1
out=$(pod_connect client 10.96.0.10 80 40)
check "backend-1 returns when the config is fixed" both_seen "$out"

# A dual-stack VIP with an IPv4-only endpoint: IPv6 clients must only ever get the other one.
replace_file "$MESH" "$(config "$(wl backend-1 "$B1_4" "$B1_4"; wl backend-2 "$B2_4" "$B2_6")")"
wait_log "config generation 5 applied" 1
out=$(pod_connect client fd00:96::10 80 30)
check "IPv6 connects skip an IPv4-only endpoint ($(sort <<<"$out" | uniq -c | xargs))" only_backends "$out" "backend-2"
out=$(pod_connect client 10.96.0.10 80 30)
check "while IPv4 connects still use both" both_seen "$out"

dump=$(kmeshctl dump)
check "kmeshctl dump shows the VIP frontend" grep -q "frontend 10.96.0.10:80 -> target port 8080" <<<"$dump"
check "kmeshctl dump counts translations and refusals" grep -qE "translated=[1-9][0-9]* refused_no_endpoint=1 " <<<"$dump"
