#!/usr/bin/env bash
# Istio's TCP metrics from the kernel, scraped by a real Prometheus (issue 11 section 4): enrolled
# pods talk through a service VIP (IPv4, then IPv6) with byte counts the test chooses in each
# direction; Debian's prometheus scrapes the agent's --metrics-port every second, and the test asks
# its HTTP API for what the agent exported:
#   - exact opened/closed connection counts per reporter (source: the client pod's socket;
#     destination: the server pod's), per destination workload against the servers' own logs;
#   - request/response bytes within the TCP tolerance of docs/telemetry.md (a FIN counts one byte in
#     the kernel's counters), the oracle being what telemetry_tool.py sent;
#   - the label values from the test's config (workload, namespace, principal, canonical service,
#     service) and "unknown" where the config gives none; every Istio label present;
#   - a connection held open reports its bytes before it closes; a pod outside the mesh shows up
#     only as reporter=destination with an unknown source; connect() failures are counted by reason;
#   - `promtool check metrics` passes on the exposition; the metrics port answers nothing but its path;
#   - every query of deploy/grafana/kmesh-dashboard.json parses and returns data;
#   - with --monitoring=off, traffic creates no istio_tcp series.
# Usage: e2e_telemetry.sh <build-dir>
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/prometheus.sh"
e2e_init "${1:?usage: $0 <build-dir>}"
ROOT=$(cd "$E2E_DIR/../.." && pwd)
TOOL=$E2E_DIR/telemetry_tool.py

# Per connection and direction, the kernel's byte counters may exceed the payload by the FIN (one
# sequence number; the SYN is left out by the baseline taken at establishment: docs/telemetry.md,
# "Accuracy"). Never below the payload.
TOL=1
METRICS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
BASE_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256"
# lib.sh passes --metrics-address 127.0.0.1 --metrics-port $METRICS_PORT.
TEL_FLAGS="--metrics-flush-interval 1"
AGENT_FLAGS="$BASE_FLAGS $TEL_FLAGS"
MESH=$TMP/mesh.yaml
SVC=echo.default.svc.cluster.local

config() { # <client ip4> <client ip6> <b1 ip4> <b1 ip6> <b2 ip4> <b2 ip6>
    cat <<YAML
services:
- {name: echo, namespace: default, hostname: $SVC, addresses: ["10.96.0.10", "fd00:96::10"], ports: [{service_port: 80, target_port: 8080}]}
- {name: empty, namespace: default, hostname: empty.default.svc.cluster.local, addresses: ["10.96.0.20"], ports: [{service_port: 80, target_port: 8080}]}
workloads:
- uid: Kubernetes//Pod/shop/client-5d8f7-x2x9q
  name: client-5d8f7-x2x9q
  namespace: shop
  workload_name: client
  canonical_name: client-app
  canonical_revision: v7
  service_account: sleep
  addresses: ["$1", "$2"]
- uid: Kubernetes//Pod/default/echo-v1-abcde
  name: echo-v1-abcde
  namespace: default
  workload_name: echo-v1
  canonical_name: echo
  canonical_revision: v1
  service_account: echo
  addresses: ["$3", "$4"]
  services: {default/$SVC: }
- uid: Kubernetes//Pod/default/echo-v2-fghij
  name: echo-v2-fghij
  namespace: default
  workload_name: echo-v2
  addresses: ["$5", "$6"]
  services: {default/$SVC: }
YAML
}

replace_file "$MESH" "services: []"
agent_start "$MESH"
wait_log "config generation 1 applied" 1
pod_create client; C4=$POD_IP4 C6=$POD_IP6
pod_create backend-1; B1_4=$POD_IP4 B1_6=$POD_IP6
pod_create backend-2; B2_4=$POD_IP4 B2_6=$POD_IP6
pod_create outsider plain
replace_file "$MESH" "$(config "$C4" "$C6" "$B1_4" "$B1_6" "$B2_4" "$B2_6")"
wait_log "config generation 2 applied" 1
: >"$TMP/srv-1.log"; : >"$TMP/srv-2.log"

