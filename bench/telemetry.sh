#!/usr/bin/env bash
# The cost of telemetry (issue 11): kmesh with monitoring on vs off, side by side in one run, same pods:
#   kmesh-mon-off   enrolled client -> service VIP -> enrolled server, monitoring off
#   kmesh-mon-on    the same with monitoring on: sockops tracks both sockets of every connection,
#                   open/close events go through the ring buffer to the agent, which keeps Istio's
#                   TCP series (both reporters: client and server are enrolled, the most work per
#                   connection); the metrics endpoint is scraped once a second during the cell, as
#                   Prometheus would
# wrk against nginx with a new connection per request (Connection: close; the target: new-connection
# throughput with monitoring on >= 0.97x off) and keep-alive, interleaved per repetition. One agent
# (started with --monitoring=off) is switched at run time through its admin server (POST
# /debug/monitoring, what `kmeshctl monitoring` does), so both sides share the same process, maps and
# warm caches. CPU per request: the pods' cgroups
# (path), the agent process (agent) and all CPUs' busy time (machine). `tracked`: connections the
# agent counted in istio_tcp_connections_opened_total{reporter="source"} during the cell (0 when off).
# /proc/pressure/cpu after each cell; a cell measured under load is rerun once.
#
# usage: bench/telemetry.sh [--reps R] [--duration S] [--build DIR] [--no-docs]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=3 DUR=3 BUILD_DIR=$ROOT/build DOCS=yes
while (($#)); do
    case $1 in
    --reps) REPS=$2; shift ;;
    --duration) DUR=$2; shift ;;
    --build) BUILD_DIR=$2; shift ;;
    --no-docs) DOCS=no ;;
    *) echo "usage: $0 [--reps R] [--duration S] [--build DIR] [--no-docs]" >&2; exit 2 ;;
    esac
    shift
done

source "$ROOT/test/e2e/lib.sh"
source "$ROOT/bench/lib.sh"
e2e_init "$BUILD_DIR"
OUT=$TMP/results.jsonl
: >"$OUT"
SERVER_CPU=1 CLIENT_CPU=0
METRICS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
MAPS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256"

replace_file "$TMP/mesh.yaml" "services: []"
AGENT_FLAGS="$MAPS --monitoring=off"  # lib.sh adds --metrics-address 127.0.0.1 --metrics-port $METRICS_PORT
agent_start "$TMP/mesh.yaml"
MONITORING=off

tune_pod() {
    ip netns exec "$RUN-$1" sysctl -qw net.ipv4.tcp_max_tw_buckets=0 net.ipv4.ip_local_port_range="1024 65535" \
        net.core.somaxconn=4096
}
pod_create cli kmesh; tune_pod cli; CLI=$POD_IP4
pod_create srv kmesh; tune_pod srv; SRV=$POD_IP4
# mesh_config.py's 10 services, plus the client as a workload so both ends have names.
{ python3 "$ROOT/bench/mesh_config.py" 10 "$SRV"
  echo "- {uid: Kubernetes//Pod/default/cli, name: cli, namespace: default, workload_name: cli, addresses: [\"$CLI\"]}"
} >"$TMP/mesh.yaml.tmp" && mv "$TMP/mesh.yaml.tmp" "$TMP/mesh.yaml"
wait_log "config generation 2 applied" 1

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
master_process off;
pid $TMP/nginx/pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server { listen 80 backlog=4096; location / { return 200 "ok\n"; } }
}
NGINX
pod_exec srv taskset -c $SERVER_CPU nginx -c "$TMP/nginx.conf" -e "$TMP/nginx/error.log" &
PIDS+=($!)

agent_on() { # <on|off>: switches monitoring at run time and checks the agent took it
    local enabled=false resp
    [[ $MONITORING == "$1" ]] && return 0
    [[ $1 == on ]] && enabled=true
    for _ in $(seq 50); do
        resp=$(curl -s --max-time 5 -X POST -d "" "http://127.0.0.1:$ADMIN_PORT/debug/monitoring?enabled=$enabled") &&
            grep -q "\"enabled\": *$enabled" <<<"$resp" && break
        resp=""
        sleep 0.2  # the admin server binds in the background
    done
    [[ -n $resp ]] || { log "cannot switch monitoring $1 through the admin server"; exit 1; }
    MONITORING=$1
}

