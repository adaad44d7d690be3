#!/usr/bin/env bash
# kmesh-cni ADD latency with enrolment by labels (issue 8): an enrolled pod (GET pod + namespace from
# the API server, attach, PATCH the annotation) and a skipped pod (GET pod + namespace, nothing
# else), against the fake HTTPS API server (test/kube) on the node's loopback; exec-to-exit, no shell
# in the timed part (bench/cni_add_timer.py). Targets: skipped <= 5 ms p99, enrolled <= 10 ms p99.
# usage: bench/cni_kube_add.sh [--build DIR] [--runs N]
# Appends {"kind":"cni_kube_add",...} lines to bench/results/cni_kube_add.jsonl and prints them.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=$ROOT/build RUNS=200
while (($#)); do
    case $1 in
    --build) BUILD_DIR=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    *) echo "usage: $0 [--build DIR] [--runs N]" >&2; exit 2 ;;
    esac
    shift
done
source "$ROOT/test/e2e/lib.sh"
source "$ROOT/test/kube/lib.sh"
e2e_init "$BUILD_DIR"

curl() { nsenter --net="/run/netns/$NODE" curl "$@"; }
python3() { nsenter --net="/run/netns/$NODE" python3 "$@"; }
kube_fake_start "$TMP/kube"
unset -f python3
FAKE_PID=$(pgrep -f "fake_apiserver.py --cert $TMP/kube/server.crt" | head -1)
trap 'rc=$?; set +e; kill "$FAKE_PID" 2>/dev/null; (exit $rc); e2e_cleanup' EXIT
ctl() { kube_fake_ctl "$@" >/dev/null; }
ctl POST namespaces '{"metadata":{"name":"meshed","labels":{"istio.io/dataplane-mode":"Kmesh"}}}'
ctl POST namespaces '{"metadata":{"name":"plain"}}'
for p in enrolled:meshed skipped:plain; do
    ctl POST pods '{"metadata":{"name":"'${p%%:*}'","namespace":"'${p#*:}'","uid":"'"$(pod_uid "${p%%:*}")"'"},"spec":{"nodeName":"node-1","containers":[{"name":"app"}]}}'
    mkdir -p "$(pod_cgroup "${p%%:*}")"
done
# The agent only pins the programs here (no kube config: no reconciler beside the plugin).
replace_file "$TMP/mesh.yaml" "services: []"
agent_start "$TMP/mesh.yaml"
wait_log "config generation 1 applied" 1

PREV='{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.244.0.9/24","interface":0}]}'
conf() { # <with prevResult>
    printf '{"cniVersion":"1.0.0","name":"kmbr0","type":"kmesh-cni","kubeConfig":"%s","bpffsRoot":"%s","cgroupRoot":"%s","logFile":"%s"%s}' \
        "$TMP/kube/kubeconfig" "$BPFFS" "$CGROOT" "$TMP/kmesh-cni.log" "$([[ $1 == yes ]] && echo ",\"prevResult\":$PREV")"
}
conf yes >"$TMP/add.json"
conf no >"$TMP/del.json"
RESULTS=$ROOT/bench/results/cni_kube_add.jsonl
mkdir -p "$(dirname "$RESULTS")"
# excluded: a kube-system pod (excludeNamespaces: no API call), the process-start baseline.
for p in enrolled:meshed skipped:plain excluded:kube-system; do
    pod=${p%%:*} ns=${p#*:}
    extra=()
    [[ $pod == enrolled ]] && extra=(--del-config "$TMP/del.json")
    res=$(nsenter --net="/run/netns/$NODE" python3 "$ROOT/bench/cni_add_timer.py" --plugin "$BUILD/cni/kmesh-cni" \
        --config "$TMP/add.json" "${extra[@]}" --runs "$RUNS" \
        --env CNI_CONTAINERID=bench-$pod --env CNI_NETNS=/var/run/netns/x --env CNI_IFNAME=eth0 \
        --env CNI_PATH=/opt/cni/bin --env "CNI_ARGS=K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$pod;K8S_POD_UID=$(pod_uid "$pod")")
    line="{\"kind\":\"cni_kube_add\",\"pod\":\"$pod\",\"date\":\"$(date -u +%FT%TZ)\",${res#\{}"
    echo "$line" | tee -a "$RESULTS"
    grep -q '"failures": 0' <<<"$res" || { log "$pod: some ADDs failed"; tail -5 "$TMP/kmesh-cni.log"; FAILED=1; }
done
# The reference: the loopback plugin's ADD (containernetworking-plugins, a static Go binary) in the
# same run, what every pod's runtime pays for a plugin doing almost nothing.
printf '{"cniVersion":"1.0.0","name":"lo","type":"loopback"}' >"$TMP/lo.json"
LOOPBACK=$(command -v /usr/lib/cni/loopback /opt/cni/bin/loopback 2>/dev/null | head -1)
if [[ -n $LOOPBACK ]]; then
    res=$(nsenter --net="/run/netns/$NODE" python3 "$ROOT/bench/cni_add_timer.py" --plugin "$LOOPBACK" \
        --config "$TMP/lo.json" --runs "$RUNS" --env CNI_CONTAINERID=bench-lo \
        --env CNI_NETNS="/run/netns/$NODE" --env CNI_IFNAME=lo --env CNI_PATH=/opt/cni/bin)
    line="{\"kind\":\"cni_kube_add\",\"pod\":\"loopback-plugin\",\"date\":\"$(date -u +%FT%TZ)\",${res#\{}"
    echo "$line" | tee -a "$RESULTS"
fi
echo "{\"kind\":\"cni_kube_add_load\",\"cpu_pressure\":\"$(head -1 /proc/pressure/cpu)\"}" | tee -a "$RESULTS"
# The enrolled pod's DEL leaves nothing; the last ADD's attachment goes with the cleanup's check.
printf '%s' "$(conf no)" | CNI_COMMAND=DEL CNI_CONTAINERID=bench-enrolled CNI_ARGS="K8S_POD_UID=$(pod_uid enrolled)" \
    "$BUILD/cni/kmesh-cni" >/dev/null
