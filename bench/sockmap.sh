#!/usr/bin/env bash
# Same-node sockmap acceleration (issue 10 section 3), side by side in one run, same pods:
#   direct         client pod not enrolled -> server pod IP (plain TCP through veth + bridge)
#   kmesh          enrolled client -> service VIP -> enrolled server, kmesh-daemon --sockmap=off
#   kmesh-sockmap  the same, kmesh-daemon --sockmap=on: both sockets in km_accel_sockhash, sends
#                  redirected into the peer's receive queue
# Cells: wrk keep-alive against nginx (1 thread; 1 and 8 connections) and sockperf TCP ping-pong
# (64 B), interleaved per repetition (the agent is restarted to switch --sockmap: the programs are
# updated in place). Latency p50/p99, CPU per request (the pods' cgroups' cpu.stat, and all CPUs'
# busy time), /proc/pressure/cpu after each cell (a cell measured under load is rerun once).
#
# usage: bench/sockmap.sh [--reps R] [--duration S] [--build DIR] [--no-docs]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=3 DUR=5 BUILD_DIR=$ROOT/build DOCS=yes
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
SOCKHASH=$BPFFS/kmesh/maps/current/km_accel_sockhash  # the generation the agent published

replace_file "$TMP/mesh.yaml" "services: []"
AGENT_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256 --sockmap off"
agent_start "$TMP/mesh.yaml"
SOCKMAP=off

tune_pod() {
    ip netns exec "$RUN-$1" sysctl -qw net.ipv4.tcp_max_tw_buckets=0 net.ipv4.ip_local_port_range="1024 65535" \
        net.core.somaxconn=4096
}
pod_create cli kmesh; tune_pod cli
pod_create cli-plain plain; tune_pod cli-plain
pod_create srv kmesh; tune_pod srv; SRV=$POD_IP4
python3 "$ROOT/bench/mesh_config.py" 10 "$SRV" >"$TMP/mesh.yaml.tmp" && mv "$TMP/mesh.yaml.tmp" "$TMP/mesh.yaml"
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
pod_exec srv taskset -c $SERVER_CPU sockperf sr --tcp -i 0.0.0.0 -p 11111 >/dev/null 2>&1 &
PIDS+=($!)

agent_on() { # <on|off>: (re)starts the agent with --sockmap=<on|off> and waits for its state
    [[ $SOCKMAP == "$1" ]] && return 0
    agent_stop
    AGENT_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256 --sockmap $1"
    agent_start "$TMP/mesh.yaml"
    wait_log "config generation 1 applied" "$AGENT_STARTS"
    SOCKMAP=$1
}

cpu_usec() { # <pods...>: CPU time (user + kernel) charged to the pods' cgroups
    local total=0 pod
    for pod in "$@"; do total=$((total + $(awk '/^usage_usec/ {print $2}' "$(pod_cgroup "$pod")/cpu.stat"))); done
    echo $total
}
machine_busy_usec() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1000000 / hz}' /proc/stat
}
busy() { python3 -c "import sys; sys.exit(0 if float('$1') >= 10 else 1)"; }
accel_msgs() { # redirected sends so far (km_accel_stats, summed over CPUs)
    bpftool map dump pinned "$BPFFS/kmesh/maps/current/km_accel_stats" -j 2>/dev/null | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if int(e["key"][0], 16) == 6:
        val = lambda v: v if isinstance(v, int) else int.from_bytes(bytes(int(b, 16) for b in v), "little")
        print(sum(val(v["value"]) for v in e["values"])); break
else: print(0)'
}

cell() { # <scenario> <rep> <kind: wrk1|wrk8|pingpong> <client> <target>
    local scenario=$1 rep=$2 kind=$3 client=$4 target=$5 attempt out c0 m0 c1 m1 p r0 r1
    for attempt in 1 2; do
        c0=$(cpu_usec "$client" srv); m0=$(machine_busy_usec); r0=$(accel_msgs)
        case $kind in
        wrk*) out=$(pod_exec "$client" taskset -c $CLIENT_CPU wrk -t1 -c"${kind#wrk}" -d"${DUR}s" --latency "http://$target:80/") ;;
        pingpong) out=$(pod_exec "$client" taskset -c $CLIENT_CPU sockperf pp --tcp -i "$target" -p 11111 -t "$DUR" -m 64 --full-rtt 2>&1) ;;
        esac
        c1=$(cpu_usec "$client" srv); m1=$(machine_busy_usec); r1=$(accel_msgs)
        p=$(pressure)
        busy "$p" || break
        log "cpu pressure $p during $scenario $kind: measuring again"
    done
    local common=(--scenario "$scenario" --services 0 --rep "$rep" --cpu-path-us $((c1 - c0))
        --cpu-machine-us $((m1 - m0)) --pressure "$p" --redirected $((r1 - r0)))
    case $kind in
    wrk*) python3 "$ROOT/bench/report.py" parse-wrk --mode "keepalive-c${kind#wrk}" "${common[@]}" <<<"$out" >>"$OUT" ;;
    pingpong) python3 "$ROOT/bench/report.py" parse-sockperf "${common[@]}" <<<"$out" >>"$OUT" ;;
    esac
    log "$scenario $kind rep $rep: $(tail -1 "$OUT" | python3 "$ROOT/bench/report.py" brief) (pressure $p, redirected $((r1 - r0)))"
}

log "sockmap bench: $REPS repetitions of ${DUR}s; client CPU $CLIENT_CPU, server CPU $SERVER_CPU"
for rep in $(seq "$REPS"); do
    for kind in pingpong wrk1 wrk8; do
        cell direct "$rep" "$kind" cli-plain "$SRV"
        agent_on off
        cell kmesh "$rep" "$kind" cli 10.96.0.10
        agent_on on
        cell kmesh-sockmap "$rep" "$kind" cli 10.96.0.10
        # Every accelerated socket left the sockhash when its connection closed.
        n=$(bpftool map dump pinned "$SOCKHASH" -j | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
        ((n == 0)) || { log "$n sockets left in the sockhash after $kind"; exit 1; }
    done
done
mkdir -p "$ROOT/bench/results"
cp "$OUT" "$ROOT/bench/results/sockmap.jsonl"
python3 "$ROOT/bench/report.py" sockmap-report --results "$ROOT/bench/results/sockmap.jsonl" --duration "$DUR" \
    --reps "$REPS" $([[ $DOCS == yes ]] && echo --docs "$ROOT/docs")
