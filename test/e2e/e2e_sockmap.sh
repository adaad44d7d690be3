#!/usr/bin/env bash
# Same-node sockmap acceleration (docs/sockmap.md), on the real kernel:
#  - a connection between two enrolled pods has both its sockets in km_accel_sockhash (read with
#    bpftool, compared with the 4-tuples `ss` reports in each pod);
#  - bytes arrive intact both ways (8 MiB each way hashed by each end, 2,000 ping-pongs), with
#    blocking and non-blocking (epoll) readers, over IPv4, IPv6 and IPv4-mapped sockets;
#  - they bypass TCP/IP: the pod veth's packet counters and the pod's TCP OutSegs (the kernel's own
#    counters, read outside our code) barely move while megabytes go through, and move by the
#    megabytes for the same transfer to a pod that is not enrolled;
#  - a connection to a pod that is not enrolled (either direction) works and leaves the sockhash;
#  - half-close, RST, close from either side and pod deletion leave the sockhash empty;
#  - --sockmap=off inserts nothing, and the counters reach /metrics.
source "$(dirname "$0")/lib.sh"
e2e_init "$1"
TOOL="python3 $E2E_DIR/sockmap_tool.py"
SOCKHASH=$BPFFS/kmesh/maps/current/km_accel_sockhash  # the generation the agent published

replace_file "$TMP/mesh.yaml" "services: []"
ADMIN_PORT=$(free_port)
AGENT_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256 --sockmap on"
agent_start "$TMP/mesh.yaml"
wait_log "same-node sockmap acceleration on" 1

pod_create a; A4=$POD_IP4 A6=$POD_IP6
pod_create b; B4=$POD_IP4 B6=$POD_IP6
pod_create c plain; C4=$POD_IP4

serve() { # <pod> <port> [flags]: the test server in the background
    local pod=$1 port=$2; shift 2
    pod_exec "$pod" $TOOL serve "$port" --v6 "$@" >>"$TMP/server-$pod.log" 2>&1 &
    PIDS+=($!)
}
serve b 9000; serve b 9001 --nonblock; serve c 9000; serve a 9000
for pod in a b c; do
    for _ in $(seq 50); do grep -q "listening on 9000" "$TMP/server-$pod.log" 2>/dev/null && break; sleep 0.1; done
done

# The sockhash's keys as "local:port remote:port", one per line (bpftool, not our code).
sockhash_entries() {
    bpftool map dump pinned "$SOCKHASH" -j 2>/dev/null | python3 -c '
import ipaddress, json, sys
for e in json.load(sys.stdin):
    k = bytes(int(b, 16) for b in e["key"])
    def a(b):
        ip = ipaddress.IPv6Address(b)
        return str(ip.ipv4_mapped or ip)
    lp, rp = int.from_bytes(k[32:34], "big"), int.from_bytes(k[34:36], "big")
    print(f"{a(k[0:16])}:{lp} {a(k[16:32])}:{rp}")
'
}
sockhash_count() { sockhash_entries | grep -c . || true; }
# The pod's established TCP connections as "local:port remote:port" (the kernel's view, via ss).
ss_tuples() {
    ip netns exec "$RUN-$1" ss -Htn state established | awk '{print $3, $4}' |
        sed -E 's/\[::ffff:([0-9.]+)\]/\1/g; s/\[([0-9a-f:]+)\]/\1/g'
}
state_count() { bpftool map dump pinned "$BPFFS/kmesh/maps/current/km_accel_state" -j | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
wait_sockhash_empty() { # the sockhash, and the per-socket state entries beside it
    for _ in $(seq 50); do [[ $(sockhash_count) == 0 && $(state_count) == 0 ]] && return 0; sleep 0.1; done
    log "sockhash still holds:"; sockhash_entries; log "state entries: $(state_count)"; return 1
}
veth_tx() { # <pod>: "packets bytes" sent by the pod's eth0 (the veth), from the kernel's counters
    ip -n "$RUN-$1" -s -j link show eth0 | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["tx"]["packets"] + s["rx"]["packets"], s["tx"]["bytes"] + s["rx"]["bytes"])'
}
tcp_outsegs() { ip netns exec "$RUN-$1" awk '/^Tcp:/ {if (h) print $12; h=1}' /proc/net/snmp; }

