#!/usr/bin/env bash
# Kernel-native local rate limit (issue 13; kmesh_abi.h "Local rate limit", bpf/include/ratelimit.h):
# a frontend with KMESH_FRONTEND_LIMITED takes one token per new connection from the client pod's
# bucket (max_tokens, tokens_per_fill every fill interval); an empty bucket refuses the connect at
# once with ECONNREFUSED. The agent programs an ordinary service from a config file; this script
# gives its frontend a bucket with bpftool (the agent's ADS path will write it). Oracles: errno of
# real connects from enrolled pods, and bounds computed here from the bucket's parameters.
# Usage: e2e_native_ratelimit.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

MESH=$TMP/mesh.yaml
SERVICES='services:
- {name: limited, namespace: default, hostname: limited.default.svc.cluster.local, addresses: ["10.96.0.91"], ports: [{service_port: 80, target_port: 8080}]}'
replace_file "$MESH" "$SERVICES"
agent_start "$MESH"
wait_log "config generation 1 applied" 1

for p in client client2 client3; do
    pod_create $p
    ip netns exec "$RUN-$p" sysctl -qw net.ipv4.tcp_max_tw_buckets=0
done
pod_create a
A4=$POD_IP4
pod_serve a a 8080
replace_file "$MESH" "$SERVICES
workloads:
- {uid: Kubernetes//Pod/default/a, name: a, namespace: default, addresses: [\"$A4\"], services: {default/limited.default.svc.cluster.local: }}"
wait_log "config generation 2 applied" 1
sleep 0.3

MAPS=$BPFFS/kmesh/maps/current
source "$E2E_DIR/native_lib.sh"
FE_KEY=$(fe_key 10.96.0.91)
# Bucket 1: max_tokens B, tokens_per_fill F, every I ms (struct kmesh_limit_cfg: four u64, the last the name hash).
set_bucket() { # <B> <F> <I-ms>
    bpftool map update pinned "$MAPS/km_limit_cfg" key hex $(hex_le32 1) value hex $($NATIVE_MAPS limit-value "$1" "$2" $(($3 * 1000000)))
}
# The frontend, as the agent wrote it, plus KMESH_FRONTEND_LIMITED (8) and limit id 1.
limit_frontend() {
    map_patch km_frontend "$FE_KEY" '6:<H|=8' '8:<I=1'
}
rl_count() { kmeshctl dump | sed -n 's/.*refused_rate_limit=\([0-9]*\).*/\1/p'; }

# --- a burst: exactly max_tokens admitted -------------------------------------------------------
# B = 5, one token back every 60 s: 12 connects in a row (well under a second) admit exactly 5.
set_bucket 5 1 60000
limit_frontend
out=$(pod_connect client 10.96.0.91 80 12 | xargs)
check "bucket of 5: the first 5 connect, the next 7 are refused ($out)" \
    test "$out" = "a a a a a error ECONNREFUSED error ECONNREFUSED error ECONNREFUSED error ECONNREFUSED error ECONNREFUSED error ECONNREFUSED error ECONNREFUSED"
check "the refusals are counted (refused_rate_limit $(rl_count))" test "$(rl_count)" = 7
# The bucket is the client pod's: another pod has its own 5.
out=$(pod_exec client2 python3 "$E2E_DIR/native_tool.py" burst 10.96.0.91 80 12 0.2)
check "another pod, 12 simultaneous connects: its own 5, under the bucket's lock ($out)" \
    test "$out" = "ok 5 ECONNREFUSED 7"

# --- over a window: max_tokens + refills, from 4 threads at once ---------------------------------
# B = 3, F = 2 every 400 ms, W = 3.0 s from a fresh bucket (client3), 4 threads connecting every
# ~10 ms each (far more than the rate): the bucket admits B at once and F per whole interval
# elapsed (floor(3.0/0.4) = 7), so between B + F*(7 - 1) = 15 and B + F*(7 + 1) = 19 (the -1/+1: the
# window's edges against the bucket's own interval grid).
set_bucket 3 2 400
out=$(pod_exec client3 python3 "$E2E_DIR/native_tool.py" rate 10.96.0.91 80 4 3.0)
ok_n=$(awk '{print $2}' <<<"$out")
check "3 s at 4 threads, 3 + 2 per 400 ms: $ok_n admitted, within [15, 19] ($out)" \
    test "$ok_n" -ge 15 -a "$ok_n" -le 19
# A bucket of 0 tokens configured means none: connects go through unlimited.
set_bucket 0 1 1000
out=$(pod_connect client 10.96.0.91 80 10 | sort -u | xargs)
check "max_tokens 0 (no bucket): nothing refused ($out)" test "$out" = a
