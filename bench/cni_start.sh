#!/usr/bin/env bash
# kmesh-cni as a runtime pays for it (issue 12): exec to exit, no shell in the timed part, timed by
# hyperfine -N, with the reference loopback plugin's ADD (containernetworking-plugins, a static Go
# binary) in every hyperfine run, and an older kmesh-cni (--before) beside the current one.
# Hyperfine 1.15 (Debian) cannot feed stdin, so each command is bench/cni_exec (static C: opens the
# config as stdin, sets CNI_COMMAND, execs the plugin); its own cost is measured alone ("exec-only").
# Cases: VERSION; ADD standalone (no kubeConfig: attach); ADD excluded (kube-system: no API call);
# ADD skipped (GET pod + namespace from the fake HTTPS API server: not in the mesh); ADD enrolled
# (GET pod + namespace, attach, PATCH); the same two answered by the agent over its --cni-socket
# (add-skipped-agent, add-enrolled-agent: no API call, no libcurl); DEL of an attached pod. Every ADD that attaches is undone
# by an untimed DEL (--prepare) before the next one, and every DEL is preceded by an untimed ADD.
# usage: bench/cni_start.sh [--build DIR] [--after BIN] [--before BIN] [--runs N] [--trace N]
#   --build: agent and test tools (default build/); --after: kmesh-cni measured (default
#   DIR/cni/kmesh-cni); --before: the binary to compare with (e.g. main's build), optional.
#   --trace N: no hyperfine; N attaching ADDs (standalone pod, each after an untimed DEL) under
#   `strace -f -ttt -T`, summarised by bench/cni_trace_summary.py (where an ADD's time goes).
# Appends one {"kind":"cni_start",...} line per command to bench/results/cni_start.jsonl and keeps
# hyperfine's JSON (every sample) under bench/results/cni_start/.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=$ROOT/build RUNS=200 AFTER="" BEFORE="" TRACE=0
while (($#)); do
    case $1 in
    --build) BUILD_DIR=$2; shift ;;
    --after) AFTER=$2; shift ;;
    --before) BEFORE=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --trace) TRACE=$2; shift ;;
    *) echo "usage: $0 [--build DIR] [--after BIN] [--before BIN] [--runs N] [--trace N]" >&2; exit 2 ;;
    esac
    shift
done
command -v hyperfine >/dev/null || { echo "hyperfine missing: bash bench/deps.sh" >&2; exit 1; }
LOOPBACK=$(command -v /usr/lib/cni/loopback /opt/cni/bin/loopback 2>/dev/null | head -1)
[[ -n $LOOPBACK ]] || { echo "no loopback plugin: bash bench/deps.sh" >&2; exit 1; }
source "$ROOT/test/e2e/lib.sh"
source "$ROOT/test/kube/lib.sh"
e2e_init "$BUILD_DIR"
# The binaries are copied: a rebuild during the run must not change what is measured.
cp "${AFTER:-$BUILD/cni/kmesh-cni}" "$TMP/after"
[[ -n $BEFORE ]] && cp "$BEFORE" "$TMP/before"
gcc -O2 -static -o "$TMP/cni_exec" "$ROOT/bench/cni_exec.c"
printf 'int main(void) { return 0; }\n' >"$TMP/empty.c"
gcc -O2 -static -o "$TMP/empty" "$TMP/empty.c"

curl() { nsenter --net="/run/netns/$NODE" curl "$@"; }
python3() { nsenter --net="/run/netns/$NODE" python3 "$@"; }
kube_fake_start "$TMP/kube"
unset -f python3
FAKE_PID=$(pgrep -f "fake_apiserver.py --cert $TMP/kube/server.crt" | head -1)
trap 'rc=$?; set +e; kill "$FAKE_PID" 2>/dev/null; (exit $rc); e2e_cleanup' EXIT
ctl() { kube_fake_ctl "$@" >/dev/null; }
ctl POST namespaces '{"metadata":{"name":"meshed","labels":{"istio.io/dataplane-mode":"Kmesh"}}}'
ctl POST namespaces '{"metadata":{"name":"plain"}}'
for pod in standalone enrolled skipped excluded; do
    ip netns add "$RUN-$pod"
    PODS+=("$pod")
    mkdir -p "$(pod_cgroup "$pod")/ctr"
