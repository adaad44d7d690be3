#!/usr/bin/env bash
# Series cardinality under pod churn (issue 11 section 4). CHURN_PODS (default 500) workloads come and
# go, each making real connections through service VIPs while it lives; each round also has its own
# service, which goes with it. The agent runs with a short --metrics-series-grace. The number of
# istio_tcp_* and Kmesh per-workload/per-service series, counted by a real Prometheus (count() over
# its scrape) and in the exposition itself, must rise while they live and return to its baseline
# (the stable pods' series) after the grace period.
#
# How the pods are made: a real pod (netns + bridge/host-local/kmesh-cni) costs ~1.7 s to create and
# delete here under load, too slow for 500 in a CI test. So a pool of CHURN_POOL (default 25) real
# pods carries the workloads: every round gives each pool pod a new workload (uid, name, namespace;
# the same address, as a new pod reusing a freed IP), and every CHURN_RECREATE rounds (default 10)
# the pool pods themselves are deleted (CNI DEL) and created again (CNI ADD, new addresses). 500
# workloads, 50 real pod lifecycles by default; CHURN_RECREATE=1 makes every workload a real pod.
# Usage: e2e_telemetry_churn.sh <build-dir>
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/prometheus.sh"
e2e_init "${1:?usage: $0 <build-dir>}"
TOTAL=${CHURN_PODS:-500}
POOL=${CHURN_POOL:-25}
RECREATE=${CHURN_RECREATE:-10}
ROUNDS=$(((TOTAL + POOL - 1) / POOL))
GRACE=3
METRICS_PORT=$(free_port)
AGENT_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256
    --metrics-series-grace $GRACE"  # lib.sh adds --metrics-address 127.0.0.1 --metrics-port $METRICS_PORT
MESH=$TMP/mesh.yaml
SERIES='{__name__=~"istio_tcp_.*|kmesh_workload_.*|kmesh_service_.*"}'

stable() { # [round service line] [its entry in the server's services]: the pods and service that stay
    cat <<YAML
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 8080}]}
${1:-}
workloads:
- {uid: Kubernetes//Pod/default/server, name: server, namespace: default, workload_name: server, addresses: ["$SRV4"], services: {default/echo.default.svc.cluster.local: ${2:+, $2}}}
- {uid: Kubernetes//Pod/default/client, name: client, namespace: default, workload_name: client, addresses: ["$CLI4"]}
YAML
}
GEN=1
apply() { # <config>: replaces the config and waits until the agent applied it
    replace_file "$MESH" "$1"
    GEN=$((GEN + 1))
    wait_log "config generation $GEN applied" 1 || { not_ok "config generation $GEN was not applied"; exit 1; }
}

replace_file "$MESH" "services: []"
agent_start "$MESH"
wait_log "config generation 1 applied" 1
pod_create server; SRV4=$POD_IP4
pod_create client; CLI4=$POD_IP4
pod_serve server server 8080
apply "$(stable)"
prom_start "127.0.0.1:$METRICS_PORT" /stats/prometheus

exposition_count() { # series of the churned families in the exposition itself
    local text
    text=$(curl -sS --max-time 5 "http://127.0.0.1:$METRICS_PORT/stats/prometheus") || { echo -1; return; }
    grep -cE '^(istio_tcp_|kmesh_workload_|kmesh_service_)' <<<"$text" || true
}

# Baseline: the stable client's traffic, in every series it makes.
out=$(pod_connect client 10.96.0.10 80 3 | sort | uniq -c | xargs)
check "the stable client reaches the service: $out" test "$out" = "3 server"
prom_wait_value 'sum(istio_tcp_connections_closed_total{source_workload="client", reporter="source"})' 3 >/dev/null
prom_fresh; prom_fresh
BASE_PROM=$(prom_value "count($SERIES)")
BASE_EXPO=$(exposition_count)
check "baseline: the stable pods have series (Prometheus $BASE_PROM, exposition $BASE_EXPO)" \
    eval "((${BASE_PROM:-0} > 0 && BASE_PROM == BASE_EXPO))"

# The pool's pods are created and deleted side by side, as a node's runtime does; lib.sh's arrays
# (what its cleanup deletes) are kept in the test's shell.
JOBS=()
wait_jobs() { local pid; for pid in "${JOBS[@]}"; do wait "$pid" || true; done; JOBS=(); }
pool_create() {
    local k pod
    for k in $(seq "$POOL"); do
        pod=pool-$k
        POD_NET[$pod]=kmesh
        PODS+=("$pod")
        (
            ip netns add "$RUN-$pod"
            ip netns exec "$RUN-$pod" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
            ip -n "$RUN-$pod" link set lo up
            mkdir -p "$(pod_cgroup "$pod")/ctr"
            cni_chain ADD "$pod" >"$TMP/add-$pod.json" 2>>"$TMP/check.log"
        ) &
        JOBS+=($!)
    done
    wait_jobs
    for k in $(seq "$POOL"); do
        POOL_IP[$k]=$(python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.load(open(sys.argv[1]))["ips"] if ":" not in i["address"]][0])' "$TMP/add-pool-$k.json") ||
            { not_ok "CNI ADD of pool-$k failed: $(cat "$TMP/add-pool-$k.json")"; exit 1; }
    done
}
pool_delete() {
    local k pod keep=()
    for k in $(seq "$POOL"); do
        pod=pool-$k
        (
            cni_chain DEL "$pod" >>"$TMP/check.log" 2>&1
            ip netns del "$RUN-$pod"
            rmdir "$(pod_cgroup "$pod")/ctr" "$(pod_cgroup "$pod")"
        ) &
        JOBS+=($!)
    done
    wait_jobs
    for pod in "${PODS[@]}"; do [[ $pod == pool-* ]] || keep+=("$pod"); done
    PODS=("${keep[@]}")
    rm -f "$TMP"/add-pool-*.json
}
declare -A POOL_IP=()

