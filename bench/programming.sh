#!/usr/bin/env bash
# Programming N services (issue 12), side by side in one run:
#   iptables   iptables-restore of the equivalent kube-proxy nat table (bench/kube_proxy_rules.py),
#              ONLY inside the node network namespace this bench creates (test/e2e/lib.sh)
#   kmesh      kmesh-daemon: the config file replaced (YAML, then the same config as JSON) -> every map
#              programmed, read from the agent's log; its phase lines give parse / desired / plan / writes
#   phases     bench/programming_bench in one process against fresh kernel maps: read, parse to model
#              (streamed, as the agent), collisions, desired, diff, writes, with the kernel calls
#              counted; --tree (the document-tree path before streaming: count, tree, model) and
#              --single (one bpf() call per entry, the writer's behaviour before batching)
# /proc/pressure/cpu is recorded before and after every cell.
#
# usage: bench/programming.sh [--build DIR] [--before-build DIR] [--services "10 10000 50000"] [--reps N] [--out FILE]
#   --before-build DIR  also runs that build's kmesh-daemon (e.g. main's) on the YAML file, as "kmesh-before"
# Prints one JSON object per measurement (also to --out, default bench/results/programming.jsonl).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=$ROOT/build BEFORE_BUILD= SERVICES="10 10000 50000" REPS=3 OUTFILE=$ROOT/bench/results/programming.jsonl
while (($#)); do
    case $1 in
    --build) BUILD_DIR=$2; shift ;;
    --before-build) BEFORE_BUILD=$2; shift ;;
    --services) SERVICES=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --out) OUTFILE=$2; shift ;;
    *) echo "usage: $0 [--build DIR] [--before-build DIR] [--services LIST] [--reps N] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done

source "$ROOT/test/e2e/lib.sh"
source "$ROOT/bench/lib.sh"
e2e_init "$BUILD_DIR"
OUT=$TMP/programming.jsonl
: >"$OUT"
BACKEND=10.244.2.2
emit() { echo "$1" | tee -a "$OUT"; }

# The equivalent kube-proxy nat table, restored whole as kube-proxy does, in the bench's node netns.
program_iptables() { # <n> <rep>
    local n=$1 rep=$2 t0 t1 p0
    python3 "$ROOT/bench/kube_proxy_rules.py" "$n" "$BACKEND" >"$TMP/rules-$n.txt"
    ip netns exec "$NODE" iptables -t nat -F; ip netns exec "$NODE" iptables -t nat -X
    p0=$(pressure)
    t0=$(date +%s%N)
    ip netns exec "$NODE" iptables-restore <"$TMP/rules-$n.txt"
    t1=$(date +%s%N)
    emit "{\"system\":\"iptables-restore\",\"services\":$n,\"rep\":$rep,\"wall_ms\":$(((t1 - t0) / 1000000)),\"psi_before\":\"$p0\",\"psi_after\":\"$(pressure)\"}"
}

GEN=0
# From an empty mesh to N services by replacing the watched file; wall time until the agent logs the
# generation as applied, and the agent's own phase lines for that generation.
program_kmesh() { # <label> <n> <rep> <file>
    local label=$1 n=$2 rep=$3 src=$4 t0 t1 p0 parse desired plan writes changes
    replace_file "$TMP/mesh.conf" "services: []"
    GEN=$((GEN + 1)); wait_log "config generation $GEN applied" 1
    p0=$(pressure)
    t0=$(date +%s%N)
    cp "$src" "$TMP/mesh.conf.tmp" && mv "$TMP/mesh.conf.tmp" "$TMP/mesh.conf"
    GEN=$((GEN + 1))
    until grep -q "config generation $GEN applied" "$TMP/agent.log"; do sleep 0.002; done
    t1=$(date +%s%N)
    local line phases
    line=$(grep "config generation $GEN applied" "$TMP/agent.log")
    phases=$(grep -E "read and parsed in|parsed .* in [0-9]+ us" "$TMP/agent.log" | tail -1)
    # "read and parsed in N us" since issue 12; before, a debug line "parsed PATH in N us".
    parse=$(sed -nE -e 's/.* read and parsed in ([0-9]+) us.*/\1/p' -e 's/.*\] parsed .* in ([0-9]+) us$/\1/p' <<<"$phases")
    desired=$(sed -nE 's/.* desired state in ([0-9]+) us.*/\1/p' <<<"$phases")
    writes=$(sed -nE 's/.* in ([0-9]+) us \(planned.*/\1/p' <<<"$line")
    plan=$(sed -nE 's/.*planned in ([0-9]+) us.*/\1/p' <<<"$line")
    changes=$(sed -nE 's/.*; ([0-9]+) map changes.*/\1/p' <<<"$line")
    emit "{\"system\":\"$label\",\"format\":\"${src##*.}\",\"services\":$n,\"rep\":$rep,\"wall_ms\":$(((t1 - t0) / 1000000)),\"parse_us\":${parse:-null},\"desired_us\":${desired:-null},\"plan_us\":${plan:-null},\"writes_us\":${writes:-null},\"map_changes\":${changes:-null},\"psi_before\":\"$p0\",\"psi_after\":\"$(pressure)\"}"
}

max_n=0
for n in $SERVICES; do
    python3 "$ROOT/bench/mesh_config.py" "$n" "$BACKEND" >"$TMP/mesh-$n.yaml"
    python3 "$ROOT/bench/mesh_config.py" --json "$n" "$BACKEND" >"$TMP/mesh-$n.json"
    ((n > max_n)) && max_n=$n
done
AGENT_FLAGS="--max-services $((max_n + 16)) --max-endpoints $((max_n * 2 + 64)) --max-backends $((max_n * 2 + 64)) --max-frontends $((max_n + 64)) --max-members $((max_n * 2 + 64))"

run_agent_cells() { # <label> <build> <formats...>
    local label=$1 build=$2; shift 2
    local saved=$BUILD
    BUILD=$build
    replace_file "$TMP/mesh.conf" "services: []"
    GEN=0
    AGENT_FLAGS="$AGENT_FLAGS --log-level debug" agent_start "$TMP/mesh.conf"
    GEN=1; wait_log "config generation 1 applied" 1
    for rep in $(seq "$REPS"); do
        for n in $SERVICES; do
            for fmt in "$@"; do program_kmesh "$label" "$n" "$rep" "$TMP/mesh-$n.$fmt"; done
        done
    done
    agent_stop
    : >"$TMP/agent.log"
    AGENT_STARTS=0
    BUILD=$saved
}

log "services: $SERVICES; $REPS repetitions; build $BUILD_DIR${BEFORE_BUILD:+, before: $BEFORE_BUILD}"
run_agent_cells kmesh "$BUILD_DIR" yaml json
[[ -n $BEFORE_BUILD ]] && run_agent_cells kmesh-before "$(realpath "$BEFORE_BUILD")" yaml
for rep in $(seq "$REPS"); do
    for n in $SERVICES; do program_iptables "$n" "$rep"; done
done
# Phases in one process (the agent's log has no finer split).
for n in $SERVICES; do
    for fmt in yaml json; do
        for mode in "" --tree --single; do
            p0=$(pressure)
            r=$("$BUILD_DIR/test/unit/programming_bench" "$TMP/mesh-$n.$fmt" --json $mode)
            emit "{\"system\":\"phases\",\"psi_before\":\"$p0\",\"psi_after\":\"$(pressure)\",${r:1}"
        done
    done
done
mkdir -p "$(dirname "$OUTFILE")"
cp "$OUT" "$OUTFILE"
log "results in $OUTFILE"
