#!/usr/bin/env bash
# The agent fed by istiod's Delta xDS (a fake istiod serving fixtures on loopback), for real:
# pushes reach connect(), a malformed resource is NACKed while the rest applies and traffic keeps
# flowing, istiod restarting with a smaller snapshot removes what vanished, per-workload target
# ports work, the admin server shows both the model and the maps, and agent restarts keep traffic
# flowing (a resource istiod now sends in a refused form included); authorization policies reach
# the model and the admin's authz check. Usage: e2e_xds.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

FIXTURE="python3 $E2E_DIR/../xds/make_fixture.py"
ISTIOD_PORT=$(free_port)
ADMIN_PORT=$(free_port)
CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
ISTIOD_PID=

istiod_stop() { kill "$ISTIOD_PID" 2>/dev/null; wait "$ISTIOD_PID" 2>/dev/null || true; }
push() { # <fixture file>: the next snapshot, pushed as a difference; returns once istiod loaded it
    cp "$1" "$CONTROL/snapshot.json.tmp" && mv "$CONTROL/snapshot.json.tmp" "$CONTROL/snapshot.json"
    touch "$CONTROL/push"
    for _ in $(seq 250); do [[ -e $CONTROL/push ]] || return 0; sleep 0.02; done
    log "fake istiod did not take the push"; return 1
}
events() { cat "$CONTROL/events.jsonl" 2>/dev/null || true; }
wait_event() { # <regex> <min-count>
    for _ in $(seq 100); do
        (($(events | grep -cE -- "$1" || true) >= $2)) && return 0
        sleep 0.1
    done
    log "timed out waiting for event /$1/ x$2"; events; return 1
}
admin() { curl -sf "http://127.0.0.1:$ADMIN_PORT$1"; }

SVC=default/echo.default.svc.cluster.local
snapshot() { # <extra args...>: the echo service (target port left to each workload) plus workloads
    $FIXTURE --service "$SVC=10.96.0.10,[fd00:96::10],80:0" "$@"
}
wl() { # <name> <ip4> <ip6>: a workload serving echo's port 80 on 8080 (named port, resolved per pod)
    echo --workload "uid=Kubernetes//Pod/default/$1,name=$1,ip=$2+$3,services=$SVC:80:8080"
}

$FIXTURE >"$TMP/empty.json"
istiod_start "$ISTIOD_PORT" "$CONTROL" "$TMP/empty.json"
agent_start --xds-address "127.0.0.1:$ISTIOD_PORT" --xds-plaintext --cluster-id Kubernetes --node-name node-1 \
    --pod-name kmesh-abc --pod-namespace kmesh-system --instance-ip 10.0.0.1
wait_event '"event": ?"ack"' 2
wait_log "config generation 1 applied" 1

pod_create client
pod_create backend-1; B1=("$POD_IP4" "$POD_IP6")
pod_create backend-2; B2=("$POD_IP4" "$POD_IP6")
pod_serve backend-1 backend-1 8080
pod_serve backend-2 backend-2 8080

check "the agent connected with a ztunnel node id" grep -q 'ztunnel~10.0.0.1~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local' "$CONTROL/events.jsonl"

snapshot $(wl backend-1 "${B1[@]}") $(wl backend-2 "${B2[@]}") >"$TMP/two.json"
push "$TMP/two.json"
wait_log "config generation 2 applied" 1
out=$(pod_connect client 10.96.0.10 80 40)
both() { grep -qx backend-1 <<<"$1" && grep -qx backend-2 <<<"$1" && ! grep -qv '^backend-[12]$' <<<"$1"; }
check "a pushed service reaches both backends through per-workload target ports ($(sort <<<"$out" | uniq -c | xargs))" both "$out"
out=$(pod_connect client fd00:96::10 80 20)
check "over IPv6 too" both "$out"

snapshot $(wl backend-2 "${B2[@]}") >"$TMP/one.json"
push "$TMP/one.json"
wait_log "config generation 3 applied" 1
out=$(pod_connect client 10.96.0.10 80 20)
check "a removed endpoint gets no new connections" test "$(sort -u <<<"$out")" = backend-2

# One push: a malformed workload (a 5-byte address) next to a valid change (backend-1 returns).
snapshot $(wl backend-1 "${B1[@]}") $(wl backend-2 "${B2[@]}") --malformed-workload uid=Kubernetes//Pod/default/bad,addrbytes=5 \
    >"$TMP/bad.json"