SERVER_PIDS=()
serve() { # <response bytes>: (re)starts both backends' servers (telemetry_tool.py) answering that many bytes
    local b
    # The background job may be a shell whose child is the python server: stop both. `wait` returns
    # the job's 143 (SIGTERM), which set -e must not take for a failure of this script.
    for pid in "${SERVER_PIDS[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
    for b in 1 2; do  # the old servers gone from :8080 before the new ones bind it
        for _ in $(seq 50); do
            [[ -z $(nsenter --net="/run/netns/$RUN-backend-$b" ss -ltnH 'sport = :8080') ]] && break
            sleep 0.1
        done
    done
    for b in 1 2; do
        pod_exec "backend-$b" python3 "$TOOL" serve 8080 "$1" --log "$TMP/srv-$b.log" &
        SERVER_PIDS+=($!); PIDS+=($!)
    done
    for b in 1 2; do
        for _ in $(seq 50); do nsenter --net="/run/netns/$RUN-backend-$b" ss -ltnH 'sport = :8080' | grep -q . && break; sleep 0.1; done
    done
}
served() { wc -l <"$TMP/srv-$1.log"; }  # connections a backend's server completed

scrape() { curl -sS --max-time 5 "http://127.0.0.1:$METRICS_PORT/stats/prometheus"; }

# --- The metrics endpoint: on the address asked for, its path only, valid text.
check "the metrics server listens on 127.0.0.1:$METRICS_PORT only" \
    eval "ss -ltnH 'sport = :$METRICS_PORT' | awk '{print \$4}' | grep -qx '127.0.0.1:$METRICS_PORT'"
code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/stats/prometheus" || true)
check "GET /stats/prometheus answers 200 ($code)" test "$code" = 200
code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$METRICS_PORT/debug/config_dump" || true)
check "nothing else is served on the metrics port (/debug/config_dump: $code)" test "$code" = 404

prom_start "127.0.0.1:$METRICS_PORT" /stats/prometheus

# Sums over a reporter's series, as Prometheus has them.
q() { # <metric> <reporter> [extra matchers]
    echo "sum(${1}{reporter=\"$2\"${3:+, $3}})"
}
# Checks are queued and evaluated in batches by prom_checks.py (one process: polling each query
# from the shell cost ~2.5 s a check under ASan load). A batch waits until every value first
# reached what is expected (up to 20 s), then for two complete scrapes (every event of the phase
# is in Prometheus then: the scrape flushes the kernel's events first), then reads every value
# again: a count that overshoots after first matching fails. run_checks evaluates the queue; call
# it before anything that changes what the queued checks read (new traffic, a release).
PENDING=$TMP/pending-checks.tsv
: >"$PENDING"
exact() { # <description> <promql> <expected>
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$3" >>"$PENDING"
}
within() { # <description> <promql> <low> <high>: low <= value <= high
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$PENDING"
}
run_checks() {
    local line
    [[ -s $PENDING ]] || return 0
    while IFS= read -r line; do
        case $line in
        "ok "*) ok "${line#ok }" ;;
        *) not_ok "${line#FAIL }" ;;
        esac
    done < <(python3 "$E2E_DIR/prom_checks.py" "http://127.0.0.1:$PROM_PORT" <"$PENDING" 2>&1 || echo "FAIL prom_checks.py failed")
    : >"$PENDING"
}

# Totals the test has sent so far (the oracle): connections, request and response bytes.
CONNS=0 REQ_BYTES=0 RESP_BYTES=0
traffic() { # <description> <addr> <n> <request bytes> <response bytes>
    local out
    run_checks  # what was queued reads the totals before this traffic
    serve "$5"
    out=$(pod_exec client python3 "$TOOL" connect "$2" 80 "$3" "$4" "$5" 2>&1 | tail -1 || true)
    check "$1: $3 connections to $2:80, $4 B up and $5 B down each ($out)" \
        test "$out" = "connections=$3 ok=$3 sent=$(($3 * $4)) received=$(($3 * $5))"
    CONNS=$((CONNS + $3)) REQ_BYTES=$((REQ_BYTES + $3 * $4)) RESP_BYTES=$((RESP_BYTES + $3 * $5))
}
counts_and_bytes() { # <phase>: every total, for both reporters
    local r
    for r in source destination; do
        exact "$1, reporter=$r: connections opened" "$(q istio_tcp_connections_opened_total $r 'source_workload="client"')" $CONNS
        exact "$1, reporter=$r: connections closed" "$(q istio_tcp_connections_closed_total $r 'source_workload="client"')" $CONNS
        within "$1, reporter=$r: request bytes (istio_tcp_received_bytes_total)" \
            "$(q istio_tcp_received_bytes_total $r 'source_workload="client"')" $REQ_BYTES $((REQ_BYTES + TOL * CONNS))
        within "$1, reporter=$r: response bytes (istio_tcp_sent_bytes_total)" \
            "$(q istio_tcp_sent_bytes_total $r 'source_workload="client"')" $RESP_BYTES $((RESP_BYTES + TOL * CONNS))
    done
    # Which backend each connection reached: the servers' logs against both reporters' series.
    for b in 1 2; do
        for r in source destination; do
            exact "$1, reporter=$r: connections to echo-v$b as the server logged them" \
                "$(q istio_tcp_connections_opened_total $r "source_workload=\"client\", destination_workload=\"echo-v$b\"") or vector(0)" "$(served $b)"
        done
    done
}

