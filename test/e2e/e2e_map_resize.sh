#!/usr/bin/env bash
# A map size change without detaching pods (issue 12; docs/upgrade.md "A size change"). Under a
# steady connect load (steady_client.py, 100 connects/s through the echo VIP, IPv4 and IPv6 in
# turn), the agent is restarted with a larger --max-services:
#   - it makes a new map generation (maps/v<N>-<digest>), fills it, publishes, moves the pods'
#     links in place, points maps/current at it, and drops the previous generation;
#   - no connect fails or reaches anything but the service's two backends;
#   - the kernel says the pods' programs read the new maps and none of the old mesh maps
#     (bpftool: cgroup links -> program -> map ids), the new km_service has the new max_entries,
#     and per-socket state was carried over (km_sock_peer is the same map object);
#   - a connection established before the resize still exchanges data, and getpeername() on it
#     still answers the VIP (km_sock_peer carried over);
# then a shrink of --max-services below the services the maps hold is refused: non-zero exit with a
# resource_exhausted error, nothing created, and the previous generation keeps serving.
# Usage: e2e_map_resize.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"
export LC_ALL=C  # sort, join and comm below agree with python's sorted()

RATE=100
NEXTRA=40  # services besides echo: what a shrink to 8 must not drop
MESH=$TMP/mesh.yaml
SMALL="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256"
LARGE="--max-services 128 --max-endpoints 256 --max-backends 256 --max-frontends 256"
SHRUNK="--max-services 8 --max-endpoints 256 --max-backends 256 --max-frontends 256"

mesh() { # <b1 ip4> <b1 ip6> <b2 ip4> <b2 ip6>: echo (80 -> 8080, 90 -> 9090) on b1 and b2, plus NEXTRA on b1
    python3 - "$@" "$NEXTRA" <<'PY'
import sys
b1, b1v6, b2, b2v6, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
print("services:")
print('- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, '
      'addresses: ["10.96.0.10", "fd00:96::10"], ports: [{service_port: 80, target_port: 8080}, {service_port: 90, target_port: 9090}]}')
for i in range(n):
    print('- {name: s%d, namespace: default, hostname: s%d.default.svc.cluster.local, addresses: ["10.96.1.%d"], '
          'ports: [{service_port: 80, target_port: 8080}]}' % (i, i, i + 1))
extra = ", ".join("default/s%d.default.svc.cluster.local: " % i for i in range(n))
print("workloads:")
print('- {uid: Kubernetes//Pod/default/b1, name: b1, namespace: default, addresses: ["%s", "%s"], '
      'services: {default/echo.default.svc.cluster.local: , %s}}' % (b1, b1v6, extra))
print('- {uid: Kubernetes//Pod/default/b2, name: b2, namespace: default, addresses: ["%s", "%s"], '
      'services: {default/echo.default.svc.cluster.local: }}' % (b2, b2v6))
PY
}
map_field() { # <pinned path> <field>: from bpftool's JSON
    bpftool -j map show pinned "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"
}
# The map ids read by every program attached to the pod's cgroup (the kernel's view of its links):
# one bpftool call for the cgroup, one for all programs.
pod_map_ids() { # <pod>
    python3 - "$(pod_cgroup "$1")" <<'PY'
import json, subprocess, sys
bt = lambda *a: json.loads(subprocess.check_output(["bpftool", "-j", *a]))
attached = {p["id"] for p in bt("cgroup", "show", sys.argv[1])}
print("\n".join(sorted({str(m) for p in bt("prog", "show") if p["id"] in attached for m in p.get("map_ids", [])})))
PY
}
dir_map_ids() { # <generation dir>: "name id" per pinned map, sorted by name (for join)
    python3 - "$1" <<'PY'
import json, os, subprocess, sys
for name in sorted(os.listdir(sys.argv[1])):
    info = json.loads(subprocess.check_output(["bpftool", "-j", "map", "show", "pinned", os.path.join(sys.argv[1], name)]))
    print(name, info["id"])
PY
}

