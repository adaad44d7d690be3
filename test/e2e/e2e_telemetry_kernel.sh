#!/usr/bin/env bash
# Connection telemetry from the kernel, end to end (issue 11 section 1, docs/telemetry.md): real
# connections from an enrolled client pod through the echo VIP to an enrolled backend pod, IPv4 and
# IPv6; the agent's /debug/conn_events must show OPEN and CLOSE for both ends (reporter source and
# destination), the VIP as the source's original destination, the backend as its peer, and byte
# counts equal to what the test's client and server wrote (the oracle: the byte counts conn_tool.py
# itself sent; the kernel counts a FIN as one byte, so +1 is allowed). A long-lived connection
# reports its bytes (UPDATE) while open; a SYN refused by an authorization policy is a DENIED
# event; a tiny ring buffer that nobody reads (the agent stopped) drops and counts events while
# every connection still succeeds. Also: the flag's validation, --monitoring=off, and a kernel
# without ring buffers (KMESH_PRETEND_NO_RINGBUF): telemetry off, the mesh works.
# Usage: e2e_telemetry_kernel.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"
TOOL=$E2E_DIR/conn_tool.py
CHECKER=$E2E_DIR/conn_events_check.py
ADMIN_PORT=$(free_port)
BASE_FLAGS="--max-services 64 --max-endpoints 256 --max-backends 256 --max-frontends 256"
AGENT_FLAGS="$BASE_FLAGS --metrics-flush-interval 1"

MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(echo_service "" "")"
agent_start "$MESH"
wait_log "config generation 1 applied" 1
check "the agent says telemetry is on" grep -q "connection telemetry on (byte reports every 1 s)" "$TMP/agent.log"

pod_create client; C4=$POD_IP4 C6=$POD_IP6
pod_create backend; B4=$POD_IP4 B6=$POD_IP6
pod_exec backend python3 "$TOOL" serve 8080 9090 &
PIDS+=($!)
replace_file "$MESH" "$(echo_service "" "$(echo_workload backend "$B4" "$B6")")"
wait_log "config generation 2 applied" 1
sleep 0.3  # the server binds

EVENTS=$TMP/events.json
poll_check() { # <description> <checker args...>: retries for up to ~8 s (events arrive after the close)
    local desc=$1 out=""
    shift
    for _ in $(seq 40); do
        admin_get /debug/conn_events >"$EVENTS" 2>/dev/null || true
        if out=$(python3 "$CHECKER" "$1" "$EVENTS" "${@:2}" 2>&1); then
            ok "$desc: $out"
            return 0
        fi
        sleep 0.2
    done
    not_ok "$desc"
    echo "$out"
}

# --- one connection per family through the VIP: both ends, VIP, backend, bytes.
REQ=3000 RESP=70000
out=$(pod_exec client python3 "$TOOL" once 10.96.0.10 80 $REQ $RESP)
log "IPv4: $out"
read -r status lport sent recv <<<"$out"
check "IPv4 connection through the VIP succeeded" test "$status" = ok
poll_check "IPv4: open and close for both roles, VIP, backend, bytes" pair "$C4" "$lport" "$B4" 8080 10.96.0.10 80 "$sent" "$recv"

out=$(pod_exec client python3 "$TOOL" once fd00:96::10 80 $RESP $REQ)
log "IPv6: $out"
read -r status lport sent recv <<<"$out"
check "IPv6 connection through the VIP succeeded" test "$status" = ok
poll_check "IPv6: open and close for both roles, VIP, backend, bytes" pair "$C6" "$lport" "$B6" 8080 fd00:96::10 80 "$sent" "$recv"

# --- a long-lived connection reports its bytes while open (the iterator, every flush interval).
RELEASE=$TMP/release
pod_exec client python3 "$TOOL" hold 10.96.0.10 80 12345 54321 "$RELEASE" >"$TMP/hold.out" 2>&1 &
HOLD_PID=$!
PIDS+=($HOLD_PID)
for _ in $(seq 50); do grep -q '^ok' "$TMP/hold.out" && break; sleep 0.1; done
read -r status lport sent recv <<<"$(head -1 "$TMP/hold.out")"
check "the long-lived connection exchanged its bytes" test "$status" = ok
poll_check "an open connection reports its bytes in UPDATEs (periodic flush)" update "$lport" "$sent" "$recv"
touch "$RELEASE"
wait "$HOLD_PID" || true
poll_check "after its close, UPDATEs and CLOSE add up to what was written" pair "$C4" "$lport" "$B4" 8080 10.96.0.10 80 "$sent" "$recv"

