# A real Prometheus (Debian's `prometheus`, 2.42) for the end-to-end tests: started on loopback with
# a free port, its own TSDB under the test's temp dir, a 1 s scrape of one target; helpers to wait
# for the target, run PromQL through the HTTP API and stop it. Source it after lib.sh and e2e_init.
#
#   prom_start <host:port> [metrics path=/stats/prometheus]   returns once the target was scraped up
#   prom_query <promql>        the raw JSON of /api/v1/query (exit 1 if Prometheus answers an error)
#   prom_value <promql>        the value of a query returning one sample ("" when it returns none)
#   prom_count <promql>        the number of samples (series) the query returns
#   prom_wait_value <promql> <expected> [seconds=20]
#                              waits until prom_value equals expected (numerically); prints the last value
#   prom_fresh                 waits until Prometheus holds a scrape that started after this call
#   prom_stop                  stops it (TERM, then KILL); also run on exit
#
# Cleanup: prom_start chains prom_stop in front of lib.sh's e2e_cleanup on EXIT, keeping the exit
# status, so Prometheus is killed even when the test fails halfway.

PROM_PID=
PROM_PORT=
PROM_DIR=

prom_start() { # <host:port> [metrics path]
    local target=$1 path=${2:-/stats/prometheus} attempt
    PROM_DIR=$TMP/prometheus
    mkdir -p "$PROM_DIR/data"
    # 1 s scrapes: a test waits seconds, not the default minute, for what it just did to show up.
    # The scrape timeout stays below the interval (Prometheus refuses the config otherwise).
    cat >"$PROM_DIR/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
- job_name: kmesh
  metrics_path: $path
  static_configs:
  - targets: ["$target"]
    labels: {node: $NODE}
YAML
    promtool check config "$PROM_DIR/prometheus.yml" >>"$TMP/check.log" 2>&1 ||
        { log "promtool rejects the scrape config"; cat "$PROM_DIR/prometheus.yml"; return 1; }
    trap 'rc=$?; prom_stop; (exit $rc); e2e_cleanup' EXIT
    # free_port's port may be taken again by the time Prometheus binds it: try a few.
    for attempt in 1 2 3; do
        PROM_PORT=$(free_port)
        prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
            --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1h \
            --log.level=warn >>"$TMP/prometheus.log" 2>&1 &
        PROM_PID=$!
        PIDS+=("$PROM_PID")
        for _ in $(seq 100); do
            curl -sf --max-time 1 "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1 && break
            kill -0 "$PROM_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$PROM_PID" 2>/dev/null && break
        log "prometheus did not start on 127.0.0.1:$PROM_PORT (attempt $attempt)"; tail -3 "$TMP/prometheus.log"
        PROM_PID=
    done
    [[ -n $PROM_PID ]] || return 1
    # Ready is not scraped: wait until the target's last scrape succeeded.
    for _ in $(seq 150); do
        [[ $(prom_target_health) == up ]] && { log "prometheus on 127.0.0.1:$PROM_PORT scrapes http://$target$path"; return 0; }
        sleep 0.2
    done
    log "prometheus never scraped http://$target$path: $(prom_target_health)"
    curl -s --max-time 2 "http://127.0.0.1:$PROM_PORT/api/v1/targets"; echo
    return 1
}

prom_target_health() { # "up", "down <lastError>" or "unknown"
    curl -s --max-time 2 "http://127.0.0.1:$PROM_PORT/api/v1/targets" 2>/dev/null | python3 -c '
import json, sys
try:
    t = json.load(sys.stdin)["data"]["activeTargets"][0]
    print(t["health"] if t["health"] == "up" else "%s %s" % (t["health"], t.get("lastError", "")))
except Exception:
    print("unknown")'
}

prom_query() { # <promql>: the JSON answer; non-zero exit (and the error on stderr) if Prometheus refuses it
    local out
    out=$(curl -sS --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1") || return 1
    python3 -c '
import json, sys
a = json.loads(sys.argv[1])
if a.get("status") != "success":
    sys.exit("prometheus: %s: %s" % (a.get("errorType"), a.get("error")))' "$out" || return 1
    printf '%s\n' "$out"
}

prom_value() { # <promql>: the single sample's value, "" for an empty result; fails for several samples
    prom_query "$1" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]
if r["resultType"] == "scalar":
    print(r["result"][1]); sys.exit(0)
res = r["result"]
if len(res) > 1:
    sys.exit("%d samples, expected at most one: %s" % (len(res), [x["metric"] for x in res]))
print(res[0]["value"][1] if res else "")'
}

prom_count() { # <promql>: how many samples (series) the query returns
    prom_query "$1" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["data"]["result"]))'
}

prom_series() { # <promql>: one line per sample: value, then its labels as JSON (sorted)
    prom_query "$1" | python3 -c '
import json, sys
for x in json.load(sys.stdin)["data"]["result"]:
    print(x["value"][1], json.dumps(x["metric"], sort_keys=True))'
}

prom_wait_value() { # <promql> <expected> [seconds]: until the value equals expected; prints the last value
    local expr=$1 want=$2 secs=${3:-20} v=
    for _ in $(seq $((secs * 5))); do
        v=$(prom_value "$expr" 2>/dev/null) || v=
        [[ -n $v ]] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) == float(sys.argv[2]) else 1)' "$v" "$want" && break
        sleep 0.2
    done
    echo "${v:-none}"
}

prom_fresh() { # waits until the target has been scraped completely after this call (up to 10 s)
    python3 "$(dirname "${BASH_SOURCE[0]}")/prom_checks.py" --fresh "http://127.0.0.1:$PROM_PORT" && return 0
    log "prometheus has not completed a scrape in 10 s"; return 1
}

prom_stop() { # runs inside the EXIT trap under set -e: no command here may fail
    [[ -n $PROM_PID ]] || return 0
    kill -TERM "$PROM_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$PROM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PROM_PID" 2>/dev/null || true
    wait "$PROM_PID" 2>/dev/null || true
    PROM_PID=
    return 0
}
