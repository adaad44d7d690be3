#!/usr/bin/env bash
# An agent upgraded across a map layout bump (new maps/v<N>, created empty) must not move the pods
# onto its empty maps before it holds the mesh: pods keep the previous programs and maps until the
# config is accepted (file) or istiod has answered (xDS). /ready says which.
# The layout bump is acted out with one binary through --maps-version (tests only).
# Usage: e2e_agent_upgrade.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

MESH=$TMP/mesh.yaml
SVC=default/echo.default.svc.cluster.local
replace_file "$MESH" "$(echo_one_backend 10.244.0.250)"
agent_start "$MESH"
pod_create client
pod_create backend
BACKEND_IP=$POD_IP4
replace_file "$MESH" "$(echo_one_backend "$BACKEND_IP")"
wait_log "config generation 2 applied" 1
pod_serve backend backend 8080
sleep 0.2
reaches() { [[ $(pod_connect "${1:-client}" 10.96.0.10 80 5 --timeout-ms 1000 | sort -u) == backend ]]; }
check "before the upgrade the client reaches the service" reaches
OLD_MAPS=$(readlink "$BPFFS/kmesh/maps/current")  # the generation the pods read
agent_stop

# 1. File mode: the upgraded agent starts with a file it rejects.
replace_file "$MESH" "services: [{name: echo, bogus: 1}]"
ADMIN_PORT=$(free_port)
agent_start --config "$MESH" --maps-version 77
check "the upgraded agent rejects the file" grep -q "config $MESH rejected" "$TMP/agent.log"
check "it created the new layout's maps" test -d "$BPFFS/kmesh/maps/v77"
check "pods keep translating with the old programs and maps" reaches
check "the old maps are still pinned" test -d "$BPFFS/kmesh/maps/$OLD_MAPS"
check "/ready answers 503" test "$(admin_status /ready)" = 503
check "naming the rejected file" eval 'admin_get /ready | grep -q "config file rejected"'
check "kmesh_ready is 0" eval 'grep -qx "kmesh_ready 0" <<<"$(admin_get /metrics)"'
pod_create client2
check "a pod created meanwhile is enrolled with the programs pinned, and translates" reaches client2

replace_file "$MESH" "$(echo_one_backend "$BACKEND_IP")"
check "the accepted file makes the agent ready" wait_log "kmesh-daemon ready" 2
check "pods were moved to the new programs then (3 pods x 11 hooks: connect4/6, sockops, sendmsg4/6, recvmsg4/6, getpeername4/6, sock_release, sk_lookup)" grep -q "programs published: 33 pod links moved" "$TMP/agent.log"
check "/ready answers 200" test "$(admin_status /ready)" = 200
check "pods translate with the new maps" reaches
check "and so does the pod created while the agent waited" reaches client2
check "the old maps are gone once no pod uses them" test ! -e "$BPFFS/kmesh/maps/$OLD_MAPS"
agent_stop

# 2. xDS mode: the next upgrade starts while istiod is not reachable yet.
ISTIOD_PORT=$(free_port)
CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
agent_start --xds-address "127.0.0.1:$ISTIOD_PORT" --xds-plaintext --node-name node-1 --maps-version 78
sleep 1
check "with istiod unreachable, pods keep translating with the previous agent's maps" reaches
check "/ready answers 503 while istiod has not answered" eval 'admin_get /ready | grep -q "waiting for istiod"'
check "the previous maps are still pinned" test -d "$BPFFS/kmesh/maps/v77"
python3 "$E2E_DIR/../xds/make_fixture.py" --service "$SVC=10.96.0.10:80:8080" \
    --workload "uid=Kubernetes//Pod/default/backend,ip=$BACKEND_IP,services=$SVC" -o "$TMP/snapshot.json"
istiod_start "$ISTIOD_PORT" "$CONTROL" "$TMP/snapshot.json"
check "istiod's first Address response makes the agent ready" wait_log "kmesh-daemon ready" 3
check "/ready answers 200" test "$(admin_status /ready)" = 200
check "pods translate with istiod's state in the new maps" reaches
check "the previous maps are gone" test ! -e "$BPFFS/kmesh/maps/v77"
