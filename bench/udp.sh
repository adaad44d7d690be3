#!/usr/bin/env bash
# The cost of UDP service translation (issue 10 section 1; docs/udp.md), side by side in one run:
#   direct   client pod not enrolled -> the DNS-like server's pod IP:5353
#   kmesh    enrolled client -> service VIP:53 (sendmsg4 picks/keeps the backend, recvmsg4 rewrites
#            the reply's source, sock_release drops the socket's reverse entry)
# each with one socket for all queries ("same") and a new socket per query ("new", as stub
# resolvers do). A python client (test/e2e/udp_tool.py bench) does N round trips; the interpreter
# dominates the absolute time, so compare the columns, and the per-call cost of each BPF program
# from kernel.bpf_stats_enabled. /proc/pressure/cpu is printed after each cell.
#
# usage: bench/udp.sh [--reps R] [--queries N] [--build DIR]
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=3 N=20000 BUILD_DIR=$ROOT/build
while (($#)); do
    case $1 in
    --reps) REPS=$2; shift ;;
    --queries) N=$2; shift ;;
    --build) BUILD_DIR=$2; shift ;;
    *) echo "usage: $0 [--reps R] [--queries N] [--build DIR]" >&2; exit 2 ;;
    esac
    shift
done
source "$ROOT/test/e2e/lib.sh"
source "$ROOT/bench/lib.sh"
e2e_init "$BUILD_DIR"
TOOL=$ROOT/test/e2e/udp_tool.py

replace_file "$TMP/mesh.yaml" "services: []"
agent_start "$TMP/mesh.yaml"
pod_create client
pod_create plain plain
pod_create srv plain
SRV=$POD_IP4
pod_exec srv taskset -c 1 python3 "$TOOL" serve srv 5353 &
PIDS+=($!)
replace_file "$TMP/mesh.yaml" "services:
- {name: dns, namespace: default, hostname: dns.default.svc.cluster.local, addresses: [10.96.0.53], ports: [{service_port: 53, target_port: 5353}]}
workloads:
- {uid: Kubernetes//Pod/default/srv, name: srv, namespace: default, addresses: [\"$SRV\"], services: {default/dns.default.svc.cluster.local: }}"
wait_log "config generation 2 applied" 1
sleep 0.3

BPF_STATS_WAS=$(sysctl -n kernel.bpf_stats_enabled)
trap 'rc=$?; sysctl -qw kernel.bpf_stats_enabled="$BPF_STATS_WAS"; (exit $rc); e2e_cleanup' EXIT
sysctl -qw kernel.bpf_stats_enabled=1
prog_stats() { # <program>: "run_time_ns run_cnt"
    bpftool prog show pinned "$BPFFS/kmesh/progs/$1" -j 2>/dev/null |
        python3 -c 'import json,sys; p=json.load(sys.stdin); print(p.get("run_time_ns",0), p.get("run_cnt",0))' 2>/dev/null ||
        echo "0 0"
}
per_call() { # <before "ns cnt"> <after "ns cnt">: ns per call
    python3 -c 'import sys; a=sys.argv[1].split(); b=sys.argv[2].split(); n=int(b[1])-int(a[1]); print(f"{(int(b[0])-int(a[0]))/n:.0f}" if n else "-")' "$1" "$2"
}

echo "cell rep qps us_per_query sendmsg4_ns recvmsg4_ns sock_release_ns cpu_pressure_avg10"
for rep in $(seq "$REPS"); do
    for cell in direct-same kmesh-same direct-new kmesh-new; do
        pod=client target="10.96.0.53 53" flags=() n=$N
        [[ $cell == direct-* ]] && pod=plain target="$SRV 5353"
        [[ $cell == *-new ]] && flags=(--new-socket) n=$((N / 4))
        s0=$(prog_stats cgroup_sendmsg4) r0=$(prog_stats cgroup_recvmsg4) l0=$(prog_stats cgroup_sock_release)
        # shellcheck disable=SC2086
        out=$(pod_exec $pod taskset -c 0 python3 "$TOOL" bench $target $n "${flags[@]}")
        echo "$cell $rep $(awk '{print $2, $4}' <<<"$out") $(per_call "$s0" "$(prog_stats cgroup_sendmsg4)")" \
            "$(per_call "$r0" "$(prog_stats cgroup_recvmsg4)") $(per_call "$l0" "$(prog_stats cgroup_sock_release)") $(pressure)"
    done
done