# --- IPv4, then IPv6 through the VIP: exact counts, bytes within tolerance.
traffic "IPv4 VIP" 10.96.0.10 20 1000 5000
counts_and_bytes "after IPv4"
traffic "IPv6 VIP" fd00:96::10 15 3000 700
counts_and_bytes "after IPv4 + IPv6"
check "both backends served some of the connections ($(served 1) + $(served 2))" \
    eval "(($(served 1) > 0 && $(served 2) > 0 && $(served 1) + $(served 2) == CONNS))"

# --- Kmesh's own per-pod and per-service series.
exact "kmesh_workload_connections_opened_total of the client pod as client" \
    'sum(kmesh_workload_connections_opened_total{reporter="source", workload="client-5d8f7-x2x9q", workload_namespace="shop"})' $CONNS
exact "kmesh_workload_connections_closed_total of echo-v1's pod as server, as its server logged" \
    'sum(kmesh_workload_connections_closed_total{reporter="destination", workload="echo-v1-abcde", workload_namespace="default"})' "$(served 1)"
exact "kmesh_service_connections_opened_total of the echo service (client side)" \
    "sum(kmesh_service_connections_opened_total{reporter=\"source\", destination_service=\"$SVC\", destination_service_name=\"echo\", destination_service_namespace=\"default\"})" $CONNS

# --- Labels: what the config says, "unknown" where it says nothing; Istio's full label set.
run_checks
prom_query 'istio_tcp_connections_opened_total{source_workload="client"}' >"$TMP/series.json"
check "the label values follow the config and Istio's conventions" python3 - "$TMP/series.json" <<'PY'
import json, re, sys
series = [r["metric"] for r in json.load(open(sys.argv[1]))["data"]["result"]]
istio = ["reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
         "source_version", "destination_workload", "destination_workload_namespace", "destination_principal",
         "destination_app", "destination_version", "destination_service", "destination_service_name",
         "destination_service_namespace", "request_protocol", "response_flags", "connection_security_policy",
         "source_canonical_service", "source_canonical_revision", "destination_canonical_service",
         "destination_canonical_revision", "source_cluster", "destination_cluster"]
client = {"source_workload": "client", "source_workload_namespace": "shop",
          "source_principal": "spiffe://cluster.local/ns/shop/sa/sleep",
          "source_canonical_service": "client-app", "source_canonical_revision": "v7",
          "source_app": "client-app", "source_version": "v7", "response_flags": "-",
          "destination_service": "echo.default.svc.cluster.local", "destination_service_name": "echo",
          "destination_service_namespace": "default", "destination_workload_namespace": "default",
          "request_protocol": "tcp"}
backend = {"echo-v1": {"destination_principal": "spiffe://cluster.local/ns/default/sa/echo",
                       "destination_canonical_service": "echo", "destination_canonical_revision": "v1",
                       "destination_app": "echo", "destination_version": "v1"},
           # echo-v2 has no service account, canonical name or revision in the config.
           "echo-v2": {"destination_principal": "unknown", "destination_canonical_service": "unknown",
                       "destination_canonical_revision": "unknown", "destination_app": "unknown",
                       "destination_version": "unknown"}}
# Only the server side could know about mutual TLS; the kernel path is plain TCP.
security = {"source": "unknown", "destination": "none"}
bad = []
seen = set()
for s in series:
    missing = [l for l in istio if l not in s]
    if missing:
        bad.append(f"{s}: missing labels {missing}")
    want = dict(client, **backend.get(s.get("destination_workload"), {"destination_workload": "echo-v1|echo-v2"}),
                connection_security_policy=security.get(s.get("reporter"), "-"))
    for k, v in want.items():
        if not re.fullmatch(v, s.get(k, "")):
            bad.append(f"{s.get('reporter')}/{s.get('destination_workload')}: {k}={s.get(k)!r}, expected {v!r}")
    seen.add((s.get("reporter"), s.get("destination_workload")))
