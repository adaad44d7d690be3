#!/usr/bin/env bash
# The agent's admin server and its config retries: a taken admin port does not stop the agent,
# idle or half-sent connections do not starve /metrics, /metrics is valid Prometheus text with the
# BPF programs' connect() counters, a state that cannot fit is refused before anything is written,
# an unchanged file is not parsed again on a retry, and a new file restarts the retry backoff;
# the Prometheus endpoint serves /stats/prometheus only, monitoring switches at run time;
# the config dump and `kmeshctl dump` show policies (rules, hit counts), waypoints and identities,
# and `kmeshctl authz check` answers from the reference evaluator.
# Usage: e2e_agent_admin.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(echo_one_backend 10.244.0.250)"

# 1. Another process holds the admin port when the agent starts (fresh node: nothing pinned yet).
# The blocker picks the port (a port free_port saw free may be taken again by the time it binds).
python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True); time.sleep(120)' >"$TMP/blocker.port" &
BLOCKER=$!
PIDS+=($BLOCKER)
for _ in $(seq 50); do [[ -s $TMP/blocker.port ]] && break; sleep 0.1; done
ADMIN_PORT=$(cat "$TMP/blocker.port")
METRICS_PORT=$(free_port)
AGENT_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256 --log-level debug"
agent_start "$MESH"
check "the agent runs although its admin port is taken" kill -0 "$AGENT_PID"
check "and says so" grep -q "admin: cannot listen on 127.0.0.1:$ADMIN_PORT" "$TMP/agent.log"
check "it still publishes its programs: a pod can be enrolled" pod_create client
pod_create backend
BACKEND_IP=$POD_IP4
pod_serve backend backend 8080
replace_file "$MESH" "$(echo_one_backend "$BACKEND_IP")"
wait_log "config generation 2 applied" 1
kill "$BLOCKER"
check "once the port is free the admin server binds it" wait_log "admin on http://127.0.0.1:$ADMIN_PORT" 1
check "/ready answers 200" test "$(admin_status /ready)" = 200
check "the failed binds are counted" eval 'grep -Eq "^kmesh_admin_bind_failures_total [1-9]" <<<"$(admin_get /metrics)"'

# 2. Translated connections show up in the BPF counters, summed over CPUs.
out=$(pod_connect client 10.96.0.10 80 7)
check "7 connections reach the backend" test "$(grep -c '^backend$' <<<"$out")" = 7
# Read again if the scrape itself failed (a 5 s curl timeout on a loaded machine): a count that is
# there but wrong still fails.
for _ in 1 2 3; do
    translated=$(admin_get /metrics | sed -n 's/^kmesh_connect_total{result="translated"} //p')
    [[ -n $translated ]] && break
    sleep 1
done
check "kmesh_connect_total{result=translated} counts them ($translated)" test "$translated" = 7
admin_get /metrics >"$TMP/metrics.txt"
check "/metrics passes promtool check metrics" eval 'promtool check metrics <"$TMP/metrics.txt"'
check "every series has HELP and TYPE" python3 - "$TMP/metrics.txt" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()
helped = {l.split()[2] for l in lines if l.startswith("# HELP ")}
typed = {l.split()[2] for l in lines if l.startswith("# TYPE ")}
names = {re.split(r"[{ ]", l)[0] for l in lines if l and not l.startswith("#")}
missing = sorted(n for n in names if n not in helped or n not in typed)
print("missing:", missing)
sys.exit(1 if missing or not names else 0)
PY

# 2b. The Prometheus endpoint (--metrics-port; loopback in tests, all addresses by default): it
# serves GET /stats/prometheus, the same series as the admin's /metrics, and nothing else.
metrics_status() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$@" || true; }
check "GET /stats/prometheus on the metrics port answers 200" \
    test "$(metrics_status "http://127.0.0.1:$METRICS_PORT/stats/prometheus")" = 200