push "$TMP/bad.json"
wait_event '"event": ?"nack"' 1
check "the malformed resource is NACKed, naming it" grep -q 'Kubernetes//Pod/default/bad: workload address is 5 bytes' "$CONTROL/events.jsonl"
wait_log "config generation 4 applied" 1
out=$(pod_connect client 10.96.0.10 80 40)
check "the rest of that response applied and traffic is unaffected" both "$out"

dump=$(admin /debug/config_dump)
check "admin config_dump shows the service and workloads" grep -q '"hostname":"echo.default.svc.cluster.local"' <<<"$dump"
check "admin config_dump has no trace of the rejected workload" eval '! grep -q "default/bad" <<<"$dump"'
maps=$(admin /debug/maps)
check "admin maps dump names the workloads read back from the maps" grep -q 'Kubernetes//Pod/default/backend-1' <<<"$maps"
check "and shows the per-workload port overrides" grep -q 'in default/echo.default.svc.cluster.local: 80 -> 8080' <<<"$maps"
check "admin listens on localhost only" eval "ss -ltn | grep -q '127.0.0.1:$ADMIN_PORT ' && ! ss -ltn | grep -q '0.0.0.0:$ADMIN_PORT '"

# istiod goes away: the data plane keeps serving; it comes back with a smaller snapshot.
istiod_stop
wait_log "xds: disconnected" 1
check "with istiod down, the last state keeps serving" both "$(pod_connect client 10.96.0.10 80 40)"
istiod_start "$ISTIOD_PORT" "$CONTROL" "$TMP/one.json"
wait_log "config generation 5 applied" 1
check "on reconnect the agent sent the versions it holds" grep -qE '"initial_versions": ?[1-9]' "$CONTROL/events.jsonl"
out=$(pod_connect client 10.96.0.10 80 20)
check "resources that vanished while disconnected are removed" test "$(sort -u <<<"$out")" = backend-2

# A client connecting in a loop, one connection per run, every result kept (markers too), so that a
# check covers the whole of a restart and not only its end.
TRAFFIC=$TMP/traffic.out
traffic_start() {
    rm -f "$TMP/traffic.stop"
    : >"$TRAFFIC"
    (while [[ ! -e $TMP/traffic.stop ]]; do
        pod_connect client 10.96.0.10 80 1 --timeout-ms 1000 >>"$TRAFFIC" 2>&1 || echo "echo_tool failed" >>"$TRAFFIC"
    done) &
    TRAFFIC_PID=$!
    PIDS+=($TRAFFIC_PID)
    sleep 0.3
}
traffic_stop() { sleep 0.3; touch "$TMP/traffic.stop"; wait "$TRAFFIC_PID" || true; }
mark() { echo "# $1" >>"$TRAFFIC"; }
all_reached() { # every connect went to backend-2, and some were made while the agent was down
    local results during
    results=$(grep -v '^#' "$TRAFFIC")
    during=$(sed -n '/^# agent stopped/,/^# agent ready/p' "$TRAFFIC" | grep -vc '^#' || true)
    echo "$(wc -l <<<"$results") connects ($during while restarting): $(sort <<<"$results" | uniq -c | xargs)"
    [[ $(sort -u <<<"$results") == backend-2 ]] && ((during > 0))
}

# A restarted agent recovers its ids from the maps: istiod's full state then changes nothing.
traffic_start
mark "agent stopped"
agent_stop
agent_start --xds-address "127.0.0.1:$ISTIOD_PORT" --xds-plaintext --node-name node-1
mark "agent ready"
check "a restarted agent finds the maps already in istiod's state" \
    wait_log "applied: 1 services, 1 workloads; 0 map changes" 1
traffic_stop
check "and traffic flowed throughout, every connect counted ($(all_reached || true))" all_reached

# Restarted again, while istiod begins sending echo in a form this agent refuses (a 5-byte VIP).
# The new agent never had a good echo in its model, but the maps have one: it must keep serving.
BAD_ECHO='{"service":{"name":"echo","namespace":"default","hostname":"echo.default.svc.cluster.local","addresses":[{"network":"","address":"AQIDBAU="}],"ports":[{"servicePort":80}]}}'
$FIXTURE --address-json "$BAD_ECHO" $(wl backend-2 "${B2[@]}") >"$TMP/bad-echo.json"
nacks=$(events | grep -cE '"event": ?"nack"' || true)
traffic_start
mark "agent stopped"
agent_stop
istiod_stop
istiod_start "$ISTIOD_PORT" "$CONTROL" "$TMP/bad-echo.json"
agent_start --xds-address "127.0.0.1:$ISTIOD_PORT" --xds-plaintext --node-name node-1
mark "agent ready"
wait_event '"event": ?"nack"' $((nacks + 1))
check "the refused echo is NACKed, naming it" \
    grep -q 'default/echo.default.svc.cluster.local: service address is 5 bytes' "$CONTROL/events.jsonl"