PEAK=$BASE_EXPO
LIFECYCLES=0
t0=$(date +%s)
for r in $(seq "$ROUNDS"); do
    if (((r - 1) % RECREATE == 0)); then
        ((r > 1)) && pool_delete
        pool_create
        LIFECYCLES=$((LIFECYCLES + POOL))
    fi
    ns=churn-r$r  # one namespace per round: its series can be summed while they live
    first=$(((r - 1) * POOL + 1))
    last=$((r * POOL > TOTAL ? TOTAL : r * POOL))
    wl=""
    for i in $(seq "$first" "$last"); do
        k=$((i - first + 1))
        wl+="- {uid: Kubernetes//Pod/$ns/churn-$i, name: churn-$i, namespace: $ns, workload_name: churn-$i, addresses: [\"${POOL_IP[$k]}\"]}"$'\n'
    done
    # The round's own service, 10.96.1.<round>, served by the stable server.
    svc="- {name: churn-svc-$r, namespace: $ns, hostname: churn-svc-$r.$ns.svc.cluster.local, addresses: [\"10.96.1.$r\"], ports: [{service_port: 80, target_port: 8080}]}"
    apply "$(stable "$svc" "$ns/churn-svc-$r.$ns.svc.cluster.local: ")
$wl"
    # Each of the round's workloads connects once to the stable service and once to the round's.
    for i in $(seq "$first" "$last"); do
        (
            out=$(pod_connect "pool-$((i - first + 1))" 10.96.0.10 80 1; pod_connect "pool-$((i - first + 1))" "10.96.1.$r" 80 1)
            [[ $(xargs <<<"$out") == "server server" ]] || echo "churn-$i: $(xargs <<<"$out")" >>"$TMP/failed-conns.log"
        ) &
        JOBS+=($!)
    done
    wait_jobs
    want=$((2 * (last - first + 1)))
    got=$(prom_wait_value "sum(istio_tcp_connections_closed_total{reporter=\"source\", source_workload_namespace=\"$ns\"})" "$want" 20)
    [[ $got == "$want" ]] || echo "round $r: Prometheus counted $got closed connections, expected $want" >>"$TMP/miscounted.log"
    n=$(exposition_count)
    ((n > PEAK)) && PEAK=$n
    log "round $r: workloads churn-$first..churn-$last, closed connections in Prometheus $got of $want, series $n"
    # The round's workloads and service leave the mesh.
    apply "$(stable)"
done
pool_delete
log "$TOTAL workloads ($LIFECYCLES real pod lifecycles) in $(($(date +%s) - t0)) s"
FAILED_CONNS=0
[[ -s $TMP/failed-conns.log ]] && FAILED_CONNS=$(wc -l <"$TMP/failed-conns.log")
check "every churned workload's connections succeeded ($FAILED_CONNS failed: $(head -3 "$TMP/failed-conns.log" 2>/dev/null | xargs))" \
    test "$FAILED_CONNS" = 0
check "Prometheus counted every round's connections exactly ($(head -3 "$TMP/miscounted.log" 2>/dev/null | xargs))" \
    test ! -s "$TMP/miscounted.log"
check "the churned workloads raised the series count (peak $PEAK, baseline $BASE_EXPO; at least 2 per workload of a round)" \
    eval "((PEAK >= BASE_EXPO + 2 * POOL))"

# After the grace period (and a GC pass), the series of the gone workloads and services are dropped.
for _ in $(seq $(((GRACE + 30) * 5))); do
    n=$(exposition_count)
    ((n == BASE_EXPO)) && break
    sleep 0.2
done
check "the exposition is back to its baseline of $BASE_EXPO series ($n)" test "$n" = "$BASE_EXPO"
prom_fresh; prom_fresh
n=$(prom_value "count($SERIES)")
check "Prometheus counts the baseline again: count($SERIES) = $n (baseline $BASE_PROM)" test "$n" = "$BASE_PROM"
check "no series names a churned workload" test "$(prom_value 'count({source_workload=~"churn-.*"}) or vector(0)')" = 0
check "no series names a churned service" test "$(prom_value 'count({destination_service=~"churn-svc-.*"}) or vector(0)')" = 0
check "the stable pods' series are still there" \
    test "$(prom_value 'sum(istio_tcp_connections_closed_total{source_workload="client", reporter="source"})')" = 3
log "agent RSS after the churn: $(awk '/VmRSS/ {print $2, $3}' "/proc/$AGENT_PID/status" 2>/dev/null)"
