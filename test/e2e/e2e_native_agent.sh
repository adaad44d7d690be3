#!/usr/bin/env bash
# Kernel-native mode end to end from a bundle file (issue 13): `kmesh-daemon --mode kernel-native
# --config bundle.yaml` with Envoy Listener/Cluster resources, and real connects from an enrolled
# pod. The oracle is the kernel's answer: which echo server (named by the script) answers, and the
# errno a refused connect() gets. Covers round robin exact over serialized connects, endpoint ports
# and health, a weighted split within a chi-square bound, max_connections refusing exactly the
# connection over the limit, a token bucket admitting exactly its size, a wildcard HTTP listener
# whose inline route's virtual host names the VIP, an update that removes a listener, and a bad
# file refused while the last good state keeps serving.
# Usage: e2e_native_agent.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

BUNDLE=$TMP/bundle.yaml
# The agent starts first (kmesh-cni's ADD needs its programs), from an empty bundle.
replace_file "$BUNDLE" "resources: []"
ADMIN_PORT=$(free_port)
AGENT_FLAGS="--mode kernel-native --max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256" agent_start "$BUNDLE"
wait_log "kmesh-daemon ready" 1
pod_create client
declare -A IP4
for p in a b c; do
    pod_create $p
    IP4[$p]=$POD_IP4
done
pod_serve a a 8080
pod_serve b b9090 9090 # b listens on 9090 only: only its endpoint's own port reaches it
pod_serve c c 8080
pod_serve c c7070 7070 # an UNHEALTHY endpoint's port: must never answer
ip netns exec "$RUN-client" sysctl -qw net.ipv4.tcp_max_tw_buckets=0

static_cluster() { # <name> <lb policy> <extra yaml (indented 2)> <ip:port[:health]>...
    local name=$1 lb=$2 extra=$3
    shift 3
    printf -- '- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: %s\n  type: STATIC\n  lb_policy: %s\n%s  load_assignment:\n    cluster_name: %s\n    endpoints:\n    - lb_endpoints:\n' \
        "$name" "$lb" "$extra" "$name"
    for ep in "$@"; do
        IFS=: read -r addr port health <<<"$ep"
        printf '      - endpoint: {address: {socket_address: {address: %s, port_value: %s}}}\n        health_status: %s\n' \
            "$addr" "$port" "${health:-HEALTHY}"
    done
}
tcp_listener() { # <vip> <port> <tcp_proxy body yaml, one line> [rate limit yaml, one line]
    printf -- '- "@type": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: %s_%s\n  address: {socket_address: {address: %s, port_value: %s}}\n  filter_chains:\n  - name: main\n    filters:\n' \
        "$1" "$2" "$1" "$2"
    [[ -z ${4:-} ]] || printf '    - name: envoy.filters.network.local_ratelimit\n      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit, %s}\n' "$4"
    printf '    - name: envoy.filters.network.tcp_proxy\n      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, %s}\n' "$3"
}
http_listener() { # <port> <vip> <cluster>: 0.0.0.0_<port>, HCM with an inline route naming <vip>
    printf -- '- "@type": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: 0.0.0.0_%s\n  address: {socket_address: {address: 0.0.0.0, port_value: %s}}\n  filter_chains:\n  - filters:\n    - name: envoy.filters.network.http_connection_manager\n      typed_config:\n        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n        stat_prefix: http\n        route_config:\n          name: inline\n          virtual_hosts:\n          - name: svc\n            domains: [svc.default.svc.cluster.local, "%s"]\n            routes:\n            - match: {prefix: /api, headers: [{name: x-canary, exact_match: "1"}]}\n              route: {cluster: v2}\n            - match: {prefix: /}\n              route: {cluster: %s}\n' \
        "$1" "$1" "$2" "$3"
}

CLUSTERS=$(printf '%s\n%s\n%s\n%s\n' \
    "$(static_cluster rr ROUND_ROBIN '' "${IP4[a]}:8080" "${IP4[b]}:9090" "${IP4[c]}:7070:UNHEALTHY")" \
    "$(static_cluster v1 RANDOM '' "${IP4[a]}:8080")" \
    "$(static_cluster v2 RANDOM '' "${IP4[c]}:8080")" \
    "$(static_cluster cb RANDOM $'  circuit_breakers: {thresholds: [{max_connections: 2}]}\n' "${IP4[c]}:8080")")
LISTENERS=$(printf '%s\n%s\n%s\n%s\n%s\n' \
    "$(tcp_listener 10.96.0.80 80 'cluster: rr')" \
    "$(tcp_listener 10.96.0.81 80 'weighted_clusters: {clusters: [{name: v1, weight: 90}, {name: v2, weight: 10}]}')" \
    "$(tcp_listener 10.96.0.82 80 'cluster: cb')" \
    "$(tcp_listener 10.96.0.83 80 'cluster: v1' 'stat_prefix: rl, token_bucket: {max_tokens: 5, tokens_per_fill: 1, fill_interval: 3600s}')" \
    "$(http_listener 8000 10.96.0.84 rr)")
replace_file "$BUNDLE" "$(printf 'resources:\n%s\n%s\n' "$CLUSTERS" "$LISTENERS")"