# --- 1. both ends in the sockhash, matching the 4-tuples the kernel reports ------------------------
pod_exec a $TOOL client "$B4" 9000 hold 5 >"$TMP/hold.out" 2>&1 &
HOLD=$!
for _ in $(seq 50); do grep -q held "$TMP/hold.out" && break; sleep 0.1; done
ss_tuples a | grep ":9000" >"$TMP/ss-a"; ss_tuples b | grep "^$B4:9000" >"$TMP/ss-b"
sockhash_entries | sort >"$TMP/map"
log "sockhash: $(tr '\n' ';' <"$TMP/map")  ss a: $(cat "$TMP/ss-a")  ss b: $(cat "$TMP/ss-b")"
check "client socket of an enrolled -> enrolled connection is in the sockhash" grep -qxFf "$TMP/ss-a" "$TMP/map"
check "server socket of it is in the sockhash too" grep -qxFf "$TMP/ss-b" "$TMP/map"
check "nothing else is in the sockhash" test "$(wc -l <"$TMP/map")" = 2
kill "$HOLD" 2>/dev/null; wait "$HOLD" 2>/dev/null || true
check "client killed: the sockhash is empty" wait_sockhash_empty

# --- 2. data intact both ways, bytes bypass TCP/IP --------------------------------------------------
MB8=$((8 << 20))
transfer() { # <desc> <client pod> <server addr> <port> <mode> <n> [client flags]: runs and checks "ok"
    local desc=$1 pod=$2 addr=$3 port=$4 mode=$5 n=$6 out; shift 6
    if out=$(pod_exec "$pod" $TOOL client "$addr" "$port" "$mode" "$n" "$@" 2>&1) && [[ $out == ok* ]]; then
        ok "$desc ($out)"
    else
        not_ok "$desc: $out"
    fi
}
bypass() { # <desc> <pod> <max packets> <cmd...>: the command moves MiBs, the pod's veth and TCP barely
    local desc=$1 pod=$2 max=$3 p0 b0 s0 p1 b1 s1; shift 3
    read -r p0 b0 < <(veth_tx "$pod"); s0=$(tcp_outsegs "$pod")
    "$@"
    read -r p1 b1 < <(veth_tx "$pod"); s1=$(tcp_outsegs "$pod")
    log "$desc: veth packets +$((p1 - p0)), bytes +$((b1 - b0)); TCP OutSegs +$((s1 - s0))"
    LAST_VETH_BYTES=$((b1 - b0)) LAST_SEGS=$((s1 - s0))
    if ((p1 - p0 <= max && s1 - s0 <= max)); then ok "$desc: bypassed TCP/IP"; else not_ok "$desc: went through TCP/IP"; fi
}
bypass "8 MiB a -> b (blocking reader)" a 40 transfer "8 MiB a -> b hashed by b" a "$B4" 9000 sink $MB8
bypass "8 MiB b -> a (blocking reader)" a 40 transfer "8 MiB b -> a hashed by a" a "$B4" 9000 source $MB8
bypass "8 MiB a -> b (epoll reader and writer)" a 40 transfer "8 MiB a -> b, non-blocking both ends" a "$B4" 9001 sink $MB8 --nonblock
bypass "8 MiB b -> a (epoll)" a 40 transfer "8 MiB b -> a, non-blocking both ends" a "$B4" 9001 source $MB8 --nonblock
bypass "2,000 ping-pongs" a 40 transfer "2,000 ping-pongs of 64 B, each checked" a "$B4" 9000 pingpong 2000
transfer "2,000 ping-pongs, epoll" a "$B4" 9001 pingpong 2000 --nonblock
bypass "IPv6: 8 MiB a -> b" a 40 transfer "IPv6 8 MiB a -> b" a "$B6" 9000 sink $MB8
transfer "IPv6 8 MiB b -> a" a "$B6" 9000 source $MB8
transfer "IPv4-mapped client socket: 8 MiB a -> b" a "::ffff:$B4" 9000 sink $MB8
transfer "b -> a (the other pod as client)" b "$A4" 9000 source $MB8
check "after every close, the sockhash is empty" wait_sockhash_empty

# --- 3. not enrolled: untouched, and the oracle sees TCP traffic -----------------------------------
LAST_VETH_BYTES=0
read -r p0 b0 < <(veth_tx a); s0=$(tcp_outsegs a)
transfer "8 MiB a -> c (c not enrolled) hashed by c" a "$C4" 9000 sink $MB8
read -r p1 b1 < <(veth_tx a); s1=$(tcp_outsegs a)
log "a -> c: veth packets +$((p1 - p0)) bytes +$((b1 - b0)); TCP OutSegs +$((s1 - s0))"
check "the oracle sees the non-enrolled transfer on the wire (>= 8 MiB on a's veth)" test $((b1 - b0)) -ge $MB8
transfer "8 MiB c -> a (client not enrolled)" c "$A4" 9000 source $MB8
pod_exec a $TOOL client "$C4" 9000 hold 5 >"$TMP/hold-c.out" 2>&1 &
HOLD=$!
for _ in $(seq 50); do grep -q held "$TMP/hold-c.out" && break; sleep 0.1; done
# The held connection sent its request line through TCP (no peer in the sockhash): at its ACK it
# leaves the sockhash.
check "a connection to a pod that is not enrolled leaves the sockhash after its first ACK" wait_sockhash_empty
kill "$HOLD" 2>/dev/null; wait "$HOLD" 2>/dev/null || true

