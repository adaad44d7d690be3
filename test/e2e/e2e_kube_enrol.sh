#!/usr/bin/env bash
# Enrolment by labels, end to end (issue 8 section 3): a fake HTTPS API server (test/kube) reports
# pods and namespaces; pods are made by bridge + host-local chained with kmesh-cni configured with a
# kubeConfig; the agent's reconciler follows the labels. Everything kube-related (API server,
# kmesh-cni, agent) runs in the node's network namespace, whose loopback carries the API traffic.
# Usage: e2e_kube_enrol.sh <build-dir>
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/../kube/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

NODE_NAME=node-1
# API server, its control API and the agent live in the node namespace.
curl() { nsenter --net="/run/netns/$NODE" curl "$@"; }
python3() { nsenter --net="/run/netns/$NODE" python3 "$@"; }
kube_fake_start "$TMP/kube" --bookmark-interval 0.5
unset -f python3
# The background job started through the function above is a subshell: stop the server by its own pid.
KUBE_FAKE_PID=$(pgrep -f "fake_apiserver.py --cert $TMP/kube/server.crt" | head -1)
FAKE_PID=$KUBE_FAKE_PID
trap 'rc=$?; set +e; kill "$FAKE_PID" 2>/dev/null; (exit $rc); e2e_cleanup' EXIT
log "fake API server $KUBE_FAKE_URL (pid $FAKE_PID)"

ctl() { kube_fake_ctl "$@" >>"$TMP/check.log"; echo >>"$TMP/check.log"; }
MODE=istio.io/dataplane-mode
namespace() { # <name> [dataplane-mode]
    local labels='{}'
    [[ -n ${2:-} ]] && labels='{"'$MODE'":"'$2'"}'
    ctl POST namespaces '{"metadata":{"name":"'$1'","labels":'"$labels"'}}'
}
namespace meshed Kmesh
namespace plain
namespace late
namespace kube-system

