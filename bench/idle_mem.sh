#!/usr/bin/env bash
# The agent's resident memory at rest with one service (issue 12: ztunnel is ~12 MB), for one or
# more kmesh-daemon binaries side by side in one run: each is started in turn, fed one service
# and one workload (by fake istiod over Delta xDS, and from a config file), left 3 s to settle,
# then /proc/<pid>/status (VmRSS, RssAnon, RssFile) and smaps (Rss per mapping) are read.
# Production map sizes (no --max-* flags), not in a cluster (no kube client, no libcurl).
# Each is read twice: as started, and 3 s after the kernel reclaimed its file-backed pages
# (bench/pageout.py; the "+pageout" rows: the working set at rest).
#
# usage: bench/idle_mem.sh [--build DIR] [--rounds N] [LABEL=BINARY ...]
#   default binary: this build's agent/kmesh-daemon, labelled "build"
#   prints one line per run and a median table; appends JSON lines to bench/results/idle_mem.jsonl
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=$ROOT/build ROUNDS=3 BINS=()
while (($#)); do
    case $1 in
    --build) BUILD_DIR=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    *=*) BINS+=("$1") ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [LABEL=BINARY ...]" >&2; exit 2 ;;
    esac
    shift
done
((${#BINS[@]})) || BINS=("build=$BUILD_DIR/agent/kmesh-daemon")

source "$ROOT/test/e2e/lib.sh"
e2e_init "$BUILD_DIR"
CONTROL=$TMP/istiod
mkdir -p "$CONTROL"
python3 "$ROOT/test/xds/make_fixture.py" --scale 1,1 -o "$TMP/one.json"
PORT=$(free_port)
istiod_start "$PORT" "$CONTROL" "$TMP/one.json"
echo_one_backend 10.244.0.3 >"$TMP/mesh.yaml"
AGENT_FLAGS=""  # production map sizes
RESULTS=$ROOT/bench/results/idle_mem.jsonl
mkdir -p "$(dirname "$RESULTS")"

measure() { # <label> <source> : one JSON line
    local apid=$AGENT_PID
    sleep 3
    local by_map
    by_map=$(awk '/^[0-9a-f]+-[0-9a-f]+ / {n = $6 ? $6 : "[anon]"; sub(/.*\//, "", n)} /^Rss:/ {r[n] += $2}
        END {for (n in r) if (r[n] >= 200) printf "%s%s:%d", (c++ ? "," : ""), n, r[n]}' "/proc/$apid/smaps")
    awk -v l="$1" -v s="$2" -v m="$by_map" -v p="$(head -1 /proc/pressure/cpu)" '
        $1 ~ /^(VmRSS|RssAnon|RssFile|Threads):$/ {sub(":", "", $1); v[$1] = $2}
        END {printf "{\"label\":\"%s\",\"source\":\"%s\",\"VmRSS\":%d,\"RssAnon\":%d,\"RssFile\":%d,\"Threads\":%d,\"maps\":\"%s\",\"pressure\":\"%s\"}\n",
            l, s, v["VmRSS"], v["RssAnon"], v["RssFile"], v["Threads"], m, p}' "/proc/$apid/status"
}

# The same process again after the kernel was asked to reclaim its file-backed pages
# (bench/pageout.py: what a memory cgroup does to a container near its limit): 3 s later, RSS
# holds only the code and data the agent touched at rest, not every page start-up touched.
working_set() { # <label> <source>
    python3 "$ROOT/bench/pageout.py" "$AGENT_PID" >&2 || return
    measure "$1" "$2+pageout"
}

log "idle memory: ${#BINS[@]} binaries x $ROUNDS rounds x (xds, file); $(head -1 /proc/pressure/cpu)"
: >"$TMP/runs.jsonl"
for r in $(seq "$ROUNDS"); do
    for spec in "${BINS[@]}"; do
        label=${spec%%=*}
        export KMESH_DAEMON=${spec#*=}
        agent_start --xds-address "127.0.0.1:$PORT" --xds-plaintext --node-name node-idle
        wait_log "applied: 1 services, 1 workloads" "$AGENT_STARTS"
        measure "$label" xds | tee -a "$TMP/runs.jsonl"
        working_set "$label" xds | tee -a "$TMP/runs.jsonl"
        agent_stop
        agent_start "$TMP/mesh.yaml"
        wait_log "applied: 1 services, 1 workloads" "$AGENT_STARTS"
        measure "$label" file | tee -a "$TMP/runs.jsonl"
        working_set "$label" file | tee -a "$TMP/runs.jsonl"
        agent_stop
    done
done
cat "$TMP/runs.jsonl" >>"$RESULTS"
python3 - "$TMP/runs.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("| binary | source | VmRSS MB | RssAnon MB | RssFile MB | threads | largest mappings (MB, last run) |")
print("|---|---|---|---|---|---|---|")
seen = []
for r in runs:
    k = (r["label"], r["source"])
    if k not in seen: seen.append(k)
for label, source in seen:
    rs = [r for r in runs if (r["label"], r["source"]) == (label, source)]
    med = lambda f: statistics.median(x[f] for x in rs) / 1024
    maps = sorted((kv.rsplit(":", 1) for kv in rs[-1]["maps"].split(",") if kv), key=lambda x: -int(x[1]))[:6]
    print(f"| {label} | {source} | {med('VmRSS'):.1f} | {med('RssAnon'):.1f} | {med('RssFile'):.1f} | {rs[-1]['Threads']} | "
          + ", ".join(f"{n} {int(v)/1024:.1f}" for n, v in maps) + " |")
PY