replace_file "$MESH" "$(echo_one_backend 10.244.0.250)"
AGENT_FLAGS=$SMALL agent_start "$MESH"
pod_create client
pod_create b1
B1=("$POD_IP4" "$POD_IP6")
pod_create b2
B2=("$POD_IP4" "$POD_IP6")
replace_file "$MESH" "$(mesh "${B1[@]}" "${B2[@]}")"
wait_log "config generation 2 applied" 1
pod_serve b1 b1 8080
pod_serve b2 b2 8080
# An echo server on 9090 for the long-lived connection (both backends: the VIP may pick either).
for pod in b1 b2; do
    pod_exec "$pod" python3 -c '
import socket, threading
s = socket.create_server(("::", 9090), family=socket.AF_INET6, dualstack_ipv6=True)
def serve(c):
    while (d := c.recv(4096)):
        c.sendall(d)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()' &
    PIDS+=($!)
done
sleep 0.3

GEN0=$(readlink "$BPFFS/kmesh/maps/current")
check "the first agent published its generation: maps/current -> $GEN0" test -n "$GEN0" -a -d "$BPFFS/kmesh/maps/$GEN0"
check "km_service has 64 entries of room" test "$(map_field "$BPFFS/kmesh/maps/current/km_service" max_entries)" = 64
dir_map_ids "$BPFFS/kmesh/maps/$GEN0" >"$TMP/gen0.ids"

# A connection that must outlive the resize: data before, the go-file, data after; getpeername each time.
pod_exec client python3 -c '
import os, socket, sys, time
s = socket.create_connection(("10.96.0.10", 90), timeout=5)
def roundtrip(tag):
    s.sendall(tag.encode())
    got = s.recv(64).decode()
    print(tag, "echoed" if got == tag else "lost:" + got, "peer %s:%d" % s.getpeername()[:2], flush=True)
roundtrip("before")
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
roundtrip("after")' "$TMP/go" >"$TMP/held.out" 2>&1 &
HELD=$!
PIDS+=($HELD)
pod_exec client python3 "$E2E_DIR/steady_client.py" --rate "$RATE" --port 80 10.96.0.10 fd00:96::10 \
    >"$TMP/client.out" 2>"$TMP/client.err" &
CLIENT=$!
PIDS+=($CLIENT)
sleep 1
held_up() { for _ in $(seq 100); do grep -qx "before echoed peer 10.96.0.10:90" "$TMP/held.out" && return 0; sleep 0.1; done; return 1; }
check "the long-lived connection is up, its peer the VIP" held_up

# 1. Grow: restart with --max-services 128.
agent_stop
AGENT_FLAGS=$LARGE agent_start "$MESH"
check "the resized agent becomes ready" wait_log "kmesh-daemon ready" 2
GEN1=$(readlink "$BPFFS/kmesh/maps/current")
check "maps/current now names a new generation ($GEN0 -> $GEN1)" test -n "$GEN1" -a "$GEN1" != "$GEN0"
check "bpftool: the new km_service has 128 entries" test "$(map_field "$BPFFS/kmesh/maps/$GEN1/km_service" max_entries)" = 128
check "the previous generation is gone" test ! -e "$BPFFS/kmesh/maps/$GEN0"
check "filled first, then the pods' links moved in place (3 pods x 11 hooks)" \
    grep -q "programs published: 33 pod links moved to them.*held until the first full state" "$TMP/agent.log"
dir_map_ids "$BPFFS/kmesh/maps/$GEN1" >"$TMP/gen1.ids"
# Old mesh maps: ids in gen0 that gen1 does not share (carried-over state maps keep their id).
join "$TMP/gen0.ids" "$TMP/gen1.ids" | awk '$2 != $3 {print $2}' | sort -u >"$TMP/old_only.ids"
awk '{print $2}' "$TMP/gen1.ids" | sort -u >"$TMP/new.ids"
pod_map_ids client >"$TMP/client.ids"
check "bpftool: the client's programs read the new km_service" \
    grep -qx "$(map_field "$BPFFS/kmesh/maps/$GEN1/km_service" id)" "$TMP/client.ids"