# The chained entry as the installer writes it (helper-common.md), plus this node's test roots.
# Where the agent answers kmesh-cni (--cni-socket); the plugin asks the API server when nobody does.
CNI_SOCK=$TMP/run/cni.sock
kube_network() { # <name> <kubeconfig>
    cat >"$TMP/$1.conflist" <<JSON
{"cniVersion":"1.0.0","name":"kmbr0","plugins":[
 {"type":"bridge","bridge":"kmbr0","isGateway":true,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","dataDir":"$TMP/ipam",
          "ranges":[[{"subnet":"10.244.0.0/24"}],[{"subnet":"fd00:10:244::/64"}]],
          "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}},
 {"type":"kmesh-cni","kubeConfig":"$2","excludeNamespaces":["kube-system"],"kmeshNamespace":"kmesh-system",
  "bpffsRoot":"$BPFFS","cgroupRoot":"$CGROOT","logFile":"$TMP/kmesh-cni.log","agentSocket":"$CNI_SOCK"}]}
JSON
}
kube_network kube "$TMP/kube/kubeconfig"
# The same API server unreachable: a closed port.
sed "s#server: .*#server: https://127.0.0.1:1#" "$TMP/kube/kubeconfig" >"$TMP/kube/kubeconfig-down"
kube_network kube-down "$TMP/kube/kubeconfig-down"

declare -A POD_NS=()
# <pod> <namespace> [network=kube] [pod labels json]: the pod in the API, then netns + pod cgroup +
# CNI ADD with its namespace; sets POD_IP4 and ADD_OUT; returns ADD's status.
kpod_create() {
    local pod=$1 ns=$2 net=${3:-kube} labels=${4:-'{}'}
    POD_NS[$pod]=$ns
    ctl POST pods '{"metadata":{"name":"'$pod'","namespace":"'$ns'","uid":"'"$(pod_uid "$pod")"'","labels":'"$labels"'},"spec":{"nodeName":"'$NODE_NAME'","containers":[{"name":"app"}]},"status":{"phase":"Running"}}'
    POD_NET[$pod]=$net
    ip netns add "$RUN-$pod"
    PODS+=("$pod")
    ip -n "$RUN-$pod" link set lo up
    mkdir -p "$(pod_cgroup "$pod")/ctr"
    ADD_OUT=$(nsenter --net="/run/netns/$NODE" python3 "$E2E_DIR/cni_runtime.py" ADD \
        --conflist "$TMP/$net.conflist" --netns "/run/netns/$RUN-$pod" --container-id "$RUN-$pod" \
        --args "IgnoreUnknown=1;K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$pod;K8S_POD_INFRA_CONTAINER_ID=$RUN-$pod;K8S_POD_UID=$(pod_uid "$pod")" \
        --cni-path "$CNI_BIN" --cache-dir "$TMP/cache" 2>>"$TMP/check.log") || return 1
    POD_IP4=$(command python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.loads(sys.argv[1])["ips"] if ":" not in i["address"]][0])' "$ADD_OUT")
    log "pod $ns/$pod: $POD_IP4 (network $net)"
}
records() { ls -A "$BPFFS/kmesh/pods" 2>/dev/null | xargs; }
has_record() { [[ -e $BPFFS/kmesh/pods/$1/cgroup_connect4 && -e $BPFFS/kmesh/pods/$1/cgroup_connect6 ]]; }
no_record_of() { # <pod>: no record of the pod (its container's or the agent's), no program on its cgroup
    [[ ! -e $BPFFS/kmesh/pods/$RUN-$1 && ! -e $BPFFS/kmesh/pods/_pod_$(pod_uid "$1") ]] &&
        (($(attached_programs "$1") == 0))
}
annotation() { # <pod>: its kmesh.net/redirection annotation as the API server has it ("" when absent)
    kube_fake_ctl GET state | command python3 -c 'import json,sys; p=json.load(sys.stdin)["pods"].get(sys.argv[1],{}); print(p.get("metadata",{}).get("annotations",{}).get("kmesh.net/redirection",""))' "$2/$1"
}
eventually() { # <command...>: true within 10 s
    for _ in $(seq 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
UNROUTED="error (ENETUNREACH|EHOSTUNREACH|ETIMEDOUT)"
vip() { pod_connect "$1" 10.96.0.10 80 1 --timeout-ms 300; }
translated() { [[ $(vip "$1") == backend ]]; }
untranslated() { [[ $(vip "$1") =~ ^($UNROUTED)$ ]]; }

# --- the agent is not running ---
kpod_create backend plain
BACKEND=$POD_IP4
pod_serve backend backend 8080

check "agent stopped: a pod in an unlabelled namespace is created (ADD ok)" kpod_create outside plain
check "agent stopped: ... and left untouched (no record, no program): $(records)" no_record_of outside

! kpod_create early meshed
check "agent stopped: a pod of a Kmesh namespace fails ADD with code 11: $ADD_OUT" \
    grep -q '"code": *11.*kmesh agent not running' <<<"$ADD_OUT"
check "agent stopped: the refused pod left nothing" no_record_of early

# The runtime gives up on the refused pods: they leave the API and the node.
forget() { # <pod>
    kube_fake_ctl DELETE "pods/${POD_NS[$1]}/$1" >>"$TMP/check.log"
    rmdir "$(pod_cgroup "$1")/ctr" "$(pod_cgroup "$1")"
}
forget early

check "API server down: a kube-system pod passes (excludeNamespaces)" kpod_create sys kube-system kube-down
check "... untouched" no_record_of sys
! kpod_create unreachable meshed kube-down
check "API server down: a pod outside excludeNamespaces fails ADD with code 11: $ADD_OUT" \
    grep -q '"code": *11.*cannot tell whether pod meshed/unreachable is in the mesh' <<<"$ADD_OUT"
forget unreachable

check "agent stopped: a pod created in unlabelled namespace 'late'" kpod_create before late
namespace late Kmesh  # labelled while the agent is down: the agent enrols the running pod at start

# --- the agent starts ---
ADMIN_PORT=$(nsenter --net="/run/netns/$NODE" python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(echo_one_backend "$BACKEND")"
AGENT_WRAPPER="nsenter --net=/run/netns/$NODE" agent_start --config "$MESH" --kubeconfig "$TMP/kube/kubeconfig" \
    --node-name "$NODE_NAME" --cgroup-root "$CGROOT" --cni-socket "$CNI_SOCK"
wait_log "config generation 1 applied" 1
check "the agent's kmesh-cni socket is root's alone (0600): $(stat -c %a "$CNI_SOCK" 2>&1)" \
    test "$(stat -c %a "$CNI_SOCK")" = 600
check "a pod created before the agent started is enrolled at start: $(records)" \
    eventually has_record "_pod_$(pod_uid before)"
check "... its connect to the VIP is translated" eventually translated before
check "... and it is annotated kmesh.net/redirection=enabled" eventually test "$(annotation before late)" = enabled

check "agent running: a pod of a Kmesh namespace is enrolled by kmesh-cni" kpod_create meshpod meshed
check "... its own record" has_record "$RUN-meshpod"
check "... its connect to the VIP is translated" translated meshpod
check "... annotated" eventually test "$(annotation meshpod meshed)" = enabled
# The agent may see the pod (in the API, with its cgroup) before the ADD finished and attach it
# too; its copy goes once it sees the plugin's record.
check "... and the agent keeps no second attachment" eventually test ! -e "$BPFFS/kmesh/pods/_pod_$(pod_uid meshpod)"
check "... two programs on its cgroup" test "$(attached_programs meshpod)" = 2
check "a pod labelled none in a Kmesh namespace is created untouched" kpod_create optout meshed kube '{"'$MODE'":"none"}'
check "... no record" no_record_of optout
check "the pod in the unlabelled namespace is still untouched" no_record_of outside

# Issue 12: kmesh-cni maps libcurl (and its TLS tree) only when an ADD asks the API server. Two
# oracles independent of the plugin: the ELF dynamic section, and the dynamic loader's own report
# of every library it loads (LD_DEBUG=files, dlopen included).
check "kmesh-cni has no NEEDED libcurl/OpenSSL/GnuTLS/spdlog/fmt" \
    bash -c "! readelf -d '$BUILD/cni/kmesh-cni' | grep NEEDED | grep -E 'libcurl|libssl|libcrypto|libgnutls|libspdlog|libfmt'"
cni_loads() { # <pod> <namespace> [agentSocket]: ADD with the live kubeConfig, run alone; prints the libraries the loader opened
    printf '{"cniVersion":"1.0.0","name":"kmbr0","type":"kmesh-cni","kubeConfig":"%s","excludeNamespaces":["kube-system"],"bpffsRoot":"%s","cgroupRoot":"%s","logFile":"%s","agentSocket":"%s","prevResult":{"cniVersion":"1.0.0"}}' \
        "$TMP/kube/kubeconfig" "$BPFFS" "$CGROOT" "$TMP/kmesh-cni.log" "${3:-}" |
        LD_DEBUG=files CNI_COMMAND=ADD CNI_CONTAINERID=$RUN-$1 CNI_NETNS=/run/netns/$RUN-$1 CNI_IFNAME=eth0 \
            CNI_PATH=/usr/lib/cni CNI_ARGS="K8S_POD_NAMESPACE=$2;K8S_POD_NAME=$1;K8S_POD_UID=$(pod_uid "$1")" \
            nsenter --net="/run/netns/$NODE" "$BUILD/cni/kmesh-cni" 2>&1 >/dev/null | grep -o 'file=[^ ]*' | sort -u
}
LOADS=$(cni_loads sys kube-system | xargs)
check "an ADD that asks no API server (excludeNamespaces) loads no libcurl: $LOADS" \
    bash -c "[[ -n '$LOADS' && ! '$LOADS' =~ libcurl ]]"
LOADS=$(cni_loads outside plain | xargs)
check "an ADD that asks the API server loads libcurl when it asks (and decides: not enrolled): $LOADS" \
    bash -c "[[ '$LOADS' =~ libcurl.so.4 ]]"
check "... and left the pod untouched" no_record_of outside
check "... its connect to the VIP is not translated" untranslated outside

# Issue 12: an ADD that the agent answers from its caches (--cni-socket) never loads libcurl, so it
# never asks the API server; one the agent cannot answer (a pod its node-scoped watch does not see)
# falls back to the API server. Oracles: the dynamic loader's report, the pod's links, its connect.
cni_metric() { admin_get /metrics | grep -o "kmesh_cni_queries_total{answer=\"$1\"} [0-9]*" | awk '{print $2}'; }
kpod_prepare() { # <pod> <namespace> <nodeName> [labels]: in the API, with its netns and cgroup, no ADD yet
    local labels=${4:-'{}'}
    POD_NS[$1]=$2
    ctl POST pods '{"metadata":{"name":"'$1'","namespace":"'$2'","uid":"'"$(pod_uid "$1")"'","labels":'"$labels"'},"spec":{"nodeName":"'$3'","containers":[{"name":"app"}]},"status":{"phase":"Running"}}'
    ip netns add "$RUN-$1"
    PODS+=("$1")
    ip -n "$RUN-$1" link set lo up
    mkdir -p "$(pod_cgroup "$1")/ctr"
}
# The agent's answer, asked by a client written here (Python, independent of the plugin's).
agent_answer() { # <namespace> <name>: prints the agent's JSON answer
    command python3 - "$CNI_SOCK" "$1" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(2)
s.connect(sys.argv[1])
s.send(json.dumps({"namespace": sys.argv[2], "name": sys.argv[3], "uid": "", "kmeshNamespace": "kmesh-system"}).encode())
print(s.recv(4096).decode())
PY
}
agent_knows() { agent_answer "$@" | grep -q '"known":true'; }
kpod_prepare fast meshed "$NODE_NAME"
ENROLLED_BEFORE=$(cni_metric enrolled)
# The agent's watch sees the pod a moment after the API server has it (a runtime's ADD comes later).
check "the agent answers for a new pod of its node: $(agent_answer meshed fast)" eventually agent_knows meshed fast
LOADS=$(cni_loads fast meshed "$CNI_SOCK" | xargs)
check "an ADD the agent answers (Kmesh namespace) loads no libcurl: $LOADS" bash -c "[[ -n '$LOADS' && ! '$LOADS' =~ libcurl ]]"
check "... and attaches the pod" has_record "$RUN-fast"
# (No VIP connect: this pod has only lo, no route to the backend.) The kernel's own count of links:
check "... its cgroup runs the agent's programs ($(attached_programs fast))" test "$(attached_programs fast)" -ge 2
check "... the agent counted the answer: enrolled $ENROLLED_BEFORE -> $(cni_metric enrolled)" \
    test "$(cni_metric enrolled)" -gt "$ENROLLED_BEFORE"
check "... and the agent annotates it" eventually test "$(annotation fast meshed)" = enabled
kpod_prepare fastout meshed "$NODE_NAME" '{"'$MODE'":"none"}'
check "... and for a pod labelled none: $(agent_answer meshed fastout)" eventually agent_knows meshed fastout
LOADS=$(cni_loads fastout meshed "$CNI_SOCK" | xargs)
check "a pod labelled none, answered by the agent: no libcurl: $LOADS" bash -c "[[ -n '$LOADS' && ! '$LOADS' =~ libcurl ]]"
check "... untouched" no_record_of fastout
UNKNOWN_BEFORE=$(cni_metric unknown)
kpod_prepare elsewhere meshed node-2
agent_cannot_tell() { agent_answer "$@" | grep -q '"known":false'; }
check "a pod of another node is not the agent's to answer: $(agent_answer meshed elsewhere)" \
    agent_cannot_tell meshed elsewhere
LOADS=$(cni_loads elsewhere meshed "$CNI_SOCK" | xargs)
check "a pod the agent does not watch (node-2): the plugin asks the API server (libcurl): $LOADS" \
    bash -c "[[ '$LOADS' =~ libcurl.so.4 ]]"
check "... which puts it in the mesh" has_record "$RUN-elsewhere"
check "... the agent counted an unknown answer ($UNKNOWN_BEFORE -> $(cni_metric unknown))" \
    test "$(cni_metric unknown)" -gt "$UNKNOWN_BEFORE"
# These ADDs ran kmesh-cni alone (no runtime cache for e2e_cleanup's DEL): undone the same way.
cni_del() { # <pod>
    printf '{"cniVersion":"1.0.0","name":"kmbr0","type":"kmesh-cni","bpffsRoot":"%s","cgroupRoot":"%s","logFile":"%s"}' \
        "$BPFFS" "$CGROOT" "$TMP/kmesh-cni.log" |
        CNI_COMMAND=DEL CNI_CONTAINERID=$RUN-$1 CNI_NETNS=/run/netns/$RUN-$1 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
            CNI_ARGS="K8S_POD_UID=$(pod_uid "$1")" "$BUILD/cni/kmesh-cni" >/dev/null
}
# Gone from the API first, so the agent does not enrol them again.
for p in fast fastout elsewhere; do forget "$p"; done
check "DEL of the pods added by kmesh-cni alone" bash -c "$(declare -f cni_del pod_uid); RUN=$RUN BPFFS=$BPFFS CGROOT=$CGROOT TMP=$TMP BUILD=$BUILD; cni_del fast && cni_del fastout && cni_del elsewhere"
check "... nothing of them is left" eventually bash -c "! ls $BPFFS/kmesh/pods | grep -q -e fast -e elsewhere -e $(pod_uid fast)"

# --- relabelling ---
namespace plain Kmesh
check "labelling its namespace enrols a running pod: $(records)" eventually has_record "_pod_$(pod_uid outside)"
check "... its next connect to the VIP is translated" eventually translated outside
check "... annotated" eventually test "$(annotation outside plain)" = enabled
namespace plain
check "removing the label releases it" eventually no_record_of outside
check "... its next connect to the VIP is not translated" untranslated outside
check "... annotation removed" eventually test -z "$(annotation outside plain)"
check "the pod-level opt-out still holds" no_record_of optout

# --- a pod deleted while the agent was down ---
agent_stop
echo 1 >"$(pod_cgroup before)/ctr/cgroup.kill"
for _ in $(seq 50); do rmdir "$(pod_cgroup before)/ctr" 2>/dev/null && break; sleep 0.1; done
rmdir "$(pod_cgroup before)"
kube_fake_ctl DELETE pods/late/before >>"$TMP/check.log"
AGENT_WRAPPER="nsenter --net=/run/netns/$NODE" agent_start --config "$MESH" --kubeconfig "$TMP/kube/kubeconfig" \
    --node-name "$NODE_NAME" --cgroup-root "$CGROOT"
check "a pod deleted while the agent was down leaves nothing: $(records)" \
    eventually test ! -e "$BPFFS/kmesh/pods/_pod_$(pod_uid before)"
check "the other pods keep their attachments" has_record "$RUN-meshpod"
enrolled_metric() { grep -qx "kmesh_enrolled_pods $1" <<<"$(admin_get /metrics)"; }
check "the metrics count one enrolled pod (meshpod)" eventually enrolled_metric 1
