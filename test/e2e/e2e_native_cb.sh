#!/usr/bin/env bash
# Kernel-native circuit breaking (issue 13; kmesh_abi.h "Circuit breaking", bpf/include/circuit.h):
# a service with KMESH_SERVICE_MAX_CONN admits at most max_connections open connections per client
# pod; the connect over the limit fails at once with ECONNREFUSED, and a slot comes back when a
# connection closes or fails. The agent programs ordinary services from a config file; this script
# sets the limit on a service with bpftool (the agent's ADS path will write it), and the oracles are
# the kernel's own answers: errno of real connects from enrolled pods, and km_cb / km_stats read
# back with bpftool.
# Usage: e2e_native_cb.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

MESH=$TMP/mesh.yaml
svc() { printf -- '- {name: %s, namespace: default, hostname: %s.default.svc.cluster.local, addresses: ["%s"], ports: [{service_port: 80, target_port: 8080}]}\n' "$1" "$1" "$2"; }
wl() { printf -- '- {uid: Kubernetes//Pod/default/%s, name: %s, namespace: default, addresses: ["%s"], services: {default/%s.default.svc.cluster.local: }}\n' "$1" "$1" "$2" "$3"; }
SERVICES=$(printf 'services:\n%s\n%s\n' "$(svc limited 10.96.0.81)" "$(svc dead 10.96.0.82)")
replace_file "$MESH" "$SERVICES"
agent_start "$MESH"
wait_log "config generation 1 applied" 1

pod_create client
pod_create client2
declare -A IP4
for p in a b c; do
    pod_create $p
    IP4[$p]=$POD_IP4
done
pod_serve a a 8080
pod_serve b b 8080 # c serves nothing: its connects are refused by its kernel (RST)
for p in client client2; do ip netns exec "$RUN-$p" sysctl -qw net.ipv4.tcp_max_tw_buckets=0; done
replace_file "$MESH" "$(printf '%s\nworkloads:\n%s\n%s\n%s\n' "$SERVICES" \
    "$(wl a "${IP4[a]}" limited)" "$(wl b "${IP4[b]}" limited)" "$(wl c "${IP4[c]}" dead)")"
wait_log "config generation 2 applied" 1
sleep 0.3

MAPS=$BPFFS/kmesh/maps/current
source "$E2E_DIR/native_lib.sh"
# Sets KMESH_SERVICE_MAX_CONN (flags, offset 60) and max_connections (offset 76) on a service.
set_limit() { # <service id> <max>
    map_patch km_service "$(hex_le32 "$1")" '60:<I|=4' "76:<I=$2"
}
# km_cb: "active" of every entry for a service, one number per client pod (sorted), as the kernel holds it.
cb_active() { # <service id>
    bpftool -j map dump pinned "$MAPS/km_cb" | python3 -c '
import json, struct, sys
out = []
for e in json.load(sys.stdin):
    k = bytes(int(x, 16) for x in e["key"]); v = bytes(int(x, 16) for x in e["value"])
    if struct.unpack_from("<I", k, 8)[0] == int(sys.argv[1]):
        out.append(struct.unpack_from("<Q", v, 0)[0])
print(" ".join(map(str, sorted(out))))' "$1"
}
cb_open() { kmeshctl dump | sed -n 's/.*refused_max_connections=\([0-9]*\).*/\1/p'; }
# Runs native_tool.py hold in a pod in the background; its output goes to <file>.
hold_start() { # <pod> <file> <release-file> <host> <n>
    pod_exec "$1" python3 "$E2E_DIR/native_tool.py" hold "$4" 80 "$5" "$3" >"$2" &
    PIDS+=($!)
}
wait_lines() { # <file> <n>
    for _ in $(seq 250); do [[ $(wc -l <"$1") -ge $2 ]] && return 0; sleep 0.02; done
    return 1
}

S=$(service_of 10.96.0.81)
D=$(service_of 10.96.0.82)
check "services programmed (limited $S, dead $D)" test "$S" -gt 0 -a "$D" -gt 0
set_limit "$S" 2
open0=$(cb_open)

# --- sequential: two held, the third refused at once, per client pod ----------------------------
hold_start client "$TMP/h1" "$TMP/rel1" 10.96.0.81 3
wait_lines "$TMP/h1" 3
check "max_connections 2: two connect, the third is refused ($(xargs <"$TMP/h1"))" \
    test "$(xargs <"$TMP/h1")" = "ok ok error ECONNREFUSED"
check "km_cb holds 2 for the client pod ($(cb_active "$S"))" test "$(cb_active "$S")" = 2
check "the refusal is counted (refused_max_connections $open0 -> $(cb_open))" test "$(cb_open)" = $((open0 + 1))
hold_start client2 "$TMP/h2" "$TMP/rel2" 10.96.0.81 2
wait_lines "$TMP/h2" 2
check "another client pod has its own two ($(xargs <"$TMP/h2"); km_cb $(cb_active "$S"))" \
    test "$(xargs <"$TMP/h2")" = "ok ok" -a "$(cb_active "$S")" = "2 2"
touch "$TMP/rel1" "$TMP/rel2"
wait_lines "$TMP/h1" 4
wait_lines "$TMP/h2" 3
check "closing gives every slot back (km_cb $(cb_active "$S"))" test "$(cb_active "$S")" = "0 0"
out=$(pod_connect client 10.96.0.81 80 20 | sort -u | xargs)
check "connect-and-close 20 times under a limit of 2: all accepted ($out)" test "$out" = "a b"

# --- concurrent: 12 connects at the same instant against a limit of 3 ---------------------------
set_limit "$S" 3
for round in 1 2 3; do
    out=$(pod_exec client python3 "$E2E_DIR/native_tool.py" burst 10.96.0.81 80 12 0.5)
    check "burst $round: 12 simultaneous connects, limit 3: exactly 3 accepted ($out)" \
        test "$out" = "ok 3 ECONNREFUSED 9"
done
check "after the bursts every slot is back (km_cb $(cb_active "$S"))" test "$(cb_active "$S")" = "0 0"

# --- a failed connection gives its slot back without close() -------------------------------------
# dead's only backend refuses (RST). With a limit of 1 and every failed socket kept open, each
# attempt still reaches the backend: the slot came back at the state change to CLOSE, not at close().
set_limit "$D" 1
open1=$(cb_open)
hold_start client "$TMP/h3" "$TMP/rel3" 10.96.0.82 3
wait_lines "$TMP/h3" 3
check "refused by the backend three times, never by the breaker ($(xargs <"$TMP/h3"); refused_max_connections $open1 -> $(cb_open))" \
    test "$(xargs <"$TMP/h3")" = "error ECONNREFUSED error ECONNREFUSED error ECONNREFUSED" -a "$(cb_open)" = "$open1"
check "km_cb is 0 while the failed sockets are still open ($(cb_active "$D"))" test "$(cb_active "$D")" = 0
touch "$TMP/rel3"
wait_lines "$TMP/h3" 4
