# Shared harness for the end-to-end tests: a private "node" (network namespace with the pod
# bridge, its own bpffs mount and cgroup subtree), pods made by the real bridge + host-local CNI
# plugins chained with kmesh-cni, and the agent. Nothing touches the host's interfaces: the bridge
# lives in the node namespace, which has no uplink and therefore no route out.
#
# Source it, then call e2e_init <build-dir>. Cleanup (and a leak check) runs on exit, even on failure.

set -euo pipefail
# With pipefail, `big_output | grep -q X` fails at random: grep exits at the first match and the
# writer dies of SIGPIPE. Match a captured output instead: grep -q X <<<"$(admin_get /metrics)".

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PASSED=0
FAILED=0

log() { echo "[$(date +%T.%3N)] $*"; }
ok() { PASSED=$((PASSED + 1)); log "ok   - $*"; }
not_ok() { FAILED=$((FAILED + 1)); log "FAIL - $*"; }
check() { # <description> <command...>: passes when the command succeeds; its output goes to the log
    local desc=$1; shift
    if "$@" >>"$TMP/check.log" 2>&1; then ok "$desc"; else not_ok "$desc"; fi
}

e2e_init() { # <build-dir>
    BUILD=$(realpath "$1")
    RUN=km$(printf '%04x' $((RANDOM)))$$
    TMP=$(mktemp -d "/tmp/kmesh-e2e-$RUN.XXXX")
    CG2=$(awk '$0 ~ / - cgroup2 / { print $5; exit }' /proc/self/mountinfo)
    [[ -n $CG2 ]] || { echo "no cgroup v2 mount on this machine" >&2; exit 1; }
    BPFFS=$TMP/bpffs
    CGROOT=$CG2/kmesh-e2e-$RUN
    NODE=$RUN-node
    CNI_BIN=$BUILD/cni:/usr/lib/cni
    PODS=()
    declare -gA POD_NET=()
    PIDS=()
    AGENT_PID=
    trap e2e_cleanup EXIT
    trap 'exit 130' INT TERM

    mkdir -p "$BPFFS" "$TMP/cache" "$TMP/ipam"
    mount -t bpf bpf "$BPFFS"
    mkdir -p "$CGROOT"
    ip netns add "$NODE"
    ip netns exec "$NODE" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$NODE" link set lo up
    # Two networks on one bridge: "kmesh" chains kmesh-cni (enrolled pods), "plain" does not.
    make_network kmesh kmbr0 10.244.0.0/24 fd00:10:244::/64 yes
    make_network plain kmbr0 10.244.0.0/24 fd00:10:244::/64 no
    log "node $NODE: bpffs $BPFFS, cgroups $CGROOT"
}