cpu_usec() { # <pods...>: CPU time (user + kernel) charged to the pods' cgroups
    local total=0 pod
    for pod in "$@"; do total=$((total + $(awk '/^usage_usec/ {print $2}' "$(pod_cgroup "$pod")/cpu.stat"))); done
    echo $total
}
agent_usec() { # the agent process's CPU time (utime + stime, all threads)
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.0f\n", ($12 + $13) * 1000000 / hz }' "/proc/$AGENT_PID/stat"
}
machine_busy_usec() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1000000 / hz}' /proc/stat
}
busy() { python3 -c "import sys; sys.exit(0 if float('$1') >= 10 else 1)"; }
opened() { # sum of istio_tcp_connections_opened_total{reporter="source"} in the exposition
    curl -s --max-time 5 "http://127.0.0.1:$METRICS_PORT/stats/prometheus" |
        awk '/^istio_tcp_connections_opened_total\{/ && /reporter="source"/ { s += $NF } END { printf "%.0f\n", s }'
}

cell() { # <scenario> <rep> <mode: newconn|keepalive>
    local scenario=$1 rep=$2 mode=$3 hdr=() attempt out c0 a0 m0 o0 c1 a1 m1 o1 p scraper
    [[ $mode == newconn ]] && hdr=(-H "Connection: close")
    for attempt in 1 2; do
        o0=$(opened); c0=$(cpu_usec cli srv); a0=$(agent_usec); m0=$(machine_busy_usec)
        # A scrape a second, as Prometheus does: its cost is part of monitoring.
        (while :; do curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$METRICS_PORT/stats/prometheus"; sleep 1; done) &
        scraper=$!
        out=$(pod_exec cli taskset -c $CLIENT_CPU wrk -t1 -c8 -d"${DUR}s" --latency "${hdr[@]}" "http://10.96.0.10:80/")
        kill "$scraper"; wait "$scraper" 2>/dev/null
        c1=$(cpu_usec cli srv); a1=$(agent_usec); m1=$(machine_busy_usec)
        sleep 1.5  # events of the last connections reach the agent
        o1=$(opened)
        p=$(pressure)
        busy "$p" || break
        log "cpu pressure $p during $scenario $mode: measuring again"
    done
    python3 "$ROOT/bench/report.py" parse-wrk --scenario "$scenario" --services 10 --rep "$rep" --mode "$mode" \
        --cpu-path-us $((c1 - c0)) --cpu-machine-us $((m1 - m0)) --agent-cpu-us $((a1 - a0)) \
        --tracked $((o1 - o0)) --pressure "$p" <<<"$out" >>"$OUT"
    log "$scenario $mode rep $rep: $(tail -1 "$OUT" | python3 "$ROOT/bench/report.py" brief) (pressure $p, tracked $((o1 - o0)))"
}

log "telemetry bench: $REPS repetitions of ${DUR}s; client CPU $CLIENT_CPU, server CPU $SERVER_CPU"
for rep in $(seq "$REPS"); do
    for mode in newconn keepalive; do
        # Alternate which goes first, so a slow drift of the machine does not favour one side.
        if ((rep % 2)); then order=(off on); else order=(on off); fi
        for m in "${order[@]}"; do
            agent_on "$m"
            cell "kmesh-mon-$m" "$rep" "$mode"
        done
    done
done
mkdir -p "$ROOT/bench/results"
cp "$OUT" "$ROOT/bench/results/telemetry.jsonl"
python3 "$ROOT/bench/report.py" telemetry-report --results "$ROOT/bench/results/telemetry.jsonl" --duration "$DUR" \
    --reps "$REPS" $([[ $DOCS == yes ]] && echo --docs "$ROOT/docs")