done
for p in enrolled:meshed skipped:plain; do
    ctl POST pods '{"metadata":{"name":"'${p%%:*}'","namespace":"'${p#*:}'","uid":"'"$(pod_uid "${p%%:*}")"'"},"spec":{"nodeName":"node-1","containers":[{"name":"app"}]}}'
done
# The agent pins the programs and answers kmesh-cni from its pod/namespace watches (--cni-socket).
# Its reconciler looks for pod cgroups in an empty directory, so it never attaches the bench's pods
# itself: every attachment measured is the plugin's.
replace_file "$TMP/mesh.yaml" "services: []"
mkdir -p "$TMP/no-pod-cgroups"
AGENT_WRAPPER="nsenter --net=/run/netns/$NODE" agent_start --config "$TMP/mesh.yaml" --kubeconfig "$TMP/kube/kubeconfig" \
    --node-name node-1 --cgroup-root "$TMP/no-pod-cgroups" --cni-socket "$TMP/cni.sock"
wait_log "config generation 1 applied" 1
agent_knows() { # <namespace> <name>
    command python3 - "$TMP/cni.sock" "$1" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(2)
s.connect(sys.argv[1])
s.send(json.dumps({"namespace": sys.argv[2], "name": sys.argv[3]}).encode())
sys.exit(0 if json.loads(s.recv(4096))["known"] else 1)
PY
}
for _ in $(seq 100); do agent_knows meshed enrolled 2>/dev/null && agent_knows plain skipped 2>/dev/null && break; sleep 0.1; done
agent_knows meshed enrolled || { log "the agent cannot answer for the bench's pods"; exit 1; }

PREV='{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.244.0.9/24","interface":0}]}'
conf() { # <kube: yes|no|agent> <prevResult: yes|no>
    printf '{"cniVersion":"1.0.0","name":"kmbr0","type":"kmesh-cni",%s%s"bpffsRoot":"%s","cgroupRoot":"%s","logFile":"%s"%s}' \
        "$([[ $1 != no ]] && echo "\"kubeConfig\":\"$TMP/kube/kubeconfig\",")" \
        "$([[ $1 == agent ]] && echo "\"agentSocket\":\"$TMP/cni.sock\",")" "$BPFFS" "$CGROOT" "$TMP/kmesh-cni.log" \
        "$([[ $2 == yes ]] && echo ",\"prevResult\":$PREV")"
}
conf no yes >"$TMP/add.json"
conf no no >"$TMP/del.json"
conf yes yes >"$TMP/kadd.json"
conf yes no >"$TMP/kdel.json"
conf agent yes >"$TMP/aadd.json"
printf '{"cniVersion":"1.0.0","name":"lo","type":"loopback"}' >"$TMP/lo.json"
RESULTS=$ROOT/bench/results/cni_start.jsonl
RAW=$ROOT/bench/results/cni_start
mkdir -p "$RAW"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

