#!/usr/bin/env bash
# The Kmesh-C++ demo: a node in a network namespace, pods created by the real bridge + host-local
# CNI plugins chained with kmesh-cni, and a service VIP (10.96.0.10:80) that exists only in our BPF
# maps, load-balanced at connect() time by the agent's programs. Cleans up everything on exit.
# Usage: demo.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

banner() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
mesh() { echo_service "" "$1"; }
wl() { echo_workload "$@"; }

banner "1. Start kmesh-daemon (loads and pins the eBPF programs and maps under $BPFFS/kmesh)"
MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(mesh "")"
agent_start "$MESH"
sed 's/^/   agent: /' "$TMP/agent.log"

banner "2. Create pods with the node's CNI chain: bridge + host-local, then kmesh-cni"
sed 's/^/   /' "$TMP/kmesh.conflist"
pod_create client
pod_create echo-1; E1_4=$POD_IP4 E1_6=$POD_IP6
pod_create echo-2; E2_4=$POD_IP4 E2_6=$POD_IP6
pod_create echo-3; E3_4=$POD_IP4 E3_6=$POD_IP6
for p in echo-1 echo-2 echo-3; do pod_serve "$p" "$p" 8080; done
echo "   kmesh-cni attached its programs to each pod's own cgroup:"
bpftool cgroup show "$(pod_cgroup client)" | sed 's/^/   /'

banner "3. Tell the agent about the service and its three endpoints (the file is watched)"
replace_file "$MESH" "$(mesh "$(wl echo-1 "$E1_4" "$E1_6"; wl echo-2 "$E2_4" "$E2_6"; wl echo-3 "$E3_4" "$E3_6")")"
wait_log "config generation 2 applied" 1
grep "generation 2" "$TMP/agent.log" | sed 's/^/   agent: /'
sleep 0.2

banner "4. The client calls the VIP 10.96.0.10:80 twelve times; connect() is rewritten in the kernel"
pod_connect client 10.96.0.10 80 12 | sed 's/^/   answered by /'
echo "   ... and the IPv6 VIP [fd00:96::10]:80:"
pod_connect client fd00:96::10 80 6 | sed 's/^/   answered by /'

banner "5. What the maps hold (kmeshctl dump)"
kmeshctl dump | sed 's/^/   /'

banner "6. Scale the service down to echo-2: new connections stop going to the others"
replace_file "$MESH" "$(mesh "$(wl echo-2 "$E2_4" "$E2_6")")"
wait_log "config generation 3 applied" 1
pod_connect client 10.96.0.10 80 6 | sed 's/^/   answered by /'

banner "7. Stop the agent: enrolled pods keep being served from the pinned maps"
agent_stop
pod_connect client 10.96.0.10 80 3 | sed 's/^/   answered by /'

banner "8. Clean up (pods deleted through the CNI chain, namespaces, cgroups and pins removed)"
