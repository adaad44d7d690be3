#!/usr/bin/env bash
# Lifecycle of the data plane on a node: the agent stopping and restarting while traffic flows,
# kmesh-cni ADD repeated, CHECK, DEL (twice, the second one the way containerd sends it), and
# uninstall. Usage: e2e_lifecycle.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(echo_one_backend 10.244.0.250)"
agent_start "$MESH"

pod_create client
pod_create backend
BACKEND_IP=$POD_IP4
replace_file "$MESH" "$(echo_one_backend "$POD_IP4")"
wait_log "config generation 2 applied" 1
pod_serve backend backend 8080
sleep 0.2

reaches() { [[ $(pod_connect client 10.96.0.10 80 5 | sort -u) == backend ]]; }
check "client reaches the service" reaches
check "one link per hook on the client's pod cgroup" test "$(attached_programs client)" = 2
# --warm-cgroup (lib.sh): the kernel shows the agent's links on its empty cgroup, one per pod hook
# the client's cgroup has (bpftool: a header line, then one line per program).
progs() { bpftool cgroup show "$1" 2>/dev/null | tail -n +2 | wc -l; }
check "the agent holds a warm link per pod cgroup hook ($(progs "$CGROOT/kmesh-warm") on the warm cgroup)" \
    test "$(progs "$CGROOT/kmesh-warm")" = "$(progs "$(pod_cgroup client)")" -a "$(progs "$(pod_cgroup client)")" -ge 3
check "and no process is in that cgroup" test -z "$(cat "$CGROOT/kmesh-warm/cgroup.procs")"

# A pod deleted without a CNI DEL (node crash): its cgroup goes, its pins stay behind.
pod_create ghost
rmdir "$(pod_cgroup ghost)/ctr" "$(pod_cgroup ghost)"

agent_stop
check "the agent is stopped" test -z "$(pgrep -f "kmesh-daemon --bpffs-root $BPFFS" || true)"
check "a stopped agent removes its warm cgroup" test ! -e "$CGROOT/kmesh-warm"
check "with the agent stopped, the client still reaches the service" reaches

# Maps of an older ABI version, as a previous agent release would have left them.
mkdir -p "$BPFFS/kmesh/maps/v0"
bpftool map create "$BPFFS/kmesh/maps/v0/km_old" type hash key 4 value 4 entries 1 name km_old

agent_start "$MESH"
check "an upgraded agent drops the maps of older ABI versions" test ! -e "$BPFFS/kmesh/maps/v0"
check "it forgets pods whose cgroup is gone" test ! -e "$BPFFS/kmesh/pods/$RUN-ghost"
check "and says so" grep -q "1 pods without a cgroup forgotten" "$TMP/agent.log"
check "a restarted agent reuses the pinned maps" grep -q "reused pinned maps" "$TMP/agent.log"
check "and finds nothing to change" grep -q "applied: 1 services, 1 workloads; 0 map changes" "$TMP/agent.log"
check "the client still reaches the service after the restart" reaches
check "all 22 pod links (2 pods x 10 cgroup hooks + sk_lookup) survive the restart and were moved to the new programs" grep -q "22 pod links moved" "$TMP/agent.log"

second_agent() {
    ! "$BUILD/agent/kmesh-daemon" --bpffs-root "$BPFFS" --config "$MESH" --max-services 64 --max-endpoints 256 \
        --max-backends 256 --max-frontends 256 >"$TMP/second.log" 2>&1 &&
        grep -q "another kmesh-daemon holds" "$TMP/second.log"
}
check "a second agent on the same node refuses to start" second_agent
check "uninstall refuses while the agent runs" eval '! "$BUILD/agent/kmesh-daemon" --bpffs-root "$BPFFS" uninstall'
check "and left everything in place" reaches

# The agent watches its config's directory; other files changing there must not reload it.
reloads=$(grep -c "applied:\|rejected" "$TMP/agent.log")
for i in 1 2 3; do echo "noise $i" >"$TMP/unrelated.yaml"; done
sleep 0.3
check "writes to other files in the config directory do not reload the config" \
    test "$(grep -c "applied:\|rejected" "$TMP/agent.log")" = "$reloads"
kill -HUP "$AGENT_PID"
wait_log "SIGHUP: reloading" 1
check "SIGHUP re-reads the config (unchanged: nothing to write)" test "$(grep -c "applied:\\|rejected" "$TMP/agent.log")" = "$reloads"

# A Kubernetes ConfigMap volume: mesh.yaml -> ..data/mesh.yaml, ..data -> ..<timestamp>; an update
# writes a new timestamped directory and renames a new ..data symlink over the old one.
agent_stop
CM=$TMP/configmap
mkdir -p "$CM/..t1"
cp "$MESH" "$CM/..t1/mesh.yaml"
ln -s ..t1 "$CM/..data"
ln -s ..data/mesh.yaml "$CM/mesh.yaml"
agent_start "$CM/mesh.yaml"
applied=$(grep -c "applied:" "$TMP/agent.log")
mkdir -p "$CM/..t2"
echo_one_backend 10.244.0.251 >"$CM/..t2/mesh.yaml"
ln -s ..t2 "$CM/..data_tmp"
mv -T "$CM/..data_tmp" "$CM/..data"
check "a ConfigMap update (..data symlink swap) is picked up" wait_log "applied:" $((applied + 1))
out=$(pod_connect client 10.96.0.10 80 1 --timeout-ms 300)
check "and the new endpoint is in use: '$out'" grep -qE '^error (ETIMEDOUT|EHOSTUNREACH)$' <<<"$out"
mkdir -p "$CM/..t3"
echo_one_backend "$BACKEND_IP" >"$CM/..t3/mesh.yaml"
ln -s ..t3 "$CM/..data_tmp"
mv -T "$CM/..data_tmp" "$CM/..data"
check "and the next swap is picked up too" wait_log "applied:" $((applied + 2))
check "restoring the endpoint" reaches

check "CHECK passes for an enrolled pod" kmesh_cni CHECK client
check "a repeated ADD succeeds" kmesh_cni ADD client
check "and leaves exactly one link per hook" test "$(attached_programs client)" = 2

check "DEL succeeds" kmesh_cni DEL client
check "DEL detaches the programs" test "$(attached_programs client)" = 0
check "DEL removes the pins" test ! -e "$BPFFS/kmesh/pods/$RUN-client"
out=$(pod_connect client 10.96.0.10 80 1 --timeout-ms 300)
check "a detached pod's connect is no longer translated: '$out'" test "$out" != backend
check "a second DEL with an empty CNI_NETNS and no prevResult succeeds" kmesh_cni DEL client "" no

check "ADD after DEL enrols the pod again" kmesh_cni ADD client
check "the re-enrolled client reaches the service" reaches

agent_stop
check "uninstall succeeds" "$BUILD/agent/kmesh-daemon" --bpffs-root "$BPFFS" uninstall
check "uninstall detaches every pod" test "$(attached_programs client)" = 0
check "uninstall removes every pin" test ! -e "$BPFFS/kmesh"
out=$(kmesh_cni ADD client) && rc=0 || rc=$?
check "ADD without an agent fails with 'kmesh agent not running'" grep -q "kmesh agent not running" <<<"$out"
