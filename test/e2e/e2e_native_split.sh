#!/usr/bin/env bash
# Kernel-native mode's two connect-time additions (issue 13, docs/design/kernel-native.md §4.2),
# exercised in the real kernel before the agent's ADS path writes them: a weighted split (a
# frontend with KMESH_FRONTEND_SPLIT naming a km_split entry: Envoy's weighted clusters) and
# per-backend ports (KMESH_FRONTEND_BACKEND_PORT + KMESH_BACKEND_HAS_PORT: an Envoy endpoint is
# address:port). The agent programs two ordinary services from a config file; this script then
# writes the split, the split frontend and a backend's port itself with bpftool, byte by byte from
# the ABI as it reads it (not through the agent's code), and counts which pod answers real
# connects from an enrolled pod.
# Usage: e2e_native_split.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

MESH=$TMP/mesh.yaml
svc() { printf -- '- {name: %s, namespace: default, hostname: %s.default.svc.cluster.local, addresses: ["%s"], ports: [{service_port: 80, target_port: 8080}]}\n' "$1" "$1" "$2"; }
wl() { printf -- '- {uid: Kubernetes//Pod/default/%s, name: %s, namespace: default, addresses: ["%s"], services: {default/%s.default.svc.cluster.local: }}\n' "$1" "$1" "$2" "$3"; }

SERVICES=$(printf 'services:\n%s\n%s\n' "$(svc v1 10.96.0.71)" "$(svc v2 10.96.0.72)")
replace_file "$MESH" "$SERVICES"
agent_start "$MESH"
wait_log "config generation 1 applied" 1

pod_create client
declare -A IP4
for p in a b c; do
    pod_create $p
    IP4[$p]=$POD_IP4
    pod_serve $p $p 8080
done
pod_serve b b9090 9090 # b's second listener: only a per-backend port reaches it
ip netns exec "$RUN-client" sysctl -qw net.ipv4.tcp_max_tw_buckets=0

replace_file "$MESH" "$(printf '%s\nworkloads:\n%s\n%s\n%s\n' "$SERVICES" \
    "$(wl a "${IP4[a]}" v1)" "$(wl b "${IP4[b]}" v2)" "$(wl c "${IP4[c]}" v2)")"
wait_log "config generation 2 applied" 1
sleep 0.3

MAPS=$BPFFS/kmesh/maps/current
source "$E2E_DIR/native_lib.sh"
S1=$(service_of 10.96.0.71)
S2=$(service_of 10.96.0.72)
check "the agent programmed two services (ids $S1, $S2)" test "$S1" -gt 0 -a "$S2" -gt 0 -a "$S1" != "$S2"

SPLIT_ID=7
SPLIT=2 BACKEND_PORT=4 # KMESH_FRONTEND_SPLIT, KMESH_FRONTEND_BACKEND_PORT
bpftool map update pinned "$MAPS/km_split" key hex $(hex_le32 $SPLIT_ID) value hex $(split_value "$S1:90" "$S2:100")
bpftool map update pinned "$MAPS/km_frontend" key hex $(fe_key 10.96.0.70) value hex $(fe_value $SPLIT_ID $SPLIT)