wait_log "config generation 2 applied" 1
grep "native config" "$TMP/agent.log" | tail -1
sleep 0.3

summary() { sort <<<"$1" | uniq -c | xargs; }

# Round robin over serialized connects: a and b alternate exactly (in either phase), each on its
# own endpoint port; c's UNHEALTHY endpoint (7070) never answers.
out=$(pod_connect client 10.96.0.80 80 10)
check "round robin: a (8080) and b (9090) alternate, never the unhealthy c:7070 ($(echo $out))" python3 -c '
import sys
seq = sys.argv[1].split()
ok = len(seq) == 10 and set(seq) == {"a", "b9090"} and all(seq[i] != seq[i + 1] for i in range(9))
sys.exit(0 if ok else 1)' "$out"

# Weighted clusters 90:10 between v1 (a) and v2 (c): Pearson's X2, df 1, under the p = 1e-6
# critical value 23.93 (a 50:50 split scores ~3556 at N = 2000).
out=$(pod_connect client 10.96.0.81 80 2000)
check "weighted split 90:10 ($(summary "$out"))" python3 -c '
import sys
lines = sys.argv[1].split()
n = len(lines); v1 = lines.count("a"); v2 = lines.count("c")
x2 = (v1 - 0.9 * n) ** 2 / (0.9 * n) + (v2 - 0.1 * n) ** 2 / (0.1 * n)
print("n %d v1 %d v2 %d X2 %.2f" % (n, v1, v2, x2))
sys.exit(0 if n == 2000 and v1 + v2 == n and x2 < 23.93 else 1)' "$out"

# max_connections 2: two held, the third refused at once with ECONNREFUSED; after closing, again.
release=$TMP/cb.release
pod_exec client python3 "$E2E_DIR/native_tool.py" hold 10.96.0.82 80 3 "$release" >"$TMP/cb.out" &
for _ in $(seq 50); do (($(wc -l <"$TMP/cb.out") >= 3)) && break; sleep 0.1; done
check "circuit breaker: ok ok then ECONNREFUSED ($(xargs <"$TMP/cb.out"))" \
    test "$(head -3 "$TMP/cb.out" | xargs)" = "ok ok error ECONNREFUSED"
touch "$release"
wait_for_closed() { for _ in $(seq 50); do grep -q closed "$TMP/cb.out" && return 0; sleep 0.1; done; return 1; }
wait_for_closed
out=$(pod_connect client 10.96.0.82 80 3)
check "circuit breaker: accepting again after the close ($(echo $out))" test "$(echo $out)" = "c c c"

# Token bucket of 5, one token per hour: exactly 5 of 12 concurrent connects admitted.
out=$(pod_exec client python3 "$E2E_DIR/native_tool.py" burst 10.96.0.83 80 12 0.2)
check "rate limit: 5 of 12 concurrent connects admitted ($out)" test "$out" = "ok 5 ECONNREFUSED 7"

# 0.0.0.0_8000 with an inline route: the VIP in the virtual host's domains gets the catch-all
# route's cluster (the header route before it is counted as approximated).
out=$(pod_connect client 10.96.0.84 8000 4)
check "wildcard HTTP listener: the vhost's VIP reaches rr ($(echo $out))" \
    test "$(tr ' ' '\n' <<<"$out" | sort -u | xargs)" = "a b9090"
check "the header route is counted as approximated" grep -q "1 routes approximated" "$TMP/agent.log"
metrics=$(admin_get /metrics)
check "metrics: 5 frontends, 1 split, 1 bucket, 1 approximated route" test \
    "$(grep -E '^kmesh_native_(frontends|splits|limits|routes_approximated) ' <<<"$metrics" | sort | xargs)" = \
    "kmesh_native_frontends 5 kmesh_native_limits 1 kmesh_native_routes_approximated 1 kmesh_native_splits 1"

# An update without the round-robin listener: its VIP is left alone (no route in the pod: fails).
replace_file "$BUNDLE" "$(printf 'resources:\n%s\n%s\n' "$CLUSTERS" "$(tail -n +9 <<<"$LISTENERS")")"
wait_log "config generation 3 applied" 1
sleep 0.3
out=$(pod_connect client 10.96.0.80 80 1 --timeout-ms 500)
check "a removed listener's VIP is no longer translated ($out)" grep -q '^error' <<<"$out"
out=$(pod_connect client 10.96.0.81 80 20)
check "the other listeners still serve ($(summary "$out"))" test -z "$(tr ' ' '\n' <<<"$out" | grep -vx -e a -e c)"

# A bad file (an endpoint port 0) is refused whole; the last good state keeps serving.
replace_file "$BUNDLE" "$(printf 'resources:\n%s\n%s\n%s\n' "$CLUSTERS" "$(static_cluster bad RANDOM '' "${IP4[a]}:0")" "$LISTENERS")"
wait_log "rejected, still serving the last good state" 1
out=$(pod_connect client 10.96.0.80 80 1 --timeout-ms 500)
check "after the refused file 10.96.0.80 is still untranslated ($out)" grep -q '^error' <<<"$out"
out=$(pod_connect client 10.96.0.82 80 2)
check "after the refused file the last good state serves ($(echo $out))" test "$(echo $out)" = "c c"