curl -sS --max-time 5 "http://127.0.0.1:$METRICS_PORT/stats/prometheus" >"$TMP/prom.txt"
check "/stats/prometheus passes promtool check metrics" eval 'promtool check metrics <"$TMP/prom.txt"'
check "it has the agent's counters, map occupancy and capacity, telemetry and process series" eval \
    'grep -q "^kmesh_connect_total{result=\"translated\"} 7$" "$TMP/prom.txt" &&
     grep -q "^kmesh_map_entries{map=\"km_service\"} 1$" "$TMP/prom.txt" &&
     grep -q "^kmesh_map_capacity{map=\"km_service\"} 64$" "$TMP/prom.txt" &&
     grep -q "^kmesh_connect_failures_total{reason=\"no_endpoint\"} 0$" "$TMP/prom.txt" &&
     grep -q "^# TYPE istio_tcp_connections_opened_total counter$" "$TMP/prom.txt" &&
     grep -q "^process_resident_memory_bytes [1-9]" "$TMP/prom.txt"'
for path in /metrics / /ready /debug/config_dump /stats/prometheus/x; do
    check "GET $path on the metrics port is a 404" test "$(metrics_status "http://127.0.0.1:$METRICS_PORT$path")" = 404
done
check "POST /stats/prometheus is refused" \
    eval '[[ $(metrics_status -X POST -d x "http://127.0.0.1:$METRICS_PORT/stats/prometheus") == 40[45] ]]'
# Monitoring switches at run time (kmeshctl monitoring): GET and POST /debug/monitoring.
check "GET /debug/monitoring: on, access log off by default" \
    test "$(admin_get /debug/monitoring)" = '{"enabled":true,"access_log":false}'
check "POST ?accesslog=on turns the access log on" \
    test "$(admin_get "/debug/monitoring?accesslog=on" -X POST -d '')" = '{"enabled":true,"access_log":true}'
check "and the metrics say so" eval 'grep -q "^kmesh_accesslog_enabled 1$" <<<"$(admin_get /metrics)"'
check "a JSON body works too" test "$(admin_get /debug/monitoring -X POST -H 'Content-Type: application/json' \
    -d '{"access_log": false}')" = '{"enabled":true,"access_log":false}'
check "a bad value is a 400 that changes nothing" eval '[[ $(curl -s -o /dev/null -w "%{http_code}" -X POST -d "" \
    "http://127.0.0.1:$ADMIN_PORT/debug/monitoring?accesslog=maybe") == 400 &&
    $(admin_get /debug/monitoring) == "{\"enabled\":true,\"access_log\":false}" ]]'

# 3. Idle and half-sent connections hold no worker for long: /metrics still answers quickly.
python3 -c 'import socket, sys, time
conns = []
while len(conns) < 8:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    if len(conns) % 2: s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # half a request, never finished
    conns.append(s)
