#!/usr/bin/env bash
# Kmesh side by side with the alternatives, in one run so that ratios are fair:
#   direct     client -> backend pod IP (the physical limit)
#   iptables   client -> VIP, DNAT by kube-proxy-style nat rules in the node namespace (N services)
#   proxy      client -> VIP, redirected through a haproxy pair in TCP mode (the sidecar stand-in)
#   kmesh      client -> VIP, rewritten at connect() by our programs (N services in the maps)
# For each: wrk keep-alive and new-connection-per-request, sockperf TCP ping-pong; plus the time
# to program N services, agent RSS and kmesh-cni ADD latency.
#
# usage: bench/run.sh [--quick|--full] [--build DIR] [--no-docs]
#   --quick  2 repetitions of 1 s, services 10 and 10k (under 2 minutes)
#   --full   5 repetitions of 5 s, services 10, 10k and 50k (about 15 minutes)
# Writes bench/results/<mode>.jsonl, prints the table, and (unless --no-docs) regenerates
# docs/benchmarks.md's results section and the plots in docs/.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=quick BUILD_DIR=$ROOT/build DOCS=yes
while (($#)); do
    case $1 in
    --quick) MODE=quick ;;
    --full) MODE=full ;;
    --build) BUILD_DIR=$2; shift ;;
    --no-docs) DOCS=no ;;
    *) echo "usage: $0 [--quick|--full] [--build DIR] [--no-docs]" >&2; exit 2 ;;
    esac
    shift
done
if [[ $MODE == quick ]]; then SWEEP=(10 10000) REPS=2 DUR=1; else SWEEP=(10 10000 50000) REPS=5 DUR=5; fi

source "$ROOT/test/e2e/lib.sh"
e2e_init "$BUILD_DIR"
OUT=$TMP/results.jsonl
: >"$OUT"
SERVER_CPU=1 CLIENT_CPU=0
nodeexec() { ip netns exec "$NODE" "$@"; }

# --- the node: clients on one bridge, servers on another, routed by the node namespace --------------
make_network client kmbr1 10.244.1.0/24 fd00:10:244:1::/64 yes
make_network client-plain kmbr1 10.244.1.0/24 fd00:10:244:1::/64 no
make_network server kmbr2 10.244.2.0/24 fd00:10:244:2::/64 no
replace_file "$TMP/mesh.yaml" "services: []"
AGENT_FLAGS="--max-services 65536 --max-endpoints 262144 --max-backends 262144"  # 50k services, 100k workloads
agent_start "$TMP/mesh.yaml"

tune_pod() { # new-connection runs would otherwise fill TIME_WAIT and drop SYNs on port reuse
    ip netns exec "$RUN-$1" sysctl -qw net.ipv4.tcp_max_tw_buckets=0 net.ipv4.ip_local_port_range="1024 65535" \
        net.core.somaxconn=4096
}
pod_create cli client; tune_pod cli
pod_create cli-plain client-plain; tune_pod cli-plain
pod_create cli-sidecar client-plain; tune_pod cli-sidecar
pod_create srv server; tune_pod srv; SRV=$POD_IP4
pod_create srv-sidecar server; tune_pod srv-sidecar; SRV_SC=$POD_IP4

start_backend() { # <pod>: nginx (small static response) and a sockperf server, on the server CPU
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
    pod_exec "$pod" taskset -c $SERVER_CPU sockperf sr --tcp -i 0.0.0.0 -p 11111 >/dev/null 2>&1 &
    PIDS+=($!)
}
start_backend srv
start_backend srv-sidecar

# --- the sidecar stand-in: haproxy in each pod, traffic redirected to it as Istio's iptables do ------
haproxy_conf() { # <file> <lines...>
    local f=$1; shift
    { printf 'global\n  maxconn 4000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n'
      printf '%s\n' "$@"; } >"$f"
}
haproxy_conf "$TMP/haproxy-out.cfg" \
    "listen out80" "  bind 127.0.0.1:15001" "  server s $SRV_SC:80" \
    "listen out11111" "  bind 127.0.0.1:15002" "  server s $SRV_SC:11111"
