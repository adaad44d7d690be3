#!/usr/bin/env bash
# kmeshctl against the real agent (docs/kmeshctl.md): log level get/set (seen in the agent's own
# output), dump with policies and waypoints, authz status and waypoint status numbers checked
# against what the test did and what bpftool reads from the kernel, version fields against the
# built BPF object, monitoring toggles, and doctor: healthy on the test node (exit 0), failing with
# the right sentence when kmesh-cni is removed from the CNI bin dir or the conflist is not chained
# (exit 1), usage errors (exit 2).
# Usage: e2e_kmeshctl.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

ADMIN_PORT=$(free_port)
K() { kmeshctl --admin "127.0.0.1:$ADMIN_PORT" "$@"; }
run() { # <cmd...>: sets out (stdout+stderr) and rc
    rc=0
    out=$("$@" 2>&1) || rc=$?
    { echo "\$ $*"; echo "$out"; echo "(exit $rc)"; } >>"$TMP/check.log"
}

MESH=$TMP/mesh.yaml
replace_file "$MESH" '{"workloads": [], "policies": []}'
agent_start "$MESH"
wait_log "config generation 1 applied" 1
pod_create client
CLIENT_IP=$POD_IP4
pod_create server
SERVER_IP=$POD_IP4
pod_create wp
WP_IP=$POD_IP4
pod_serve server server 8080

mesh() { # <generation marker>: the same mesh, a distinct file each time (a new generation)
    cat <<YAML
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 8080}]}
- name: viawp
  namespace: default
  hostname: viawp.default.svc.cluster.local
  addresses: ["10.96.0.99"]
  waypoint: {hostname: {namespace: istio-system, hostname: waypoint.istio-system.svc.cluster.local}, hbone_mtls_port: 15008}