bench() { # <case> <pod> <namespace> <ADD|DEL|VERSION> <config> [prepare-command]
    local case=$1 pod=$2 ns=$3 cmd=$4 config=$5 prepare=${6:-} cmds=() names=() json
    for bin in after before; do
        [[ -e $TMP/$bin ]] || continue
        cmds+=("$TMP/cni_exec $config $cmd $TMP/$bin") names+=("kmesh-cni-$bin")
    done
    # The reference in the same run: loopback's ADD on the pod's own netns.
    cmds+=("$TMP/cni_exec $TMP/lo.json ADD $LOOPBACK") names+=("loopback-ADD")
    [[ $case == version ]] && cmds+=("$TMP/cni_exec $TMP/lo.json VERSION $TMP/empty") names+=("exec-only")
    local named=()
    for n in "${names[@]}"; do named+=(-n "$n"); done
    json=$RAW/$STAMP-$case.json
    local pressure_before
    pressure_before=$(head -1 /proc/pressure/cpu)
    # In the node namespace, as a runtime on the node runs plugins (the fake API is on its loopback).
    CNI_CONTAINERID=$RUN-$pod CNI_NETNS=/run/netns/$RUN-$pod CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
        CNI_ARGS="K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$pod;K8S_POD_UID=$(pod_uid "$pod")" \
        nsenter --net="/run/netns/$NODE" hyperfine -N -w 10 -r "$RUNS" ${prepare:+--prepare "$prepare"} \
        "${named[@]}" --export-json "$json" "${cmds[@]}" >"$TMP/hyperfine-$case.log" 2>&1 ||
        { log "$case: hyperfine failed"; cat "$TMP/hyperfine-$case.log"; tail -5 "$TMP/kmesh-cni.log"; FAILED=1; return; }
    command python3 - "$json" "$case" "$cmd" "$pressure_before" "$(head -1 /proc/pressure/cpu)" <<'PY' | tee -a "$RESULTS"
import json, sys
path, case, cmd, p0, p1 = sys.argv[1:]
for r in json.load(open(path))["results"]:
    t = sorted(x * 1000 for x in r["times"])
    pct = lambda p: t[min(len(t) - 1, int(round(p / 100 * len(t) + 0.5)) - 1)]
    print(json.dumps({"kind": "cni_start", "case": case, "command": r["command"], "cni_command": cmd,
                      "runs": len(t), "p50_ms": round(pct(50), 2), "p99_ms": round(pct(99), 2),
                      "mean_ms": round(r["mean"] * 1000, 2), "min_ms": round(t[0], 2),
                      "raw": path.split("bench/results/")[-1], "cpu_pressure_before": p0, "cpu_pressure_after": p1}))
PY
}
AFTER_BIN=$TMP/after
if ((TRACE > 0)); then
    command -v strace >/dev/null || { echo "strace missing" >&2; exit 1; }
    traces=()
    for i in $(seq "$TRACE"); do
        for bin in after before; do
            [[ -e $TMP/$bin ]] || continue
            export CNI_CONTAINERID=$RUN-standalone CNI_NETNS=/run/netns/$RUN-standalone CNI_IFNAME=eth0 \
                CNI_PATH=/usr/lib/cni CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=standalone;K8S_POD_UID=$(pod_uid standalone)"
            nsenter --net="/run/netns/$NODE" "$TMP/cni_exec" "$TMP/del.json" DEL "$AFTER_BIN" >/dev/null
            nsenter --net="/run/netns/$NODE" strace -f -ttt -T -qq -o "$TMP/trace-$bin-$i.txt" \
                "$TMP/cni_exec" "$TMP/add.json" ADD "$TMP/$bin" >/dev/null
            traces+=("$bin=$TMP/trace-$bin-$i.txt")
        done
    done
    nsenter --net="/run/netns/$NODE" "$TMP/cni_exec" "$TMP/del.json" DEL "$AFTER_BIN" >/dev/null
    unset CNI_CONTAINERID CNI_NETNS CNI_IFNAME CNI_PATH CNI_ARGS
    mkdir -p "$RAW/$STAMP-trace" && cp "${traces[@]#*=}" "$RAW/$STAMP-trace/"; python3 "$ROOT/bench/cni_trace_summary.py" "${traces[@]}"
    log "cpu pressure: $(head -1 /proc/pressure/cpu)"
    rm -f "$TMP/kmesh-cni.log"
    exit 0
fi
bench version standalone default VERSION "$TMP/lo.json"
bench add-standalone standalone default ADD "$TMP/add.json" "$TMP/cni_exec $TMP/del.json DEL $AFTER_BIN"
bench add-excluded excluded kube-system ADD "$TMP/kadd.json"
bench add-skipped skipped plain ADD "$TMP/kadd.json"
bench add-enrolled enrolled meshed ADD "$TMP/kadd.json" "$TMP/cni_exec $TMP/kdel.json DEL $AFTER_BIN"
bench add-skipped-agent skipped plain ADD "$TMP/aadd.json"
bench add-enrolled-agent enrolled meshed ADD "$TMP/aadd.json" "$TMP/cni_exec $TMP/kdel.json DEL $AFTER_BIN"
bench del standalone default DEL "$TMP/del.json" "$TMP/cni_exec $TMP/add.json ADD $AFTER_BIN"
# The last prepare of each attaching case (before loopback's runs) left its pod attached: undone here.
CNI_CONTAINERID=$RUN-standalone CNI_ARGS="K8S_POD_UID=$(pod_uid standalone)" "$TMP/cni_exec" "$TMP/del.json" DEL "$AFTER_BIN" >/dev/null
CNI_CONTAINERID=$RUN-enrolled CNI_ARGS="K8S_POD_UID=$(pod_uid enrolled)" "$TMP/cni_exec" "$TMP/kdel.json" DEL "$AFTER_BIN" >/dev/null
# Nothing may be left attached: e2e_cleanup checks the pods dir is empty.
rm -f "$TMP/kmesh-cni.log"