haproxy_conf "$TMP/haproxy-in.cfg" \
    "listen in80" "  bind :15006" "  server s 127.0.0.1:80" \
    "listen in11111" "  bind :15007" "  server s 127.0.0.1:11111"
ip netns exec "$RUN-cli-sidecar" iptables-restore <<RULES
*nat
:OUTPUT ACCEPT [0:0]
-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15001
-A OUTPUT -d 10.96.0.10/32 -p tcp -m tcp --dport 11111 -j REDIRECT --to-ports 15002
COMMIT
RULES
ip netns exec "$RUN-srv-sidecar" iptables-restore <<RULES
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -m tcp --dport 11111 -j REDIRECT --to-ports 15007
COMMIT
RULES
pod_exec cli-sidecar taskset -c $CLIENT_CPU haproxy -db -f "$TMP/haproxy-out.cfg" >>"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
pod_exec srv-sidecar taskset -c $SERVER_CPU haproxy -db -f "$TMP/haproxy-in.cfg" >>"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
sleep 0.5

# --- measurement ---------------------------------------------------------------------------------
cpu_usec() { # <pods...>: CPU time (user + kernel) charged to the pods' cgroups, in microseconds
    local total=0 pod
    for pod in "$@"; do total=$((total + $(awk '/^usage_usec/ {print $2}' "$(pod_cgroup "$pod")/cpu.stat"))); done
    echo $total
}
machine_busy_usec() { # busy time of all CPUs from /proc/stat (user nice system irq softirq steal)
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / {printf "%.0f\n", ($2 + $3 + $4 + $7 + $8 + $9) * 1000000 / hz}' /proc/stat
}

prog_stats() { # "run_time_ns run_cnt" of our connect4 program (kernel.bpf_stats_enabled)
    bpftool prog show pinned "$BPFFS/kmesh/progs/cgroup_connect4" -j 2>/dev/null |
        python3 -c 'import json,sys; p=json.load(sys.stdin); print(p.get("run_time_ns",0), p.get("run_cnt",0))' 2>/dev/null ||
        echo "0 0"
}

measure() { # <scenario> <services> <rep> <client-pod> <target-ip> <pods in the path...>
    local scenario=$1 services=$2 rep=$3 client=$4 target=$5 mode out c0 m0 p0 p1
    shift 5
    for mode in keepalive newconn; do
        local hdr=()
        [[ $mode == newconn ]] && hdr=(-H "Connection: close")
        c0=$(cpu_usec "$client" "$@"); m0=$(machine_busy_usec); p0=$(prog_stats)
        out=$(pod_exec "$client" taskset -c $CLIENT_CPU wrk -t1 -c8 -d"${DUR}s" --latency "${hdr[@]}" "http://$target:80/")
        p1=$(prog_stats)
        python3 "$ROOT/bench/report.py" parse-wrk --scenario "$scenario" --services "$services" --rep "$rep" \
            --mode "$mode" --cpu-path-us $(($(cpu_usec "$client" "$@") - c0)) \
            --cpu-machine-us $(($(machine_busy_usec) - m0)) --prog-stats "$p0 $p1" <<<"$out" >>"$OUT"
    done
    out=$(pod_exec "$client" taskset -c $CLIENT_CPU sockperf pp --tcp -i "$target" -p 11111 -t "$DUR" -m 64 --full-rtt 2>&1)
    python3 "$ROOT/bench/report.py" parse-sockperf --scenario "$scenario" --services "$services" --rep "$rep" <<<"$out" >>"$OUT"
    log "measured $scenario services=$services rep=$rep: $(tail -3 "$OUT" | python3 "$ROOT/bench/report.py" brief)"
}