make_network() { # <name> <bridge> <subnet4> <subnet6> <with-kmesh-cni>: writes $TMP/<name>.conflist
    local kmesh=""
    [[ $5 == yes ]] && kmesh=',{"type":"kmesh-cni","bpffsRoot":"'$BPFFS'","cgroupRoot":"'$CGROOT'","logFile":"'$TMP/kmesh-cni.log'"}'
    # The conflist name is the bridge's, so networks sharing a bridge share host-local's allocations.
    cat >"$TMP/$1.conflist" <<JSON
{"cniVersion":"1.0.0","name":"$2","plugins":[
 {"type":"bridge","bridge":"$2","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","dataDir":"$TMP/ipam",
          "ranges":[[{"subnet":"$3"}],[{"subnet":"$4"}]],
          "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}}$kmesh]}
JSON
}

pod_cgroup() { echo "$CGROOT/kubepods/besteffort/pod$(pod_uid "$1")"; }
pod_uid() { printf '00000000-0000-4000-8000-%012x' "$(cksum <<<"$RUN-$1" | cut -d' ' -f1)"; }

cni_chain() { # <ADD|DEL|CHECK> <pod>: runs the pod's network chain in the node namespace, like a runtime
    local pod=$2
    # nsenter, not `ip netns exec`: the latter remounts /sys and would hide the cgroup tree.
    nsenter --net="/run/netns/$NODE" python3 "$E2E_DIR/cni_runtime.py" "$1" \
        --conflist "$TMP/${POD_NET[$pod]}.conflist" --netns "/run/netns/$RUN-$pod" --container-id "$RUN-$pod" \
        --args "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod;K8S_POD_INFRA_CONTAINER_ID=$RUN-$pod;K8S_POD_UID=$(pod_uid "$pod")" \
        --cni-path "$CNI_BIN" --cache-dir "$TMP/cache"
}

pod_create() { # <pod> [network=kmesh]: netns + kubelet-style pod cgroup + CNI ADD; sets POD_IP4/POD_IP6
    local pod=$1 result
    POD_NET[$pod]=${2:-kmesh}
    ip netns add "$RUN-$pod"
    PODS+=("$pod")
    ip netns exec "$RUN-$pod" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    ip -n "$RUN-$pod" link set lo up
    mkdir -p "$(pod_cgroup "$pod")/ctr"  # the pod cgroup exists before CNI ADD; containers live below it
    result=$(cni_chain ADD "$pod") || { log "CNI ADD of $pod failed: $result"; return 1; }
    POD_IP4=$(python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.loads(sys.argv[1])["ips"] if ":" not in i["address"]][0])' "$result")
    POD_IP6=$(python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.loads(sys.argv[1])["ips"] if ":" in i["address"]][0])' "$result")
    log "pod $pod: $POD_IP4 $POD_IP6 (network ${POD_NET[$pod]})"
}

pod_exec() { # <pod> <cmd...>: runs in the pod's netns and container cgroup
    local pod=$1; shift
    nsenter --net="/run/netns/$RUN-$pod" sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$(pod_cgroup "$pod")/ctr" "$@"
}

pod_serve() { # <pod> <name> <port>: echo server in the background
    pod_exec "$1" "$BUILD/test/tools/echo_tool" serve "$2" "$3" &
    PIDS+=($!)
}

pod_connect() { # <pod> <addr> <port> [n] [flags...]: one output line per connection
    local pod=$1; shift
    pod_exec "$pod" "$BUILD/test/tools/echo_tool" connect "$@"
}

agent_start() { # <config file> | <kmesh-daemon source flags...>
    local source=("$@")
    [[ $1 == --* ]] || source=(--config "$1")
    # Small maps by default: tests should never need more, and it keeps their memory small.
    # No admin server unless a test asks for one (ADMIN_PORT), so tests never collide on a port.
    # The same for the Prometheus endpoint (METRICS_PORT), on loopback: never the host's addresses.
    # AGENT_WRAPPER runs it under a profiler (e.g. "heaptrack -o /tmp/agent"); KMESH_DAEMON names
    # another build's binary (a benchmark's "before").
    ${AGENT_WRAPPER:-} "${KMESH_DAEMON:-$BUILD/agent/kmesh-daemon}" --bpffs-root "$BPFFS" "${source[@]}" --admin-port "${ADMIN_PORT:-0}" \
        --metrics-address 127.0.0.1 --metrics-port "${METRICS_PORT:-0}" \
        ${WARM_CGROUP-"--warm-cgroup=$CGROOT/kmesh-warm"} ${AGENT_FLAGS---max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256} \
        >>"$TMP/agent.log" 2>&1 &
    AGENT_PID=$!
    AGENT_STARTS=$((${AGENT_STARTS:-0} + 1))
    # "started", not "ready": an agent waiting for istiod or for an acceptable config has started.
    wait_log "kmesh-daemon started" "$AGENT_STARTS"
}

agent_stop() {
    [[ -n $AGENT_PID ]] || return 0
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    # Under AGENT_WRAPPER the pid is the wrapper's; the agent is found by its private bpffs.
    pkill -TERM -f -- "kmesh-daemon --bpffs-root $BPFFS " 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
    for _ in $(seq 50); do pgrep -f -- "kmesh-daemon --bpffs-root $BPFFS " >/dev/null || break; sleep 0.1; done
    AGENT_PID=
}

wait_log() { # <text> <min-count>: waits up to 10 s until the agent log has the text that often
    for _ in $(seq 100); do
        (($(grep -c -- "$1" "$TMP/agent.log" 2>/dev/null || true) >= $2)) && return 0
        sleep 0.1
    done
    log "timed out waiting for '$1' x$2 in the agent log:"; cat "$TMP/agent.log"; return 1
}

replace_file() { # <path> <content>: atomic replace, as kubectl/ConfigMap updates do
    printf '%s\n' "$2" >"$1.tmp"
    mv "$1.tmp" "$1"
}

echo_service() { # <extra service yaml> <workload lines>: the echo service (10.96.0.10, fd00:96::10) config
    cat <<YAML
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: ["10.96.0.10", "fd00:96::10"]
  ports: [{service_port: 80, target_port: 8080}]
$1
workloads:
$2
YAML
}

echo_one_backend() { # <backend ip4>: the echo service (10.96.0.10:80 -> 8080) with one backend workload
    cat <<YAML
services:
- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 8080}]}
workloads:
- {uid: Kubernetes//Pod/default/backend, addresses: ["$1"], services: {default/echo.default.svc.cluster.local: }}
YAML
}

echo_workload() { # <name> <ip4> <ip6>: a workload line serving the echo service
    printf -- '- {uid: Kubernetes//Pod/default/%s, name: %s, namespace: default, addresses: ["%s", "%s"], services: {default/echo.default.svc.cluster.local: }}\n' "$1" "$1" "$2" "$3"
}

istiod_start() { # <port> <control-dir> <snapshot> [fake_istiod flags...]: returns once it listens
    local port=$1 control=$2 snapshot=$3
    shift 3
    : >"$TMP/istiod.log"
    "$BUILD/test/xds/fake_istiod" --listen "127.0.0.1:$port" --snapshot "$snapshot" --control-dir "$control" "$@" \
        >>"$TMP/istiod.log" 2>&1 &
    ISTIOD_PID=$!
    PIDS+=($ISTIOD_PID)
    for _ in $(seq 50); do grep -q "listening on" "$TMP/istiod.log" && return 0; sleep 0.1; done
    log "fake istiod did not start"; cat "$TMP/istiod.log"; return 1
}