expect = {(r, w) for r in ("source", "destination") for w in ("echo-v1", "echo-v2")}
if seen != expect:
    bad.append(f"series for {sorted(seen)}, expected {sorted(expect)}")
print("\n".join(bad) or f"{len(series)} series, labels as expected: {series[0] if series else ''}")
sys.exit(1 if bad else 0)
PY

# --- A long-lived connection reports its bytes while it is open.
serve 100
rm -f "$TMP/release"
pod_exec client python3 "$TOOL" connect 10.96.0.10 80 1 4096 100 --hold-until "$TMP/release" >"$TMP/held.log" 2>&1 &
HELD=$!
PIDS+=($HELD)
for _ in $(seq 50); do grep -q holding "$TMP/held.log" && break; sleep 0.1; done
OPEN_REQ=$((REQ_BYTES + 4096))
within "while held open: request bytes reported before the close" \
    "$(q istio_tcp_received_bytes_total destination 'source_workload="client"')" $OPEN_REQ $((OPEN_REQ + TOL * (CONNS + 1)))
exact "while held open: opened counts it" "$(q istio_tcp_connections_opened_total source 'source_workload="client"')" $((CONNS + 1))
exact "while held open: closed does not" "$(q istio_tcp_connections_closed_total source 'source_workload="client"')" $CONNS
run_checks
touch "$TMP/release"
wait "$HELD"
check "the held connection completed: $(tail -1 "$TMP/held.log")" grep -qx "connections=1 ok=1 sent=4096 received=100" "$TMP/held.log"
CONNS=$((CONNS + 1)) REQ_BYTES=$OPEN_REQ RESP_BYTES=$((RESP_BYTES + 100))
counts_and_bytes "after the held connection"

# --- A client outside the mesh: only the destination reports, with an unknown source.
run_checks
out=$(pod_exec outsider python3 "$TOOL" connect "$B1_4" 8080 5 100 100 2>&1 | tail -1 || true)
check "the outsider's 5 connections to echo-v1's pod IP: $out" test "$out" = "connections=5 ok=5 sent=500 received=500"
exact "reporter=destination counts the outsider's connections with source_workload=unknown" \
    'sum(istio_tcp_connections_opened_total{reporter="destination", source_workload="unknown", destination_workload="echo-v1"})' 5
within "and their request bytes" \
    'sum(istio_tcp_received_bytes_total{reporter="destination", source_workload="unknown", destination_workload="echo-v1"})' 500 $((500 + TOL * 5))
exact "no reporter=source series has an unknown source workload (the outsider is not enrolled)" \
    'count(istio_tcp_connections_opened_total{reporter="source", source_workload="unknown"}) or vector(0)' 0

# --- connect() failures by reason: a service without endpoints.
run_checks
out=$(pod_connect client 10.96.0.20 80 3)
check "3 connects to a service without endpoints are refused: $(xargs <<<"$out")" test "$(grep -c ECONNREFUSED <<<"$out")" = 3
exact "kmesh_connect_failures_total counts them by reason" 'sum(kmesh_connect_failures_total{reason=~"no_endpoint.*"})' 3

# --- The exposition itself: promtool, on the metrics port and on the admin port.
run_checks
scrape >"$TMP/exposition.txt"
check "promtool check metrics passes on /stats/prometheus ($(grep -c '^istio_tcp' "$TMP/exposition.txt") istio_tcp samples)" \
    eval 'promtool check metrics <"$TMP/exposition.txt"'
admin_get /metrics >"$TMP/admin-metrics.txt"
check "the admin port's /metrics has the same istio_tcp series" \
    eval '[[ $(grep -c "^istio_tcp" "$TMP/admin-metrics.txt") == $(grep -c "^istio_tcp" "$TMP/exposition.txt") ]]'
check "promtool check metrics passes on the admin port's /metrics" eval 'promtool check metrics <"$TMP/admin-metrics.txt"'
check "the exposition has kmesh_map_entries, kmesh_map_capacity and process_* metrics" \
    eval 'grep -q "^kmesh_map_entries{" "$TMP/exposition.txt" && grep -q "^kmesh_map_capacity{" "$TMP/exposition.txt" && grep -q "^process_resident_memory_bytes " "$TMP/exposition.txt"'