summary() { sort <<<"$1" | uniq -c | xargs; }
# 90:10 between v1 (a) and v2 (b or c): Pearson's X2 with df 1 against the p = 1e-6 critical value
# 23.93 (erfc(sqrt(x/2)) = 1e-6). N = 2000 expects 1800 / 200; a split that ignored the weights
# (50:50) scores X2 = 800^2/1800 + 800^2/200 = 3556; one that inverted them, far more.
gray_ok() {
    python3 -c '
import sys
lines = [l.strip() for l in sys.stdin if l.strip()]
bad = [l for l in lines if l not in ("a", "b", "c")]
if bad: print("unexpected answers:", sorted(set(bad))); sys.exit(1)
n = len(lines); v1 = lines.count("a"); v2 = n - v1
x2 = (v1 - 0.9 * n) ** 2 / (0.9 * n) + (v2 - 0.1 * n) ** 2 / (0.1 * n)
print("n %d v1 %d v2 %d X2 %.2f (threshold 23.93)" % (n, v1, v2, x2)); sys.exit(0 if x2 < 23.93 else 1)' <<<"$1"
}
N=2000
out=$(pod_connect client 10.96.0.70 80 $N)
check "split 90:10 over connect4 ($(summary "$out"))" gray_ok "$out"
out=$(pod_connect client 10.96.0.70 80 $N --mapped)
check "split 90:10 over connect6, IPv4-mapped socket ($(summary "$out"))" gray_ok "$out"

# Per-backend port: b's backend gets port 9090 with KMESH_BACKEND_HAS_PORT, and v2's frontend
# takes backend ports: b answers on 9090 ("b9090"), c (no port of its own) on the frontend's 8080.
B=$(bpftool -j map dump pinned "$MAPS/km_backend" | $NATIVE_MAPS find-backend "${IP4[b]}")
# flags (offset 32) |= KMESH_BACKEND_HAS_PORT, port (offset 36, network order) = 9090.
map_patch km_backend "$B" '32:<I|=4' '36:!H=9090'
bpftool map update pinned "$MAPS/km_frontend" key hex $(fe_key 10.96.0.72) value hex $(fe_value "$S2" $BACKEND_PORT)
out=$(pod_connect client 10.96.0.72 80 200)
check "per-backend port: b answers on 9090, c on the frontend's 8080 ($(summary "$out"))" \
    test "$(sort -u <<<"$out" | xargs)" = "b9090 c"
# Without the frontend flag the backend's port is not used (the ambient path is unchanged).
bpftool map update pinned "$MAPS/km_frontend" key hex $(fe_key 10.96.0.72) value hex $(fe_value "$S2" 0)
out=$(pod_connect client 10.96.0.72 80 200)
check "no BACKEND_PORT flag: the frontend's target port for all ($(summary "$out"))" \
    test "$(sort -u <<<"$out" | xargs)" = "b c"
# The split path takes backend ports too (the flag is the split frontend's).
bpftool map update pinned "$MAPS/km_frontend" key hex $(fe_key 10.96.0.70) value hex $(fe_value $SPLIT_ID $((SPLIT | BACKEND_PORT)))
out=$(pod_connect client 10.96.0.70 80 400)
check "split + backend ports: v1 on 8080, b on 9090 ($(summary "$out"))" \
    test "$(sort -u <<<"$out" | grep -vx -e a -e b9090 -e c | wc -l)" = 0 -a "$(grep -cx b9090 <<<"$out")" -gt 0

# A split with no usable entry (count 0), then none at all: the connect is left alone, as for a
# frontend whose service is mid-removal; 10.96.0.70 has no route in the pod, so it fails there.
bpftool map update pinned "$MAPS/km_split" key hex $(hex_le32 $SPLIT_ID) value hex $(split_value)
out=$(pod_connect client 10.96.0.70 80 1 --timeout-ms 500)
check "a malformed split (count 0) leaves the connect alone ($out)" grep -q '^error' <<<"$out"
bpftool map delete pinned "$MAPS/km_split" key hex $(hex_le32 $SPLIT_ID)
out=$(pod_connect client 10.96.0.70 80 1 --timeout-ms 500)
check "a missing split leaves the connect alone ($out)" grep -q '^error' <<<"$out"
# One service at weight 1: everything to it.
bpftool map update pinned "$MAPS/km_split" key hex $(hex_le32 $SPLIT_ID) value hex $(split_value "$S2:1")
out=$(pod_connect client 10.96.0.70 80 100)
check "a one-service split sends all to it ($(summary "$out"))" test "$(sort -u <<<"$out" | xargs)" = "b9090 c"