GEN=1 KMESH_SERVICES=0
program_kmesh() { # <services>: from an empty mesh to N services; records the time and the agent's RSS
    local n=$1 t0 t1
    if ((KMESH_SERVICES)); then
        replace_file "$TMP/mesh.yaml" "services: []"
        GEN=$((GEN + 1)); wait_log "config generation $GEN applied" 1
    fi
    KMESH_SERVICES=$n
    python3 "$ROOT/bench/mesh_config.py" "$n" "$SRV" >"$TMP/mesh-$n.yaml"
    t0=$(date +%s%N)
    cp "$TMP/mesh-$n.yaml" "$TMP/mesh.yaml.tmp" && mv "$TMP/mesh.yaml.tmp" "$TMP/mesh.yaml"
    GEN=$((GEN + 1))
    until grep -q "config generation $GEN applied" "$TMP/agent.log"; do sleep 0.005; done
    t1=$(date +%s%N)
    local writes_us rss_kb
    writes_us=$(grep "config generation $GEN applied" "$TMP/agent.log" | sed -E 's/.* in ([0-9]+) us.*/\1/')
    rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$AGENT_PID/status")
    echo "{\"kind\":\"program\",\"system\":\"kmesh\",\"services\":$n,\"wall_ms\":$(((t1 - t0) / 1000000)),\"map_writes_ms\":$((writes_us / 1000)),\"rss_kb\":$rss_kb}" >>"$OUT"
}

program_iptables() { # <services>: iptables-restore of the whole nat table, as kube-proxy does
    local n=$1 t0 t1
    python3 "$ROOT/bench/kube_proxy_rules.py" "$n" "$SRV" >"$TMP/rules-$n.txt"
    t0=$(date +%s%N)
    nodeexec iptables-restore <"$TMP/rules-$n.txt"
    t1=$(date +%s%N)
    echo "{\"kind\":\"program\",\"system\":\"iptables\",\"services\":$n,\"wall_ms\":$(((t1 - t0) / 1000000))}" >>"$OUT"
}

cni_add_latency() { # ADD of kmesh-cni alone (what it adds to pod start), 30 times
    local i t0 t1
    for i in $(seq 30); do
        kmesh_cni DEL cli >/dev/null
        t0=$(date +%s%N)
        kmesh_cni ADD cli >/dev/null
        t1=$(date +%s%N)
        echo "{\"kind\":\"cni_add\",\"us\":$(((t1 - t0) / 1000))}" >>"$OUT"
    done
}

log "mode $MODE: services ${SWEEP[*]}, $REPS repetitions of ${DUR}s; client CPU $CLIENT_CPU, server CPU $SERVER_CPU"
# Per-program run time, to profile what connect4 costs; the setting is restored on exit.
BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
restore_bpf_stats() { sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS"; }
trap 'rc=$?; restore_bpf_stats; (exit $rc); e2e_cleanup' EXIT
sysctl -qw kernel.bpf_stats_enabled=1
cni_add_latency

# Phase 1, no nat rules in the node namespace: direct, the proxy pair and kmesh, interleaved per
# repetition. (Once nat rules exist, conntrack runs for every flow through the node.)
for rep in $(seq "$REPS"); do
    measure direct 0 "$rep" cli-plain "$SRV" srv
    measure proxy 0 "$rep" cli-sidecar 10.96.0.10 srv-sidecar
    for n in "${SWEEP[@]}"; do
        program_kmesh "$n"
        measure kmesh "$n" "$rep" cli 10.96.0.10 srv
    done
done
agent_stop

# Phase 2: kube-proxy-style nat rules. TIME_WAIT conntrack entries would otherwise pile up across
# runs (120 s each) and fill the host-wide table; 1 s keeps the per-packet work identical.
nodeexec sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1 2>/dev/null || true
for n in "${SWEEP[@]}"; do
    program_iptables "$n"
    nodeexec sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1 2>/dev/null || true
    for rep in $(seq "$REPS"); do measure iptables "$n" "$rep" cli-plain 10.96.0.10 srv; done
done

mkdir -p "$ROOT/bench/results"
cp "$OUT" "$ROOT/bench/results/$MODE.jsonl"
python3 "$ROOT/bench/report.py" report --results "$ROOT/bench/results/$MODE.jsonl" --mode "$MODE" \
    --duration "$DUR" --reps "$REPS" $([[ $DOCS == yes ]] && echo --docs "$ROOT/docs")