check "the restarted agent leaves echo's last good map entries alone" \
    wait_log "applied: 0 services, 1 workloads; 0 map changes" 1
traffic_stop
check "echo's connects still translate, every one of them ($(all_reached || true))" all_reached

# istiod removes echo: what was kept for it goes.
$FIXTURE $(wl backend-2 "${B2[@]}") >"$TMP/no-echo.json"
push "$TMP/no-echo.json"
wait_log "applied: 0 services, 1 workloads" 2
out=$(pod_connect client 10.96.0.10 80 3 --timeout-ms 500 || true)
check "once istiod removes it, echo's VIP is no longer translated ($(sort -u <<<"$out" | xargs))" \
    eval '! grep -q backend <<<"$out"'

# Authorization policies from istiod reach the model (service accounts and presence included),
# identities come with the workloads, and the reference evaluator answers on them; a policy with
# a prefix longer than its address is NACKed naming it.
DENY_SLEEP='{"name":"deny-sleep","namespace":"default","scope":"NAMESPACE","action":"DENY","rules":[{"clauses":[{"matches":[{"serviceAccounts":[{"namespace":"default","serviceAccount":"sleep"}],"principals":[{"presence":{}}]}]}]}]}'
BAD_POLICY='{"name":"bad-prefix","namespace":"default","rules":[{"clauses":[{"matches":[{"sourceIps":[{"address":"CgAAAA==","length":40}]}]}]}]}'
nacks=$(events | grep -cE '"event": ?"nack"' || true)
$FIXTURE $(wl backend-2 "${B2[@]}") \
    --workload "uid=Kubernetes//Pod/default/sleep,name=sleep,namespace=default,sa=sleep,trust_domain=example.org,ip=10.244.0.201" \
    --workload "uid=Kubernetes//Pod/default/server,name=server,namespace=default,sa=server,ip=10.244.0.202" \
    --authorization-json "$DENY_SLEEP" --authorization-json "$BAD_POLICY" >"$TMP/policies.json"
push "$TMP/policies.json"
wait_event '"event": ?"nack"' $((nacks + 1))
check "the policy with a 40-bit prefix is NACKed, naming it" \
    grep -q 'default/bad-prefix: source_ips: prefix length 40 longer than the address' "$CONTROL/events.jsonl"
has_policy() { grep -q '"name":"deny-sleep"' <<<"$(admin /debug/config_dump)"; }
for _ in $(seq 50); do has_policy && break; sleep 0.1; done
admin /debug/config_dump >"$TMP/dump.json"
check "the config dump shows istiod's policy in words, and the workloads' identities" python3 - "$TMP/dump.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = {x["namespace"] + "/" + x["name"]: x for x in d["policies"]}
print(json.dumps(p), [w.get("principal") for w in d["workloads"]])
assert list(p) == ["default/deny-sleep"]
assert p["default/deny-sleep"]["rules"] == ["(principal in [present] and service account in [default/sleep])"]
w = {x["uid"]: x for x in d["workloads"]}
assert w["Kubernetes//Pod/default/sleep"]["principal"] == "spiffe://example.org/ns/default/sa/sleep"
PY
rc=0; out=$(kmeshctl --admin "127.0.0.1:$ADMIN_PORT" authz check --src 10.244.0.201 --dst 10.244.0.202 --port 8080) || rc=$?
check "authz check: sleep -> server is denied by deny-sleep (exit $rc)" eval '[[ $rc == 2 && $out == *"DENY policy default/deny-sleep"* ]]'
rc=0; out=$(kmeshctl --admin "127.0.0.1:$ADMIN_PORT" authz check --src 10.244.0.202 --dst 10.244.0.201 --port 8080) || rc=$?
check "authz check: server -> sleep is allowed (exit $rc)" eval '[[ $rc == 0 && $out == allow* ]]'