admin_get() { # <path> [curl flags...]: GET from the agent's admin server ($ADMIN_PORT); prints the body
    local path=$1; shift
    curl -sS --max-time 5 "$@" "http://127.0.0.1:$ADMIN_PORT$path"
}

admin_status() { # <path>: the HTTP status of a GET from the admin server
    curl -s -o /dev/null --max-time 5 -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT$1" || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

kmeshctl() { "$BUILD/ctl/kmeshctl" --bpffs-root "$BPFFS" "$@"; }

e2e_cleanup() {
    local rc=$? pod leaks=""
    set +e
    # Ctrl-C reaches the whole process group, cleanup included: let nothing interrupt it.
    trap '' INT TERM
    trap - EXIT
    agent_stop
    # A background job inherits the INT/TERM trap above and defers it while its child runs (a
    # server inside a pod): stop the children too, or the wait below never returns.
    for pid in "${PIDS[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done
    for pod in "${PODS[@]}"; do
        [[ -d $(pod_cgroup "$pod") ]] && echo 1 >"$(pod_cgroup "$pod")/ctr/cgroup.kill" 2>/dev/null
        if [[ -f $TMP/cache/$RUN-$pod.json ]] && ! cni_chain DEL "$pod" >>"$TMP/check.log" 2>&1; then
            log "CNI DEL of $pod failed"; leaks+=" del-$pod"
        fi
        ip netns del "$RUN-$pod" 2>/dev/null
    done
    wait 2>/dev/null
    ip netns del "$NODE" 2>/dev/null
    # Every pod went through DEL, so kmesh-cni must have left no pins (before the unmount hides it).
    [[ -n $(ls -A "$BPFFS/kmesh/pods" 2>/dev/null) ]] && leaks+=" pod-pins($(ls "$BPFFS/kmesh/pods" | xargs))"
    # Under a sanitizer build (install/test.sh), daemons report into their logs, not our exit code.
    local sanitized
    sanitized=$(grep -l -E 'ERROR: (Address|Leak)Sanitizer|runtime error:|WARNING: ThreadSanitizer' \
        "$TMP"/*.log 2>/dev/null | xargs -r -n1 basename | xargs)
    [[ -n $sanitized ]] && { log "sanitizer reports in: $sanitized"; leaks+=" sanitizer($sanitized)"; }
    mountpoint -q "$BPFFS" && umount "$BPFFS"
    [[ -d $CGROOT ]] && find "$CGROOT" -depth -type d -exec rmdir {} \; 2>/dev/null
    if ((rc != 0 || FAILED > 0)) || [[ -n $leaks ]]; then
        echo "--- agent log"; cat "$TMP/agent.log" 2>/dev/null
        echo "--- kmesh-cni log"; cat "$TMP/kmesh-cni.log" 2>/dev/null
    fi
    rm -rf "$TMP"
    # Leak check: everything this run created must be gone.
    ip netns list | grep -q "^$RUN-" && leaks+=" netns"
    [[ -d $CGROOT ]] && leaks+=" cgroups"
    mountpoint -q "$BPFFS" 2>/dev/null && leaks+=" bpffs"
    [[ -e $TMP ]] && leaks+=" tmpdir"
    if [[ -n $leaks ]]; then log "LEAKED:$leaks"; rc=1; else log "cleanup complete: no namespaces, cgroups, pins or mounts left"; fi
    ((PASSED + FAILED > 0)) && log "$PASSED passed, $FAILED failed"
    ((FAILED > 0 && rc == 0)) && rc=1
    exit $rc
}

kmesh_cni() { # <ADD|DEL|CHECK> <pod> [netns-path] [with-prevResult=yes|no]: kmesh-cni alone, as the chain calls it
    # The network name is the conflist's (kmbr0, see make_network), as a runtime sends it: kmesh-cni
    # records which networks hold a pod's links and a DEL only drops its own network's claim.
    local pod=$2 prev=""
    [[ ${4:-yes} == yes ]] && prev=',"prevResult":'$(cat "$TMP/cache/$RUN-$pod.json")
    printf '{"cniVersion":"1.0.0","name":"kmbr0","type":"kmesh-cni","bpffsRoot":"%s","cgroupRoot":"%s","logFile":"%s"%s}' \
        "$BPFFS" "$CGROOT" "$TMP/kmesh-cni.log" "$prev" |
        CNI_COMMAND=$1 CNI_CONTAINERID=$RUN-$pod CNI_NETNS=${3-/run/netns/$RUN-$pod} CNI_IFNAME=eth0 \
            CNI_ARGS="IgnoreUnknown=1;K8S_POD_UID=$(pod_uid "$pod")" CNI_PATH=$CNI_BIN "$BUILD/cni/kmesh-cni"
}

attached_programs() { # <pod>: number of programs attached to the pod's cgroup
    bpftool cgroup show "$(pod_cgroup "$1")" 2>/dev/null | grep -c cgroup_connect || true
}