# --- 4. endings: half-close (above, sink), RST, either side first, pod deletion -------------------
# Known kernel behaviour, not fixed here (docs/sockmap.md, "Blocking readers"): tcp_bpf's recvmsg
# answers EAGAIN, not ECONNRESET, to a blocking recv() that a peer's RST wakes with no data. Logged
# as KNOWN when it happens (an EOF or reset still passes); any other outcome fails.
if out=$(pod_exec a $TOOL client "$B4" 9000 rst 0 2>&1) && [[ $out == ok* ]]; then
    ok "server aborts with RST, blocking client ($out)"
elif [[ $out == *"blocking recv() returned EAGAIN"* ]]; then
    log "KNOWN - server aborts with RST: the blocking client's recv() returned EAGAIN instead of ECONNRESET (tcp_bpf)"
else
    not_ok "server aborts with RST, blocking client: $out"
fi
transfer "server aborts with RST, epoll client" a "$B4" 9001 rst 0 --nonblock
check "after RSTs the sockhash is empty" wait_sockhash_empty
pod_create d; D4=$POD_IP4
serve d 9000
for _ in $(seq 50); do grep -q "listening on 9000" "$TMP/server-d.log" 2>/dev/null && break; sleep 0.1; done
pod_exec a $TOOL client "$D4" 9000 hold 30 >"$TMP/hold-d.out" 2>&1 &
HOLD=$!
for _ in $(seq 50); do grep -q held "$TMP/hold-d.out" && break; sleep 0.1; done
check "held connection to pod d: 2 sockets in the sockhash" test "$(sockhash_count)" = 2
# Pod deletion as a runtime does it: kill the pod's processes, CNI DEL, remove its netns.
echo 1 >"$(pod_cgroup d)/ctr/cgroup.kill"
cni_chain DEL d >>"$TMP/check.log" 2>&1
ip netns del "$RUN-d"
wait "$HOLD" 2>/dev/null || true
check "the client saw the connection end when pod d was deleted" grep -q "ok hold" "$TMP/hold-d.out"
check "pod d deleted: the sockhash is empty" wait_sockhash_empty

# --- 5. counters and the off switch -----------------------------------------------------------------
admin_get /metrics >"$TMP/metrics"
metric() { awk -v m="$1" '$1 == m {print $2}' "$TMP/metrics"; }
check "kmesh_sockmap_enabled is 1" test "$(metric kmesh_sockmap_enabled)" = 1
check "redirected bytes counted (>= 7 x 8 MiB)" test "$(metric kmesh_sockmap_redirected_bytes_total)" -ge $((7 * MB8))
check "accelerated and passed sockets counted" test "$(metric kmesh_sockmap_accelerated_total)" -gt 0 -a "$(metric kmesh_sockmap_passed_total)" -gt 0
check "released sockets counted" test "$(metric kmesh_sockmap_released_total)" -gt 0
check "/metrics passes promtool" sh -c "promtool check metrics <'$TMP/metrics'"
kmeshctl dump >"$TMP/dump" 2>&1
check "kmeshctl dump shows the sockmap counters" grep -q "sockmap counters: sockets_in_map=0" "$TMP/dump"

agent_stop
AGENT_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256 --sockmap off"
agent_start "$TMP/mesh.yaml"
wait_log "config generation 1 applied" 2
pod_exec a $TOOL client "$B4" 9000 hold 3 >"$TMP/hold-off.out" 2>&1 &
HOLD=$!
for _ in $(seq 50); do grep -q held "$TMP/hold-off.out" && break; sleep 0.1; done
check "--sockmap=off: an enrolled -> enrolled connection is not in the sockhash" test "$(sockhash_count)" = 0
kill "$HOLD" 2>/dev/null; wait "$HOLD" 2>/dev/null || true
bypass "--sockmap=off: 8 MiB a -> b (no packet limit)" a 100000 transfer "--sockmap=off: 8 MiB a -> b intact" a "$B4" 9000 sink $MB8
check "--sockmap=off: the bytes went through TCP/IP" test "$LAST_VETH_BYTES" -ge $MB8
