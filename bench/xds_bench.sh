#!/usr/bin/env bash
# istiod -> maps at scale: a full push of N services x M workloads until every map is programmed,
# the agent's memory (idle with one service, peak and settled after the push, after a mass
# removal back to one service), and how long one workload change takes to reach the maps (at
# which point the next connect() uses it). istiod is test/xds/fake_istiod on loopback; times are
# taken from the server's side: its send of a nonce (events.jsonl) to the ACK of that nonce, and
# to the agent's "maps programmed for nonce" debug line (wall clock, µs).
#
# usage: bench/xds_bench.sh [--services N] [--per-service M] [--changes K] [--build DIR]
#                           [--agent BIN] [--label TEXT] [--busy] [--no-docs]
#   defaults: 10000 services x 10 workloads (100k workloads), 200 single-workload changes
#   --agent: another kmesh-daemon binary, named kmesh-daemon (e.g. main's, for a "before" column),
#            with this build's fake istiod
#   --busy: one CPU hog (`yes >/dev/null`) runs from before the full push to the end
#   results are appended as one JSON line to bench/results/xds.jsonl; the docs table is built
#   from the last runs there (see --no-docs)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVICES=10000 PER=10 CHANGES=200 BUILD_DIR=$ROOT/build DOCS=yes BUSY=no LABEL=after AGENT_BIN=
while (($#)); do
    case $1 in
    --services) SERVICES=$2; shift ;;
    --per-service) PER=$2; shift ;;
    --changes) CHANGES=$2; shift ;;
    --build) BUILD_DIR=$2; shift ;;
    --agent) AGENT_BIN=$(realpath "$2"); shift ;;
    --label) LABEL=$2; shift ;;
    --busy) BUSY=yes ;;
    --no-docs) DOCS=no ;;
    *) echo "usage: $0 [--services N] [--per-service M] [--changes K] [--build DIR] [--agent BIN] [--label TEXT] [--busy] [--no-docs]" >&2; exit 2 ;;
    esac
    shift
done
[[ -n $AGENT_BIN ]] && export KMESH_DAEMON=$AGENT_BIN

source "$ROOT/test/e2e/lib.sh"
e2e_init "$BUILD_DIR"
FIXTURE="python3 $ROOT/test/xds/make_fixture.py"
CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
PORT=$(free_port)
PRESSURE_START=$(head -1 /proc/pressure/cpu)

log "generating $SERVICES services x $PER workloads"
$FIXTURE --scale "$SERVICES,$PER" -o "$TMP/scale.json"
$FIXTURE --scale 1,1 -o "$TMP/one.json"      # at rest: one service, one workload
$FIXTURE --scale 1,10 -o "$TMP/eleven.json"  # after the mass removal: 11 resources
istiod_start "$PORT" "$CONTROL" "$TMP/one.json"

WORKLOADS=$((SERVICES * PER))
AGENT_FLAGS="--max-services $((SERVICES + 1024)) --max-endpoints $((WORKLOADS * 11 / 10)) --max-backends $((WORKLOADS * 11 / 10)) --log-level debug"
# The agent runs on a node that hosts none of the workloads: make_fixture spreads them over
# node-0..3 (25k pods each, where kubelet allows 110 by default), and a node-1 agent would compile
# authorization for 25k local pods, which is not the scale being measured here.
agent_start --xds-address "127.0.0.1:$PORT" --xds-plaintext --node-name node-bench
wait_log "applied: 1 services, 1 workloads" 1
# The agent's own pid (under AGENT_WRAPPER, $AGENT_PID is the wrapper's).
APID=$AGENT_PID
[[ -n ${AGENT_WRAPPER:-} ]] && APID=$(pgrep -f -- "kmesh-daemon --bpffs-root $BPFFS " | head -1)
mem() { # <label>: one JSON object of the agent's memory now (kB, from /proc)
    awk -v l="$1" 'BEGIN {printf "{\"at\":\"%s\"", l}
        FILENAME ~ /status$/ && $1 ~ /^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem|Threads):$/ {sub(":", "", $1); printf ",\"%s\":%s", $1, $2}
        END {print "}"}' "/proc/$APID/status"
}
wait_applied() { # <services> <workloads> <count>: until the agent logged that generation that often
    for _ in $(seq 3000); do
        (($(grep -c "applied: $1 services, $2 workloads" "$TMP/agent.log") >= $3)) && return 0
        sleep 0.02
    done
    log "not applied: $1 services, $2 workloads"; exit 1
}
push_snapshot() { # <file>: fake istiod loads it and pushes the difference
    cp "$1" "$CONTROL/snapshot.json"
    touch "$CONTROL/push"
    for _ in $(seq 6000); do [[ -e $CONTROL/push ]] || break; sleep 0.02; done
}
sleep 3  # settled: the connect-time allocations are done
MEM=("$(mem idle_one_service)")
cp "/proc/$APID/smaps_rollup" "$TMP/smaps_idle.txt" 2>/dev/null || true
# Where the idle resident memory is, by mapping (libraries, heap, stacks, bpf maps).
IDLE_MAPS=$(awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6 ? $6 : "[anon]"} /^Rss:/ {r[name] += $2}
    END {for (n in r) if (r[n] >= 256) printf "%s=%d;", n, r[n]}' "/proc/$APID/smaps")

