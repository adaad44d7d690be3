#!/usr/bin/env bash
# istiod -> maps at scale: a full push of N services x M workloads until every map is programmed,
# the agent's memory, and how long one workload change takes to reach the maps (at which point the
# next connect() uses it). istiod is test/xds/fake_istiod on loopback.
#
# usage: bench/xds_bench.sh [--services N] [--per-service M] [--changes K] [--build DIR] [--no-docs]
#   defaults: 10000 services x 10 workloads (100k workloads), 200 single-workload changes
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SERVICES=10000 PER=10 CHANGES=200 BUILD_DIR=$ROOT/build DOCS=yes
while (($#)); do
    case $1 in
    --services) SERVICES=$2; shift ;;
    --per-service) PER=$2; shift ;;
    --changes) CHANGES=$2; shift ;;
    --build) BUILD_DIR=$2; shift ;;
    --no-docs) DOCS=no ;;
    *) echo "usage: $0 [--services N] [--per-service M] [--changes K] [--build DIR] [--no-docs]" >&2; exit 2 ;;
    esac
    shift
done

source "$ROOT/test/e2e/lib.sh"
e2e_init "$BUILD_DIR"
FIXTURE="python3 $ROOT/test/xds/make_fixture.py"
CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
PORT=$(free_port)

log "generating $SERVICES services x $PER workloads"
$FIXTURE --scale "$SERVICES,$PER" -o "$TMP/scale.json"
$FIXTURE >"$TMP/empty.json"
istiod_start "$PORT" "$CONTROL" "$TMP/empty.json"

WORKLOADS=$((SERVICES * PER))
AGENT_FLAGS="--max-services $((SERVICES + 1024)) --max-endpoints $((WORKLOADS * 11 / 10)) --max-backends $((WORKLOADS * 11 / 10)) --log-level debug"
agent_start --xds-address "127.0.0.1:$PORT" --xds-plaintext --node-name node-1
wait_log "config generation 1 applied" 1
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$AGENT_PID/status"; }
RSS_IDLE=$(rss VmRSS)

log "full push: fake istiod loads the snapshot, then sends it"
cp "$TMP/scale.json" "$CONTROL/snapshot.json"
touch "$CONTROL/push"
for _ in $(seq 6000); do [[ -e $CONTROL/push ]] || break; sleep 0.02; done
for _ in $(seq 3000); do grep -q "applied: $SERVICES services, $WORKLOADS workloads" "$TMP/agent.log" && break; sleep 0.02; done
grep -q "applied: $SERVICES services, $WORKLOADS workloads" "$TMP/agent.log" || { log "full push not applied"; exit 1; }
RSS_FULL=$(rss VmRSS) HWM_FULL=$(rss VmHWM)

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
RSS_END=$(rss VmRSS)

python3 - "$TMP/agent.log" "$CONTROL/events.jsonl" "$SERVICES" "$PER" "$CHANGES" "$RSS_IDLE" "$RSS_FULL" "$HWM_FULL" "$RSS_END" \
    "$ROOT/docs/benchmarks.md" "$DOCS" <<'PY'
import datetime, json, os, platform, re, statistics, sys
log, events, services, per, changes, rss_idle, rss_full, hwm_full, rss_end, doc, docs = sys.argv[1:]
services, per, changes = int(services), int(per), int(changes)

def log_ms(line):
    ts = datetime.datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
    return ts.timestamp() * 1000

lines = open(log).read().splitlines()
handled = [(log_ms(l), int(re.search(r"handled in (\d+) us", l).group(1)), int(re.search(r"response: (\d+) resources", l).group(1)))
           for l in lines if "istio.workload.Address response" in l and "handled in" in l]
applied = [(log_ms(l), l) for l in lines if "applied:" in l]
pushes = [json.loads(l) for l in open(events) if '"event":"push"' in l and "istio.workload.Address" in l]

full = [h for h in handled if h[2] >= services * (per + 1)]
full_push = [p for p in pushes if p.get("resources", 0) >= services * (per + 1)]
full_handled_ms = full[0][1] / 1000 if full else float("nan")
full_e2e_ms = (full[0][0] - full_push[0]["ts_ms"]) if full and full_push else float("nan")

single = [h[1] for h in handled if h[2] == 1]
single_pushes = [p for p in pushes if p.get("resources") == 1]
e2e = []
for p in single_pushes:
    after = [h for h in handled if h[2] == 1 and h[0] >= p["ts_ms"] - 1]
    if after:
        e2e.append(after[0][0] - p["ts_ms"])
def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))] if v else float("nan")

cpu = "unknown CPU"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip(); break
machine = f"{os.cpu_count()} × {cpu}, kernel {platform.release()}"
mb = lambda kb: int(kb) / 1024
rows = [
    f"### istiod at scale — {datetime.date.today()}",
    "",
    f"Machine: {machine}. Command: `bench/xds_bench.sh --services {services} --per-service {per} --changes {changes}`.",
    f"istiod is `test/xds/fake_istiod` on loopback; the agent talks Delta xDS to it in plaintext.",
    "",
    "| what | measured | target |",
    "|---|---|---|",
    f"| full push of {services:,} services × {per} workloads ({services * per:,} workloads): response received → every map programmed | {full_handled_ms:,.0f} ms | ≤ 2,000 ms |",
    f"| same, from istiod's send (incl. gRPC transfer of the {services * (per + 1):,} resources) | {full_e2e_ms:,.0f} ms | |",
    f"| agent RSS after the full push (peak during it) | {mb(rss_full):.0f} MB ({mb(hwm_full):.0f} MB) | ≤ 100 MB |",
    f"| agent RSS idle before / after {changes} changes | {mb(rss_idle):.0f} / {mb(rss_end):.0f} MB | |",
    f"| one workload change: response received → maps written, p50 / p99 (n={len(single)}) | {pct(single, .5) / 1000:.2f} / {pct(single, .99) / 1000:.2f} ms | p99 ≤ 5 ms |",
    f"| one workload change: istiod's send → maps written, p50 / p99 (ms clock) | {pct(e2e, .5):.0f} / {pct(e2e, .99):.0f} ms | |",
    "",
]
text = "\n".join(rows)
print(text)
if docs == "yes":
    begin, end = "<!-- results:xds:begin -->", "<!-- results:xds:end -->"
    d = open(doc).read()
    block = begin + "\n" + text + "\n" + end
    d = d[:d.index(begin)] + block + d[d.index(end) + len(end):] if begin in d else d + "\n" + block + "\n"
    open(doc, "w").write(d)
PY