print("8 connections open", flush=True)
time.sleep(10)' "$ADMIN_PORT" >"$TMP/idle.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q "8 connections open" "$TMP/idle.log" && break; sleep 0.1; done
check "8 idle or half-sent connections are open" grep -q "8 connections open" "$TMP/idle.log"
t0=$(date +%s%N)
code=$(curl -s -o /dev/null --max-time 4 -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/metrics" || true)
ms=$((($(date +%s%N) - t0) / 1000000))
check "with 8 idle/half-sent connections open, /metrics answers within 4 s (took $ms ms, status $code)" test "$code" = 200

# 4. More services than --max-services: refused before anything is written.
python3 "$E2E_DIR/../../bench/mesh_config.py" 70 "$BACKEND_IP" >"$TMP/big.yaml"
mv "$TMP/big.yaml" "$MESH"
check "a file with 70 services is refused naming the limit" wait_log "70 services exceed --max-services 64" 1
check "nothing of it was written: the maps still hold 1 service" \
    eval 'admin_get /debug/maps | python3 -c "import json,sys; sys.exit(len(json.load(sys.stdin)[\"services\"]) != 1)"'
check "and the client still reaches the service" eval '[[ $(pod_connect client 10.96.0.10 80 3 | sort -u) == backend ]]'

# 5. A file that does not fit the frontend map (60 services x 5 ports > 256 frontends): the map
# write fails and is retried with backoff, without parsing the unchanged file again.
frontends() { # <services> <first VIP octet>
    echo "services:"
    for i in $(seq "$1"); do
        echo "- {name: s$i, namespace: f, hostname: s$i.f.svc.cluster.local, addresses: [\"10.$2.0.$i\"], ports: [{service_port: 1}, {service_port: 2}, {service_port: 3}, {service_port: 4}, {service_port: 5}]}"
    done
    echo "workloads: []"
}
parsed=$(grep -c "parsed $MESH in" "$TMP/agent.log")
replace_file "$MESH" "$(frontends 60 98)"
check "the map-full write is retried after 1, 2 and 4 s" wait_log "retrying in 4000 ms" 1
check "the unchanged file was parsed once, not on every retry" \
    test "$(grep -c "parsed $MESH in" "$TMP/agent.log")" = $((parsed + 1))
replace_file "$MESH" "$(frontends 61 99)"
check "a new file is tried at once" wait_log "parsed $MESH in" $((parsed + 2))
first_retry_after_new_file() {
    awk -v n=$((parsed + 2)) -v p="parsed $MESH in" 'index($0, p) { seen++ } seen >= n && /retrying in/ { sub(/.*retrying in /, ""); print; exit }' "$TMP/agent.log"
}
check "and restarts the backoff at 1 s (was: 8 s): '$(sleep 0.5; first_retry_after_new_file)'" \
    test "$(first_retry_after_new_file)" = "1000 ms"
# A bad file now must not cancel the retries of the last accepted (and not yet written) one.
rejected=$(grep -c "rejected, still serving the last good state" "$TMP/agent.log" || true)
replace_file "$MESH" "services: ["
check "a bad file after a failed apply is rejected" \
    wait_log "rejected, still serving the last good state" $((rejected + 1))
check "and the last accepted config is still retried" wait_log "(last accepted) still not fully applied" 2
replace_file "$MESH" "$(echo_one_backend "$BACKEND_IP")"
check "a fitting file is applied again" wait_log "applied: 1 services, 1 workloads" 3
check "and the client reaches the service" eval '[[ $(pod_connect client 10.96.0.10 80 3 | sort -u) == backend ]]'

# 6. Authorization policies, waypoints and identities in the admin views; authz check.
replace_file "$MESH" "services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, addresses: [\"10.96.0.10\"], ports: [{service_port: 80, target_port: 8080}]}
- name: wp
  namespace: default
  hostname: wp.default.svc.cluster.local
  addresses: [\"10.96.0.99\"]
  waypoint: {hostname: {namespace: istio-system, hostname: waypoint.istio-system.svc.cluster.local}, hbone_mtls_port: 15008}
workloads:
- {uid: Kubernetes//Pod/default/backend, addresses: [\"$BACKEND_IP\"], services: {default/echo.default.svc.cluster.local: }}
- {uid: Kubernetes//Pod/foo/bar, namespace: foo, service_account: bar, trust_domain: example.org, addresses: [\"10.244.0.77\"]}
- {uid: Kubernetes//Pod/default/sleep, namespace: default, service_account: sleep, addresses: [\"10.244.0.78\"], waypoint: {address: \"10.244.0.5\", hbone_mtls_port: 15019}}
- uid: Kubernetes//Pod/default/server
  namespace: default
  service_account: server
  addresses: [\"10.244.0.79\", \"fd00:10:244::79\"]
  authorization_policies: [default/only-8080]
policies:
- name: deny-foo
  namespace: default
  scope: NAMESPACE
  action: DENY
  rules: [{clauses: [{matches: [{namespaces: [{exact: foo}]}]}]}]
- name: only-8080
  namespace: default
  scope: WORKLOAD_SELECTOR
  action: ALLOW
  rules: [{clauses: [{matches: [{destination_ports: [8080]}]}]}]
- {name: audit, namespace: default, scope: NAMESPACE, action: DENY, dry_run: true, rules: [{}]}"
check "the config with policies is applied" wait_log "applied: 2 services, 4 workloads" 1
admin_get /debug/config_dump >"$TMP/dump.json"
check "the config dump shows every policy with its rules in words and hit counts" python3 - "$TMP/dump.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = {x["namespace"] + "/" + x["name"]: x for x in d["policies"]}
print(json.dumps(p, indent=1))
assert sorted(p) == ["default/audit", "default/deny-foo", "default/only-8080"]
assert p["default/deny-foo"]["rules"] == ['(namespace in ["foo"])'], p["default/deny-foo"]["rules"]
assert p["default/only-8080"]["rules"] == ["(port in [8080])"]
assert p["default/audit"]["rules"] == ["any connection"] and p["default/audit"]["dry_run"] is True
assert p["default/only-8080"]["scope"] == "WORKLOAD_SELECTOR" and p["default/deny-foo"]["action"] == "DENY"
assert all(x["hits"] == {"matched": 0, "dry_run_matched": 0, "closed": 0} for x in p.values())
assert set(d["authz_totals"]) >= {"allowed", "denied_by_policy", "denied_no_allow", "closed_existing"}
PY
check "workloads show their identity and waypoint, services their waypoint" python3 - "$TMP/dump.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = {x["uid"]: x for x in d["workloads"]}
assert w["Kubernetes//Pod/foo/bar"]["principal"] == "spiffe://example.org/ns/foo/sa/bar"
assert w["Kubernetes//Pod/default/server"]["principal"] == "spiffe://cluster.local/ns/default/sa/server"
assert w["Kubernetes//Pod/default/server"]["authorization_policies"] == ["default/only-8080"]
assert w["Kubernetes//Pod/default/sleep"]["waypoint"] == {"address": "10.244.0.5", "port": 15019}
s = {x["hostname"]: x for x in d["services"]}
assert s["wp.default.svc.cluster.local"]["waypoint"] == {"hostname": "istio-system/waypoint.istio-system.svc.cluster.local", "port": 15008}
PY
dump=$(kmeshctl --admin "127.0.0.1:$ADMIN_PORT" dump)
echo "$dump" >>"$TMP/check.log"
check "kmeshctl dump lists the 3 policies" grep -q "^authorization policies (3):" <<<"$dump"
check "with hit counts" grep -q "^  default/deny-foo NAMESPACE DENY: matched=0 dry_run_matched=0 closed=0" <<<"$dump"
check "and their rules" grep -q '^    rule 1: (port in \[8080\])' <<<"$dump"
check "kmeshctl dump shows the waypoints" grep -q "^  workload Kubernetes//Pod/default/sleep -> waypoint 10.244.0.5 port 15019" <<<"$dump"
check "and the service's by hostname" grep -q "^  service default/wp.default.svc.cluster.local -> waypoint istio-system/waypoint.istio-system.svc.cluster.local port 15008" <<<"$dump"
check "and the identities" grep -q "^  Kubernetes//Pod/foo/bar spiffe://example.org/ns/foo/sa/bar" <<<"$dump"
authz_check() { # <src> <dst> <port> [admin]: sets out and rc
    rc=0
    out=$(kmeshctl --admin "${4:-127.0.0.1:$ADMIN_PORT}" authz check --src "$1" --dst "$2" --port "$3" 2>&1) || rc=$?
    echo "$out" >>"$TMP/check.log"
}
authz_check 10.244.0.78 10.244.0.79 8080
check "authz check: sleep -> server:8080 is allowed by only-8080 (exit $rc)" eval '[[ $rc == 0 && $out == allow* && $out == *"ALLOW policy default/only-8080"* && $out == *"dry-run policy default/audit matches"* ]]'
authz_check 10.244.0.78 fd00:10:244::79 9090
check "authz check: sleep -> server:9090 is denied, no ALLOW matches (exit $rc)" eval '[[ $rc == 3 && $out == deny* && $out == *"none matches"* ]]'
authz_check ::ffff:10.244.0.77 10.244.0.79 8080
check "authz check: bar (IPv4-mapped) -> server is denied by deny-foo (exit $rc)" eval '[[ $rc == 3 && $out == *"DENY policy default/deny-foo"* && $out == *"spiffe://example.org/ns/foo/sa/bar"* ]]'
authz_check 10.244.0.300 10.244.0.79 8080
check "authz check: a bad address is a usage error naming it (exit $rc)" eval '[[ $rc == 2 && $out == *"src '"'"'10.244.0.300'"'"' is not an IP address"* ]]'
check "/debug/authz_check without arguments is a 400" test "$(admin_status /debug/authz_check)" = 400
authz_check 10.244.0.78 10.244.0.79 8080 127.0.0.1:1
check "authz check: no admin server is an error saying so (exit $rc)" eval '[[ $rc == 1 && $out == *"cannot reach the admin server at 127.0.0.1:1"* ]]'
