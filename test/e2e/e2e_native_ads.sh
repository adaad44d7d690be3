#!/usr/bin/env bash
# Kernel-native mode from istiod (issue 13): kmesh-daemon --mode kernel-native speaks SotW ADS to
# test/xds/fake_istiod, which encodes its Envoy resources with the upstream Envoy schema (the
# descriptor set envoy_api_subset builds from @grpc/grpc-js-xds's copy of envoyproxy's protos, not
# our vendored subset). Checks, with real connects from an enrolled pod as the oracle and
# fake_istiod's events for the protocol: the sidecar node id, CDS -> EDS -> LDS -> RDS all ACKed,
# an EDS cluster's endpoints (with their own ports) serving a VIP listener and a 0.0.0.0_<port>
# HTTP listener through RDS, a bad cluster NACKed by name while its last good state serves, and a
# listener removed by a push.
# Usage: e2e_native_ads.sh <build-dir>
source "$(dirname "$0")/lib.sh"
BUILD_ARG=${1:?usage: $0 <build-dir>}

# The upstream descriptor set: made by envoy_api_subset (cached npm ci + protoc); without npm or
# the registry there is no upstream schema to encode with, which is a skip, said out loud.
DESC=$BUILD_ARG/test/proto/upstream.pb
if [[ ! -s $DESC ]]; then
    rc=0
    bash "$E2E_DIR/../proto/envoy_api_subset.sh" "$BUILD_ARG/test/proto/proto_subset_check" \
        "$BUILD_ARG/proto/kmesh_protos.pb" "$BUILD_ARG/test/proto" >/dev/null || rc=$?
    if [[ ! -s $DESC ]]; then
        echo "SKIP: no upstream Envoy descriptor set ($DESC; envoy_api_subset.sh rc $rc)"
        exit 77
    fi
fi
e2e_init "$BUILD_ARG"

CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
CLUSTER='outbound|80||echo.default.svc.cluster.local'
fixture() { # <listeners json> <clusters json> : the snapshot, with echo's endpoints and route
    cat <<JSON
{"clusters": [$2],
 "endpoints": [{"cluster_name": "$CLUSTER", "endpoints": [{"locality": {"zone": "z1"}, "lb_endpoints": [
    {"endpoint": {"address": {"socket_address": {"address": "${IP4[a]}", "port_value": 8080}}}, "health_status": "HEALTHY"},
    {"endpoint": {"address": {"socket_address": {"address": "${IP4[b]}", "port_value": 9090}}}, "health_status": "HEALTHY"}]}]}],
 "listeners": [$1],
 "routes": [{"name": "8000", "virtual_hosts": [{"name": "echo.default.svc.cluster.local:8000",
    "domains": ["echo.default.svc.cluster.local", "echo", "10.96.0.91"],
    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "$CLUSTER"}}]}]}]}
JSON
}
good_cluster='{"name": "'$CLUSTER'", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, "lb_policy": "ROUND_ROBIN"}'
bad_cluster='{"name": "'$CLUSTER'", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}, "lb_policy": 77}'
tcp_listener='{"name": "10.96.0.90_80", "address": {"socket_address": {"address": "10.96.0.90", "port_value": 80}},
  "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "echo", "cluster": "'$CLUSTER'"}}]}]}'
http_listener='{"name": "0.0.0.0_8000", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8000}},
  "filter_chains": [{"filter_chain_match": {"transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
    "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
      "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
      "stat_prefix": "outbound_0.0.0.0_8000", "rds": {"route_config_name": "8000", "config_source": {"ads": {}}}}}]}]}'

# The agent starts first (kmesh-cni's ADD needs its programs), with istiod sending nothing yet.
echo '{}' >"$TMP/empty.json"
ISTIOD_PORT=$(free_port)
istiod_start "$ISTIOD_PORT" "$CONTROL" "$TMP/empty.json" --envoy-descriptors "$DESC"
AGENT_FLAGS="--mode kernel-native --instance-ip 10.0.0.250 --pod-name kmesh-x --pod-namespace kmesh-system --pod-label app=kmesh --max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256" \
    agent_start --xds-address "127.0.0.1:$ISTIOD_PORT" --xds-plaintext
wait_log "kmesh-daemon ready" 1
EVENTS=$CONTROL/events.jsonl
check "connected as a sidecar of the agent's pod" grep -q 'sidecar~10.0.0.250~kmesh-x.kmesh-system~kmesh-system.svc.cluster.local' "$EVENTS"

pod_create client
declare -A IP4
for p in a b; do
    pod_create $p
    IP4[$p]=$POD_IP4
done
pod_serve a a 8080
pod_serve b b9090 9090

fixture "$tcp_listener, $http_listener" "$good_cluster" >"$TMP/one.json"
fixture "$tcp_listener, $http_listener" "$bad_cluster" >"$TMP/bad.json"
fixture "$http_listener" "$good_cluster" >"$TMP/less.json"
push() { # <fixture file>
    cp "$1" "$CONTROL/snapshot.json.tmp" && mv "$CONTROL/snapshot.json.tmp" "$CONTROL/snapshot.json"
    touch "$CONTROL/push"
    for _ in $(seq 250); do [[ -e $CONTROL/push ]] || return 0; sleep 0.02; done
    log "fake istiod did not take the push"; return 1
}
count() { grep -c "$1" "$EVENTS" 2>/dev/null || true; }
push "$TMP/one.json"
wait_log "RouteConfiguration version 2: 1 applied" 1
for t in Cluster ClusterLoadAssignment Listener RouteConfiguration; do
    check "$t ACKed" test "$(grep '"event":"ack"' "$EVENTS" | grep -c "v3.$t\"")" -ge 1
done
check "no NACK of the good state" test "$(count '"event":"nack"')" = 0

sleep 0.3
out=$(pod_connect client 10.96.0.90 80 10)
check "VIP listener -> EDS endpoints in round robin, each on its own port ($(echo $out))" python3 -c '
import sys
seq = sys.argv[1].split()
sys.exit(0 if len(seq) == 10 and set(seq) == {"a", "b9090"} and all(seq[i] != seq[i + 1] for i in range(9)) else 1)' "$out"
out=$(pod_connect client 10.96.0.91 8000 4)
check "0.0.0.0_8000 + RDS route '8000' -> the VIP in its virtual host ($(echo $out))" \
    test "$(tr ' ' '\n' <<<"$out" | sort -u | xargs)" = "a b9090"

# A bad cluster (an lb_policy value Envoy does not know): NACKed by name; the last good state serves.
nacks=$(count '"event":"nack"')
push "$TMP/bad.json"
for _ in $(seq 50); do (($(count '"event":"nack"') > nacks)) && break; sleep 0.1; done
nacked() { grep '"event":"nack"' "$EVENTS" | grep -q "outbound|80||echo"; }
check "the bad cluster is NACKed, naming it" nacked
out=$(pod_connect client 10.96.0.90 80 4)
check "its last good state keeps serving ($(echo $out))" test "$(tr ' ' '\n' <<<"$out" | sort -u | xargs)" = "a b9090"

# A push without the VIP listener (LDS is the complete state): its VIP is left alone.
push "$TMP/less.json"
wait_log "Listener version 4: .* 1 removed" 1
sleep 0.3
out=$(pod_connect client 10.96.0.90 80 1 --timeout-ms 500)
check "the removed listener's VIP is no longer translated ($out)" grep -q '^error' <<<"$out"
out=$(pod_connect client 10.96.0.91 8000 2)
check "the HTTP listener still serves ($(echo $out))" test "$(tr ' ' '\n' <<<"$out" | sort -u | wc -l)" -ge 1