# --- a SYN refused by an authorization policy: DENIED, reported by the destination.
DENY='policies:
- {name: deny-9090, namespace: default, scope: NAMESPACE, action: DENY, rules: [{clauses: [{matches: [{destination_ports: [9090]}]}]}]}'
replace_file "$MESH" "$(echo_service "" "$(echo_workload backend "$B4" "$B6")")
$DENY"
wait_log "authz: 1 policies published" 1  # a policy-only change makes no new map generation
out=$(pod_exec client python3 "$TOOL" once "$B4" 9090 10 10)
check "the policy refuses the connection to port 9090: '$out'" test "$out" = "error ECONNREFUSED"
poll_check "the refused connection is a DENIED event" denied "$C4" "$B4" 9090
out=$(pod_exec client python3 "$TOOL" once "$B6" 9090 10 10)
check "IPv6 too: '$out'" test "$out" = "error ECONNREFUSED"
poll_check "the refused IPv6 connection is a DENIED event" denied "$C6" "$B6" 9090

metric() { # <name>: its value in the admin /metrics
    admin_get /metrics | awk -v n="$1" '$1 == n { print $2 }'
}
check "kmesh_telemetry_events_total counts the events" test "$(metric kmesh_telemetry_events_total)" -ge 14

# --- a tiny ring buffer nobody reads: events dropped and counted, connections unaffected.
agent_stop
AGENT_FLAGS="$BASE_FLAGS --metrics-flush-interval 1 --telemetry-ringbuf-bytes=4096" agent_start "$MESH"
check "a ring buffer of another size is a new map generation" \
    test "$(bpftool -j map show pinned "$BPFFS/kmesh/maps/current/km_conn_events" | python3 -c 'import json,sys; print(json.load(sys.stdin)["max_entries"])')" = 4096
dropped_before=$(metric kmesh_telemetry_events_dropped_total)
kill -STOP "$AGENT_PID"
out=$(pod_exec client python3 "$TOOL" once 10.96.0.10 80 100 100 200)
kill -CONT "$AGENT_PID"
check "200 connections succeed while the ring buffer is full ($(grep -c '^ok' <<<"$out") ok)" \
    test "$(grep -c '^ok' <<<"$out")" = 200
dropped_after=$(metric kmesh_telemetry_events_dropped_total)
log "events dropped: $dropped_before before the burst, $dropped_after after"
check "the drops are counted (kmesh_telemetry_events_dropped_total $dropped_before -> $dropped_after)" \
    test "$dropped_after" -gt "$((dropped_before + 100))"
# Once read out, the buffer takes events again.
out=$(pod_exec client python3 "$TOOL" once 10.96.0.10 80 $REQ $RESP)
read -r status lport sent recv <<<"$out"
poll_check "after the overflow, new connections are reported again" pair "$C4" "$lport" "$B4" 8080 10.96.0.10 80 "$sent" "$recv"

# --- a ring buffer size the kernel would refuse: a clear error, nothing started.
err=$("$BUILD/agent/kmesh-daemon" --bpffs-root "$BPFFS" --config "$MESH" --telemetry-ringbuf-bytes 5000 2>&1) && rc=0 || rc=$?
check "--telemetry-ringbuf-bytes 5000 is refused: $(head -1 <<<"$err")" \
    eval '[[ $rc != 0 && $err == *"must be a power of two"* ]]'

# --- monitoring off: new connections are not tracked.
agent_stop
AGENT_FLAGS="$BASE_FLAGS --monitoring=off" agent_start "$MESH"
check "the agent says telemetry is off" grep -q "connection telemetry off" "$TMP/agent.log"
out=$(pod_exec client python3 "$TOOL" once 10.96.0.10 80 10 10)
read -r status lport sent recv <<<"$out"
sleep 1.5
admin_get '/debug/conn_events?flush=1' >"$EVENTS"
check "with --monitoring=off the connection works ($status) and is not reported" \
    eval '[[ $status == ok ]] && ! grep -q "\"local_port\":$lport," "$EVENTS"'
check "kmesh_telemetry_enabled is 0" test "$(metric kmesh_telemetry_enabled)" = 0

# --- a kernel without BPF ring buffers: telemetry off with the reason, the mesh unaffected.
agent_stop
KMESH_PRETEND_NO_RINGBUF=1 AGENT_FLAGS="$BASE_FLAGS" agent_start "$MESH"
check "the agent says why telemetry is off" \
    grep -q "connection telemetry off: KMESH_PRETEND_NO_RINGBUF is set" "$TMP/agent.log"
out=$(pod_exec client python3 "$TOOL" once 10.96.0.10 80 10 10)
check "connections through the VIP still work: '$out'" eval '[[ $out == ok* ]]'
check "no events are served" eval '[[ $(admin_get /debug/conn_events) == *"\"events\":[]"* ]]'