# --- The Grafana dashboard's every query, against this Prometheus and this traffic.
check "every query of deploy/grafana/kmesh-dashboard.json parses and returns data" \
    python3 "$E2E_DIR/dashboard_queries.py" "$ROOT/deploy/grafana/kmesh-dashboard.json" "http://127.0.0.1:$PROM_PORT" \
    --rate-interval 5m --positive '(opened|closed|[Bb]ytes)'
grep -E '^(ok|FAIL) ' "$TMP/check.log" | grep -E "panel|variable" | tail -40 | sed 's/^/    /'

# --- Switched off at run time (admin POST /debug/monitoring): new connections are not counted and
# make no new series (the outsider's connections to echo-v2 would: source unknown -> echo-v2).
prom_fresh
series0=$(prom_value 'count({__name__=~"istio_tcp.*"})')
opened0=$(prom_value 'sum(istio_tcp_connections_opened_total)')
resp=$(curl -sS --max-time 5 -X POST -d "" "http://127.0.0.1:$ADMIN_PORT/debug/monitoring?enabled=false" || true)
check "POST /debug/monitoring?enabled=false answers the new setting: $resp" grep -q '"enabled": *false' <<<"$resp"
serve 300
out=$(pod_exec client python3 "$TOOL" connect 10.96.0.10 80 10 300 300 2>&1 | tail -1 || true)
check "monitoring off at run time: 10 connections through the VIP ($out)" test "$out" = "connections=10 ok=10 sent=3000 received=3000"
out=$(pod_exec outsider python3 "$TOOL" connect "$B2_4" 8080 3 300 300 2>&1 | tail -1 || true)
check "and 3 from the outsider to echo-v2's pod IP ($out)" test "$out" = "connections=3 ok=3 sent=900 received=900"
prom_fresh; prom_fresh; prom_fresh
check "no new istio_tcp series ($(prom_value 'count({__name__=~"istio_tcp.*"})'), was $series0)" \
    test "$(prom_value 'count({__name__=~"istio_tcp.*"})')" = "$series0"
check "no connection counted ($(prom_value 'sum(istio_tcp_connections_opened_total)'), was $opened0)" \
    test "$(prom_value 'sum(istio_tcp_connections_opened_total)')" = "$opened0"
resp=$(curl -sS --max-time 5 -X POST -d "" "http://127.0.0.1:$ADMIN_PORT/debug/monitoring?enabled=true" || true)
check "POST /debug/monitoring?enabled=true switches it back on: $resp" grep -q '"enabled": *true' <<<"$resp"
out=$(pod_exec outsider python3 "$TOOL" connect "$B2_4" 8080 3 300 300 2>&1 | tail -1 || true)
exact "switched on again, the outsider's next 3 connections to echo-v2 are counted ($out)" \
    'sum(istio_tcp_connections_opened_total{reporter="destination", source_workload="unknown", destination_workload="echo-v2"})' 3

run_checks
# --- --monitoring=off at start: the same traffic makes no istio_tcp series.
agent_stop
AGENT_FLAGS="$BASE_FLAGS $TEL_FLAGS --monitoring=off"
agent_start "$MESH"
wait_log "config generation 1 applied" "$AGENT_STARTS"
for _ in $(seq 100); do [[ $(prom_target_health) == up ]] && break; sleep 0.2; done
prom_fresh
before1=$(served 1) before2=$(served 2)
serve 300
out=$(pod_exec client python3 "$TOOL" connect 10.96.0.10 80 10 300 300 2>&1 | tail -1 || true)
check "with --monitoring=off, 10 connections through the VIP: $out" test "$out" = "connections=10 ok=10 sent=3000 received=3000"
check "and the servers saw them" test $(($(served 1) + $(served 2) - before1 - before2)) = 10
prom_fresh; prom_fresh; prom_fresh
n=$(prom_value 'count({__name__=~"istio_tcp.*"}) or vector(0)')
check "with --monitoring=off Prometheus has no istio_tcp series ($n)" test "$n" = 0
scrape >"$TMP/exposition-off.txt"
check "and the exposition has no istio_tcp sample" eval '! grep -q "^istio_tcp" "$TMP/exposition-off.txt"'