check "bpftool: and none of the previous generation's own maps ($(wc -l <"$TMP/old_only.ids") of them)" \
    test -s "$TMP/old_only.ids" -a -z "$(comm -12 "$TMP/old_only.ids" "$TMP/client.ids")"
check "bpftool: every map the client's programs read is pinned in the new generation (or is their own .rodata)" \
    eval 'for id in $(comm -23 "$TMP/client.ids" "$TMP/new.ids"); do bpftool -j map show id "$id" | grep -q "\.rodata\|\.bss" || exit 1; done'
check "bpftool: per-socket state carried over (km_sock_peer is the same map object)" \
    test "$(awk '$1 == "km_sock_peer" {print $2}' "$TMP/gen0.ids")" = "$(awk '$1 == "km_sock_peer" {print $2}' "$TMP/gen1.ids")"
touch "$TMP/go"
wait "$HELD" || true
check "the connection established before the resize still exchanges data, its peer still the VIP" \
    grep -qx "after echoed peer 10.96.0.10:90" "$TMP/held.out"
cat "$TMP/held.out"

# 2. Shrink below what the maps hold: refused before anything is touched.
agent_stop
"$BUILD/agent/kmesh-daemon" --bpffs-root "$BPFFS" --config "$MESH" --admin-port 0 --metrics-port 0 $SHRUNK \
    >"$TMP/shrink.log" 2>&1 && rc=0 || rc=$?
cat "$TMP/shrink.log"
check "a shrink to 8 services (the maps hold $((NEXTRA + 1))) exits non-zero ($rc)" test "$rc" -ne 0
check "with a resource_exhausted error naming km_service" grep -q "resource exhausted: refusing to shrink.*km_service holds $((NEXTRA + 1)) entries" "$TMP/shrink.log"
check "maps/current still names $GEN1, and no other generation was made" \
    test "$(readlink "$BPFFS/kmesh/maps/current")" = "$GEN1" -a "$(ls "$BPFFS/kmesh/maps" | wc -l)" = 2
check "bpftool: the client's programs still read the same maps" test "$(pod_map_ids client)" = "$(cat "$TMP/client.ids")"
sleep 0.5
AGENT_FLAGS=$LARGE agent_start "$MESH"
check "the next agent with the same sizes reuses $GEN1" wait_log "reused pinned maps under $BPFFS/kmesh/maps/$GEN1" 1
check "and becomes ready" wait_log "kmesh-daemon ready" 3
sleep 0.5
kill -TERM "$CLIENT"
wait "$CLIENT" 2>/dev/null || true

python3 - "$TMP/client.out" <<'PY' >"$TMP/summary"
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
fail = [r for r in rows if r[2] != "ok"]
mis = [r for r in rows if r[2] == "ok" and r[3] not in ("b1", "b2")]
print("connects %d: failed %d, misrouted %d; v4 %d v6 %d" % (len(rows), len(fail), len(mis),
      sum(r[1] == "v4" for r in rows), sum(r[1] == "v6" for r in rows)))
for r in (fail + mis)[:10]:
    print("  bad:", " ".join(r))
print("RESULT %d %d %d" % (len(rows), len(fail), len(mis)))
PY
cat "$TMP/summary"
read -r _ total failed misrouted < <(grep ^RESULT "$TMP/summary")
check "the client connected throughout ($total connects)" test "$total" -ge $((RATE * 3))
check "no connect failed across the resize and the refused shrink ($failed)" test "$failed" = 0
check "none reached anything but the service's backends ($misrouted)" test "$misrouted" = 0