workloads:
- {uid: Kubernetes//Pod/default/server, name: server, namespace: default, service_account: server, addresses: ["$SERVER_IP"], services: {default/echo.default.svc.cluster.local: }}
- {uid: Kubernetes//Pod/foo/client, name: client, namespace: foo, service_account: client, addresses: ["$CLIENT_IP"]}
- {uid: Kubernetes//Pod/default/sleep, name: sleep, namespace: default, addresses: ["10.244.0.200"], waypoint: {address: "$WP_IP", hbone_mtls_port: 15019}}
- {uid: Kubernetes//Pod/default/marker-$1, name: marker, namespace: default, addresses: ["10.246.0.$1"]}
policies:
- {name: deny-foo, namespace: default, scope: NAMESPACE, action: DENY, rules: [{clauses: [{matches: [{namespaces: [{exact: foo}]}]}]}]}
- {name: audit, namespace: default, scope: NAMESPACE, action: DENY, dry_run: true, rules: [{}]}
YAML
}
replace_file "$MESH" "$(mesh 2)"
wait_log "config generation 2 applied" 1
for _ in $(seq 50); do [[ $(admin_status /ready) == 200 ]] && break; sleep 0.1; done
check "the agent is ready" test "$(admin_status /ready)" = 200

# --- log level: get, set, and the agent's own output follows.
run K log
check "log shows the start level ($out)" test "$out" = "log level: info"
run K log --set debug
check "log --set debug answers the change ($out)" eval '[[ $rc == 0 && $out == "log level: debug (was info)" ]]'
check "the agent says so in its log" grep -q "log level info -> debug (admin /debug/loglevel)" "$TMP/agent.log"
parsed=$(grep -c "parsed $MESH in" "$TMP/agent.log" || true)
replace_file "$MESH" "$(mesh 3)"
wait_log "config generation 3 applied" 1
check "at debug the agent logs its debug lines (parsed: $parsed -> $(grep -c "parsed $MESH in" "$TMP/agent.log"))" \
    test "$(grep -c "parsed $MESH in" "$TMP/agent.log")" -ge $((parsed + 1))
parsed=$(grep -c "parsed $MESH in" "$TMP/agent.log" || true)
run K log -o json
check "log -o json reads it back" eval '[[ $(python3 -c "import json,sys; print(json.loads(sys.argv[1])[\"level\"])" "$out") == debug ]]'
run K log --set info
check "log --set info ($out)" test "$out" = "log level: info (was debug)"
replace_file "$MESH" "$(mesh 4)"
wait_log "config generation 4 applied" 1
check "back at info the debug lines stop" test "$(grep -c "parsed $MESH in" "$TMP/agent.log")" = "$parsed"
run K log --set verbose
check "a bad level is a usage error (exit $rc) naming the levels" \
    eval '[[ $rc == 2 && $out == *"'"'"'verbose'"'"' is not a log level: use one of trace, debug, info, warn, error, critical, off"* ]]'
run K log
check "and changes nothing ($out)" test "$out" = "log level: info"

# --- traffic: 3 connects the DENY policy refuses, 2 connects redirected to the waypoint.
out=$(pod_connect client "$SERVER_IP" 8080 3 --timeout-ms 3000)
echo "$out" >>"$TMP/check.log"
check "client (namespace foo) -> server is refused 3 times by deny-foo" test "$(grep -c '^error' <<<"$out")" = 3
out=$(pod_connect client 10.244.0.200 80 2 --timeout-ms 3000)
echo "$out" >>"$TMP/check.log"
check "client -> sleep (address waypoint, nothing listens on 15019) fails twice" test "$(grep -c '^error' <<<"$out")" = 2

# --- authz status: the numbers against the connects made.
run K authz status -o json
echo "$out" >"$TMP/authz.json"
check "authz status -o json: published, deny-foo matched 3, audit saw them dry-run, in the kernel" python3 - "$TMP/authz.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = {x["namespace"] + "/" + x["name"]: x for x in d["policies"]}
print(json.dumps(d["publish"]), {k: v["hits"] for k, v in p.items()})
assert d["publish"]["published"] is True and d["publish"]["last_error"] == "" and d["publish"]["publishes"] >= 1
assert d["publish"]["kernel_policies"] == 2
assert p["default/deny-foo"]["hits"]["matched"] == 3, p["default/deny-foo"]
assert p["default/deny-foo"]["in_kernel"] is True
assert p["default/audit"]["hits"]["dry_run_matched"] == 3, p["default/audit"]
assert d["authz_totals"]["denied_by_policy"] == 3
PY
run K authz status
check "authz status table: the policy row with its hit count" \
    grep -Eq '^default/deny-foo +NAMESPACE +DENY +no +yes +3 +0 +0 +1$' <<<"$out"
check "and the publish state" grep -q "^publish: published; " <<<"$out"

# --- waypoint status: the model's users, the kernel's tables, counters equal to bpftool's sums.
run K waypoint status -o json
echo "$out" >"$TMP/wp.json"
bpftool -j map dump pinned "$BPFFS/kmesh/maps/current/km_wp_stats" >"$TMP/wp_stats.json"
check "waypoint status -o json: 2 waypoints with their users; counters equal the kernel's per-CPU sums" \
    python3 - "$TMP/wp.json" "$TMP/wp_stats.json" "$WP_IP" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); raw = json.load(open(sys.argv[2])); wp_ip = sys.argv[3]
w = {x["name"]: x for x in d["waypoints"]}
print(json.dumps(d, indent=1))
host = w["hostname/istio-system/waypoint.istio-system.svc.cluster.local"]
assert host["services"] == ["default/viawp.default.svc.cluster.local"] and host["in_kernel"]
assert host["kernel_destinations"] == {"service_vips": 1, "workload_addresses": 0}
assert host["addresses"] == []  # no such service: connects through it fail closed
addr = w["address/" + wp_ip]
assert addr["workloads"] == ["Kubernetes//Pod/default/sleep"] and addr["addresses"] == [wp_ip]
assert addr["kernel_destinations"] == {"service_vips": 0, "workload_addresses": 1} and addr["port"] == 15019
names = ["redirected", "no_family", "self", "from_waypoint", "no_storage", "sockhash_full", "tlv_sent", "tlv_failed", "released"]
# bpftool: one entry per slot, "values" per CPU (hex bytes or numbers, by bpftool version).
def val(v):
    v = v["value"]
    if isinstance(v, list): return int.from_bytes(bytes(int(b, 16) for b in v), "little")
    return int(v)
sums = {}
for e in raw:
    k = e["key"]
    k = int.from_bytes(bytes(int(b, 16) for b in k), "little") if isinstance(k, list) else int(k)
    sums[k] = sum(val(v) for v in e["values"])
kernel = {n: sums.get(i, 0) for i, n in enumerate(names)}
print("kernel", kernel)
assert d["counters"] == kernel, (d["counters"], kernel)
assert kernel["redirected"] == 2
assert d["loop_guard"] == {"self": kernel["self"], "from_waypoint": kernel["from_waypoint"]}
PY
run K waypoint status
check "waypoint status table: the address waypoint's row" \
    grep -Eq "^address/$WP_IP +$WP_IP +15019 +yes +0 +1 +- +Kubernetes//Pod/default/sleep$" <<<"$out"
check "and the loop-guard line" grep -Eq '^loop guard \(connects not redirected\): self=[0-9]+ from_waypoint=[0-9]+$' <<<"$out"

# --- dump: the maps, then policies and waypoints from the agent.
run K dump
check "dump lists the policies with their hits" grep -q "^  default/deny-foo NAMESPACE DENY: matched=3 dry_run_matched=0 closed=0" <<<"$out"
check "dump shows the waypoints of the model" grep -q "^  workload Kubernetes//Pod/default/sleep -> waypoint $WP_IP port 15019" <<<"$out"
check "and of the kernel" grep -q "^  address/$WP_IP $WP_IP port 15019: 0 service VIP(s), 1 workload address(es) redirected" <<<"$out"
check "and still the service frontends" grep -q "frontend 10.96.0.10:80 -> target port 8080" <<<"$out"
run K dump -o json
check "dump -o json has maps, config, authz and waypoints" \
    python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert set(d) == {"maps","config","authz","waypoints"}; assert len(d["config"]["policies"]) == 2' "$out"

# --- version: client and agent, programs digest against the built object, map layout.
SHA=$(sha256sum "$BUILD/bpf/kmesh_sock.bpf.o" | cut -d' ' -f1)
run K version
check "version: client line" grep -q "^client: kmeshctl " <<<"$out"
check "version: the programs digest is the built object's ($SHA), client and agent" \
    test "$(grep -c "sha256:$SHA" <<<"$out")" = 2
check "version: the agent's map layout" grep -Eq "^  map layout: v[0-9]+ in use \(compiled for v[0-9]+\), $BPFFS/kmesh/maps/v[0-9]+$" <<<"$out"
run K version -o json
check "version -o json: client and agent fields" python3 - "$out" "$SHA" <<'PY'
import json, sys
d = json.loads(sys.argv[1]); sha = sys.argv[2]
assert d["client"]["programs"]["sha256"] == sha and d["agent"]["programs"]["sha256"] == sha
assert d["client"]["maps"]["abi"] == d["agent"]["maps"]["abi"] == d["agent"]["maps"]["version"]
assert d["client"]["version"] == d["agent"]["version"]
assert len(d["agent"]["programs"]["loaded"]) >= 2
PY
run kmeshctl --admin 127.0.0.1:1 version
check "version against no agent: exit 1, saying so and how to check" \
    eval '[[ $rc == 1 && $out == *"cannot reach the admin server at 127.0.0.1:1"* && $out == *"curl http://127.0.0.1:1/ready"* ]]'

# --- monitoring (admin /debug/monitoring, from the telemetry work).
if [[ $(admin_status /debug/monitoring) == 404 ]]; then
    run K monitoring
    check "monitoring against an agent without the endpoint: exit 1, saying so" \
        eval '[[ $rc == 1 && $out == *"has no /debug/monitoring"* ]]'
else
    run K monitoring --disable
    check "monitoring --disable ($out)" eval '[[ $rc == 0 && $out == "monitoring: off, access log: "* ]]'
    check "the agent reports it off" eval '[[ $(admin_get /debug/monitoring | python3 -c "import json,sys; print(json.load(sys.stdin)[\"enabled\"])") == False ]]'
    run K monitoring --enable --accesslog on
    check "monitoring --enable --accesslog on ($out)" test "$out" = "monitoring: on, access log: on"
    run K monitoring -o json
    check "monitoring -o json reads it back" python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d["enabled"] is True and d["access_log"] is True' "$out"
    run K monitoring --accesslog off
    check "monitoring --accesslog off keeps monitoring on ($out)" test "$out" = "monitoring: on, access log: off"
fi
run K monitoring --enable --disable
check "monitoring --enable --disable is a usage error (exit $rc)" test "$rc" = 2

# --- doctor on the test node: a CNI conf dir with the chained conflist, a bin dir with kmesh-cni.
mkdir -p "$TMP/net.d" "$TMP/cnibin"
cp "$TMP/kmesh.conflist" "$TMP/net.d/10-kmbr0.conflist"
install -m 0755 "$BUILD/cni/kmesh-cni" "$TMP/cnibin/kmesh-cni"
DOCTOR=(K doctor --cni-conf-dir "$TMP/net.d" --cni-bin-dir "$TMP/cnibin" --cgroup-root "$CGROOT")
run "${DOCTOR[@]}"
check "doctor on the test node is healthy (exit $rc)" test "$rc" = 0
for c in "kernel BTF" "program type cgroup_sock_addr" "program type sock_ops" "program type sk_msg" \
    "program type sk_lookup" "map type sk_storage" "map type sockhash" "map type ringbuf" "map type lru_hash" \
    "map type percpu_array" "helpers" "cgroup v2" "bpffs" "bpf_link (cgroup)" "cni config chained" \
    "cni binary installed" "agent ready" "map layout"; do
    check "doctor: '$c' is ok" grep -Eq "^$(sed 's/[()]/\\&/g' <<<"$c") +ok " <<<"$out"
done
check "doctor: the bpf_link probe left no cgroup behind" eval '! ls -d "$CGROOT"/kmesh-doctor-* 2>/dev/null'
check "doctor: the program types it finds in the object include tracing" grep -Eq "^program type tracing +(ok|warn) " <<<"$out"
run "${DOCTOR[@]}" -o json
echo "$out" >"$TMP/doctor.json"
check "doctor -o json: healthy, every check with a status" python3 - "$TMP/doctor.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["healthy"] is True
assert all(c["status"] in ("ok", "warn") for c in d["checks"]), [c for c in d["checks"] if c["status"] == "fail"]
assert all(("fix" in c) == (c["status"] != "ok") for c in d["checks"])
PY

rm "$TMP/cnibin/kmesh-cni"
run "${DOCTOR[@]}"
check "doctor without the kmesh-cni binary exits 1" test "$rc" = 1
check "and says why in one sentence with the fix" grep -Eq \
    "^cni binary installed +fail +kmesh-cni is not in the CNI bin dir $TMP/cnibin, so the runtime fails every pod ADD that chains it; fix: .*--install-cni" <<<"$out"
install -m 0755 "$BUILD/cni/kmesh-cni" "$TMP/cnibin/kmesh-cni"
cp "$TMP/plain.conflist" "$TMP/net.d/10-kmbr0.conflist"
run "${DOCTOR[@]}"
check "doctor with an unchained conflist exits 1" test "$rc" = 1
check "and names the file, why it matters and the fix" grep -Eq \
    "^cni config chained +fail +$TMP/net.d/10-kmbr0.conflist, the config the runtime reads, does not chain kmesh-cni, so new pods are not enrolled; fix: " <<<"$out"
check "and only that check fails" test "$(grep -Ec '^[a-z].* +fail +' <<<"$out")" = 1
cp "$TMP/kmesh.conflist" "$TMP/net.d/10-kmbr0.conflist"
run "${DOCTOR[@]}" --bogus
check "doctor with an unknown flag is a usage error (exit $rc)" test "$rc" = 2
run "${DOCTOR[@]}" -o yaml
check "-o yaml is a usage error (exit $rc)" test "$rc" = 2

agent_stop
run "${DOCTOR[@]}"
check "doctor with the agent stopped exits 1" test "$rc" = 1
check "agent unreachable, said so" grep -Eq "^agent ready +fail +cannot reach the admin server at 127.0.0.1:$ADMIN_PORT" <<<"$out"
check "map layout not checked" grep -Eq "^map layout +warn +not checked: the agent is not reachable" <<<"$out"
run K authz status
check "authz status without the agent: exit 1 saying so" eval '[[ $rc == 1 && $out == *"is kmesh-daemon running on this node?"* ]]'
# The outputs above, kept for docs/kmeshctl.md's samples when asked (KMESHCTL_SAMPLES=FILE).
if [[ -n ${KMESHCTL_SAMPLES:-} ]]; then cp "$TMP/check.log" "$KMESHCTL_SAMPLES"; fi
