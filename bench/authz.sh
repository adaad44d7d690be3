#!/usr/bin/env bash
# The cost of L4 authorization on the allowed path, side by side in one run (issue 9):
#   direct     client (not enrolled) -> server pod IP
#   kmesh@10   enrolled client -> service VIP, server not enrolled (connect4 only)
#   authz@N    enrolled client -> service VIP -> enrolled server to which N policies apply
#              (bench/authz_config.py: half DENY, half ALLOW, 10 rules each; the last ALLOW admits
#              the client, so every connection is allowed after every policy was considered)
# wrk new connection per request and keep-alive, interleaved per repetition; bpf_stats per call of
# connect4 and sk_lookup_authz; /proc/pressure/cpu after each run (a cell measured under load is
# rerun once).
#
# usage: bench/authz.sh [--reps R] [--duration S] [--build DIR] [--no-docs]
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
SWEEP=(0 100 1000)

source "$ROOT/test/e2e/lib.sh"
source "$ROOT/bench/lib.sh"
e2e_init "$BUILD_DIR"
OUT=$TMP/results.jsonl
: >"$OUT"
SERVER_CPU=1 CLIENT_CPU=0

make_network client kmbr1 10.244.1.0/24 fd00:10:244:1::/64 yes
make_network client-plain kmbr1 10.244.1.0/24 fd00:10:244:1::/64 no
make_network server kmbr2 10.244.2.0/24 fd00:10:244:2::/64 no
make_network server-mesh kmbr2 10.244.2.0/24 fd00:10:244:2::/64 yes
replace_file "$TMP/mesh.yaml" "services: []"
# Room for 1,000 policies x 10 rules x 3 match groups, in both generations during a publish.
AGENT_FLAGS="--max-services 1024 --max-endpoints 4096 --max-backends 4096 --max-frontends 4096"
agent_start "$TMP/mesh.yaml"

tune_pod() {
    ip netns exec "$RUN-$1" sysctl -qw net.ipv4.tcp_max_tw_buckets=0 net.ipv4.ip_local_port_range="1024 65535" \
        net.core.somaxconn=4096
}
pod_create cli client; tune_pod cli; CLI=$POD_IP4
pod_create cli-plain client-plain; tune_pod cli-plain
pod_create srv server; tune_pod srv; SRV=$POD_IP4
pod_create srv-mesh server-mesh; tune_pod srv-mesh; SRV_MESH=$POD_IP4

start_nginx() { # <pod>
    local pod=$1 conf=$TMP/nginx-$1.conf
    mkdir -p "$TMP/nginx-$pod"
    cat >"$conf" <<NGINX
worker_processes 1;
daemon off;
master_process off;
pid $TMP/nginx-$pod/pid;
error_log $TMP/nginx-$pod/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/nginx-$pod/body;
    proxy_temp_path $TMP/nginx-$pod/proxy;
    fastcgi_temp_path $TMP/nginx-$pod/fastcgi;
    uwsgi_temp_path $TMP/nginx-$pod/uwsgi;
    scgi_temp_path $TMP/nginx-$pod/scgi;
    server { listen 80 backlog=4096; location / { return 200 "ok\n"; } }
}
NGINX
    pod_exec "$pod" taskset -c $SERVER_CPU nginx -c "$conf" -e "$TMP/nginx-$pod/error.log" &
    PIDS+=($!)
}
start_nginx srv
start_nginx srv-mesh

prog_stats() { # <program>: "run_time_ns run_cnt" (kernel.bpf_stats_enabled)
    bpftool prog show pinned "$BPFFS/kmesh/progs/$1" -j 2>/dev/null |
        python3 -c 'import json,sys; p=json.load(sys.stdin); print(p.get("run_time_ns",0), p.get("run_cnt",0))' 2>/dev/null ||
        echo "0 0"
}

GEN=1
program() { # <config generator args...>: replaces the config, waits until the agent applied it
    "$@" >"$TMP/mesh.yaml.tmp" && mv "$TMP/mesh.yaml.tmp" "$TMP/mesh.yaml"
    GEN=$((GEN + 1))
    for _ in $(seq 3000); do grep -q "config generation $GEN applied" "$TMP/agent.log" && return 0; sleep 0.01; done
    log "config generation $GEN not applied in 30 s"; tail -5 "$TMP/agent.log"; exit 1
}

run_cell() { # <scenario> <n> <rep> <mode> <client> <target>
    local scenario=$1 n=$2 rep=$3 mode=$4 client=$5 target=$6 hdr=() c0 a0 out p attempt
    [[ $mode == newconn ]] && hdr=(-H "Connection: close")
    for attempt in 1 2; do
        c0=$(prog_stats cgroup_connect4); a0=$(prog_stats sk_lookup_authz)
        out=$(pod_exec "$client" taskset -c $CLIENT_CPU wrk -t1 -c8 -d"${DUR}s" --latency "${hdr[@]}" "http://$target:80/")
        p=$(pressure)
        # Another tenant's load skews a cell: measure it once more and keep the quieter run.
        python3 -c "import sys; sys.exit(0 if float('$p') < 10 else 1)" && break
        log "cpu pressure $p during $scenario@$n $mode: measuring again"
    done
    python3 "$ROOT/bench/report.py" parse-wrk --scenario "$scenario" --services "$n" --rep "$rep" --mode "$mode" \
        --cpu-path-us 0 --cpu-machine-us 0 --prog-stats "$c0 $(prog_stats cgroup_connect4)" \
        --authz-stats "$a0 $(prog_stats sk_lookup_authz)" --pressure "$p" <<<"$out" >>"$OUT"
    log "$scenario@$n $mode rep $rep: $(tail -1 "$OUT" | python3 "$ROOT/bench/report.py" brief) (pressure $p)"
}

BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
trap 'rc=$?; sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS"; (exit $rc); e2e_cleanup' EXIT
sysctl -qw kernel.bpf_stats_enabled=1
log "authz bench: ${SWEEP[*]} policies, $REPS repetitions of ${DUR}s; client CPU $CLIENT_CPU, server CPU $SERVER_CPU"
for rep in $(seq "$REPS"); do
    for mode in newconn keepalive; do
        run_cell direct 0 "$rep" "$mode" cli-plain "$SRV"
        program python3 "$ROOT/bench/mesh_config.py" 10 "$SRV"
        run_cell kmesh 10 "$rep" "$mode" cli 10.96.0.10
        for n in "${SWEEP[@]}"; do
            t0=$(date +%s%N)
            program python3 "$ROOT/bench/authz_config.py" "$n" "$SRV_MESH" "$CLI"
            echo "{\"kind\":\"program\",\"system\":\"authz\",\"services\":$n,\"wall_ms\":$((($(date +%s%N) - t0) / 1000000))}" >>"$OUT"
            # One connection first: the cell measures the allowed path, not the first verdict.
            pod_exec cli curl -s -o /dev/null --max-time 2 http://10.96.0.10/ || { log "authz@$n: the client is refused"; exit 1; }
            run_cell authz "$n" "$rep" "$mode" cli 10.96.0.10
        done
    done
done
mkdir -p "$ROOT/bench/results"
cp "$OUT" "$ROOT/bench/results/authz.jsonl"
python3 "$ROOT/bench/report.py" authz-report --results "$ROOT/bench/results/authz.jsonl" --duration "$DUR" \
    --reps "$REPS" $([[ $DOCS == yes ]] && echo --docs "$ROOT/docs")