if [[ $BUSY == yes ]]; then
    yes >/dev/null &
    PIDS+=($!)
    HOG=$!
fi

log "full push: fake istiod loads the snapshot, then sends it"
push_snapshot "$TMP/scale.json"
wait_applied "$SERVICES" "$WORKLOADS" 1
MEM+=("$(mem after_push)")
sleep 5
MEM+=("$(mem settled)")

log "$CHANGES single-workload changes"
GEN=$(grep -c "applied:" "$TMP/agent.log")
for i in $(seq "$CHANGES"); do
    svc=$((RANDOM % SERVICES)) j=$((RANDOM % PER))
    $FIXTURE --workload "uid=Kubernetes//Pod/bench/svc-$svc-$j,ip=10.200.$((i / 250)).$((i % 250 + 1)),services=bench/svc-$svc.bench.svc.cluster.local:80:8080" \
        -o "$CONTROL/patch.json"
    touch "$CONTROL/patch"
    GEN=$((GEN + 1))
    for _ in $(seq 500); do (($(grep -c "applied:" "$TMP/agent.log") >= GEN)) && break; sleep 0.002; done
done
MEM+=("$(mem after_changes)")

log "mass removal: back to 1 service x 10 workloads"
push_snapshot "$TMP/eleven.json"
wait_applied 1 10 1
sleep 5
MEM+=("$(mem after_mass_removal)")
[[ -n ${HOG:-} ]] && kill "$HOG"
PRESSURE_END=$(head -1 /proc/pressure/cpu)
printf '%s\n' "${MEM[@]}" >"$TMP/mem.jsonl"
cp "$TMP/agent.log" "/tmp/xds_bench.$LABEL.agent.log"  # kept for a look at the phases
cp "$CONTROL/events.jsonl" "/tmp/xds_bench.$LABEL.events.jsonl"

python3 - "$TMP/agent.log" "$CONTROL/events.jsonl" "$TMP/mem.jsonl" "$ROOT" "$DOCS" "$LABEL" "$BUSY" \
    "$SERVICES" "$PER" "$CHANGES" "$PRESSURE_START" "$PRESSURE_END" "$IDLE_MAPS" "${AGENT_BIN:-$BUILD/agent/kmesh-daemon}" <<'PY'
import datetime, json, os, platform, re, sys
(log, events, memf, root, docs, label, busy, services, per, changes, p_start, p_end, idle_maps,
 agent_bin) = sys.argv[1:]
services, per, changes = int(services), int(per), int(changes)

ev = [json.loads(l) for l in open(events) if l.startswith("{")]
pushes = [e for e in ev if e["event"] == "push" and "istio.workload.Address" in e["type_url"]]
acks = {e["nonce"]: e["ts_us"] for e in ev if e["event"] == "ack"}
programmed = {}
for l in open(log):
    m = re.search(r"maps programmed for nonce (\S+) at (\d+) us", l)
    if m:
        programmed[m.group(1)] = int(m.group(2))

def times(p):  # ms from the server's send to its ACK and to the agent's maps programmed
    ack = (acks[p["nonce"]] - p["ts_us"]) / 1000 if p["nonce"] in acks else None
    maps = (programmed[p["nonce"]] - p["ts_us"]) / 1000 if p["nonce"] in programmed else None
    return ack, maps

full = [p for p in pushes if p["resources"] >= services * per]
removal = [p for p in pushes if p["removed"] >= services * per]
single = [times(p) for p in pushes if p["resources"] == 1 and not p["initial"]]
def pct(v, q):
    v = sorted(x for x in v if x is not None)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else None
mem = {m["at"]: m for m in map(json.loads, open(memf))}
cpu = "unknown CPU"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip(); break
fa, fm = times(full[0]) if full else (None, None)
ra, rm = times(removal[0]) if removal else (None, None)
rec = {
    "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"), "label": label, "busy": busy == "yes",
    "agent": agent_bin, "machine": f"{os.cpu_count()} x {cpu}, kernel {platform.release()}",
    "services": services, "per_service": per, "changes": changes,
    "full_push_bytes": full[0]["bytes"] if full else None,
    "full_push_to_ack_ms": fa, "full_push_to_maps_ms": fm,
    "removal_to_ack_ms": ra, "removal_to_maps_ms": rm,
    "single_to_maps_p50_ms": pct([m for a, m in single], .5), "single_to_maps_p99_ms": pct([m for a, m in single], .99),
    "single_to_ack_p50_ms": pct([a for a, m in single], .5), "single_to_ack_p99_ms": pct([a for a, m in single], .99),
    "single_n": len(single), "mem_kb": mem, "idle_maps_kb": idle_maps,
    "pressure_start": p_start, "pressure_end": p_end,
}
os.makedirs(f"{root}/bench/results", exist_ok=True)
with open(f"{root}/bench/results/xds.jsonl", "a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps(rec, indent=1))
PY
[[ $DOCS == yes ]] && python3 "$ROOT/bench/xds_report.py" "$ROOT/bench/results/xds.jsonl" "$ROOT/docs/benchmarks.md"
exit 0
