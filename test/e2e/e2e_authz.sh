#!/usr/bin/env bash
# L4 authorization in the kernel, end to end (issue 9 part 1): pods enrolled through kmesh-cni get
# sk_lookup_authz on their network namespace; the agent (standalone, config file) compiles the
# file's policies into the maps. Real connects from an enrolled and an unenrolled client pod, IPv4,
# IPv6 and IPv4-mapped (dual-stack socket): allowed ones connect, denied ones fail with
# ECONNREFUSED in under a second. Replays every case of test/authz/decision_table.json (hand
# written from Istio's semantics, dry-run cases included). Then close-on-change: a DENY added while
# connections are open closes them (the client sees a reset or EOF) and refuses new ones.
# Usage: e2e_authz.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"
TABLE=$E2E_DIR/../authz/decision_table.json

MESH=$TMP/mesh.yaml
replace_file "$MESH" '{"workloads": [], "policies": []}'
agent_start "$MESH"
wait_log "config generation 1 applied" 1

# The table's addresses, added to the pods' eth0 (host-local hands out .2 and up; the table uses
# .10 and above): servers in enrolled pods, sources in an enrolled client and an unenrolled pod.
add_addrs() { # <pod> <last octets...>
    local pod=$1 o
    shift
    for o in "$@"; do
        ip -n "$RUN-$pod" addr add "10.244.0.$o/24" dev eth0
        ip -n "$RUN-$pod" addr add "fd00:10:244::$o/64" dev eth0 nodad
    done
}
pod_create srv && add_addrs srv 10
pod_create srv2 && add_addrs srv2 11
pod_create cli && add_addrs cli 21 22 23
pod_create outside plain && add_addrs outside 99
check "kmesh-cni attached sk_lookup_authz to the enrolled pods' netns" \
    test -e "$BPFFS/kmesh/pods/$RUN-srv/sk_lookup_authz" -a -e "$BPFFS/kmesh/pods/$RUN-cli/sk_lookup_authz"
check "and not to the unenrolled pod" test ! -e "$BPFFS/kmesh/pods/$RUN-outside"

# Servers: dual-stack listeners on 8080 and 9090 that keep every connection open until the peer
# closes it (close-on-change needs a connection that stays up).
SERVER='
import socket, threading
def hold(c):
    try:
        while c.recv(4096): pass
    except OSError: pass
def serve(port):
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(("::", port)); s.listen(512)
    while True:
        c, _ = s.accept(); threading.Thread(target=hold, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(8080,), daemon=True).start()
serve(9090)'
for pod in srv srv2; do
    pod_exec "$pod" python3 -c "$SERVER" &
    PIDS+=($!)
done
sleep 0.5

NETNS_OF=$(printf '{"10.244.0.21":"%s","10.244.0.22":"%s","10.244.0.23":"%s","10.244.0.99":"%s",' \
    "$RUN-cli" "$RUN-cli" "$RUN-cli" "$RUN-outside")
NETNS_OF+=$(printf '"fd00:10:244::21":"%s","fd00:10:244::22":"%s","fd00:10:244::23":"%s","fd00:10:244::99":"%s"}' \
    "$RUN-cli" "$RUN-cli" "$RUN-cli" "$RUN-outside")
out=$(python3 "$E2E_DIR/authz_replay.py" "$TABLE" "$MESH" "$TMP/agent.log" 1 "$NETNS_OF" 2>&1) || true
echo "$out" >>"$TMP/check.log"
grep '^FAIL' <<<"$out" | head -20 || true
check "decision table replayed through the kernel: $(grep replayed <<<"$out")" grep -q ': 0 mismatches' <<<"$out"
GEN=$(awk '/^generation/ { print $2 }' <<<"$out")
GEN=${GEN:-1}

# --- close-on-change: connections open before a DENY are closed once it is applied.
apply_policies() { # <policies JSON list>: the table's workloads with these policies, as a new generation
    GEN=$((GEN + 1))
    replace_file "$MESH" "$(python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))
marker = {"uid": "Kubernetes//Pod/e2e/marker", "name": "marker", "namespace": "e2e", "addresses": ["10.246.0.%d" % (int(sys.argv[3]) % 250 + 1)]}
print(json.dumps({"workloads": t["workloads"] + [marker], "policies": json.loads(sys.argv[2])}))' "$TABLE" "$1" "$GEN")"
    wait_log "config generation $GEN applied" 1
}
apply_policies '[]' 
HOLD='
import socket, sys, time
conns = []
for src, dst, port in [("10.244.0.21", "10.244.0.10", 8080), ("fd00:10:244::21", "fd00:10:244::10", 9090),
                       ("::ffff:10.244.0.21", "::ffff:10.244.0.10", 9090), ("10.244.0.23", "10.244.0.10", 8080)]:
    s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    s.bind((src, 0)); s.connect((dst, port)); conns.append((src, s))
open(sys.argv[1], "w").write("connected\n")
t0 = time.monotonic()
for src, s in conns:
    s.settimeout(max(0.1, 6 - (time.monotonic() - t0)))
    try:
        r = "eof" if s.recv(1) == b"" else "data"
    except ConnectionResetError:
        r = "reset"
    except socket.timeout:
        r = "open"
    print(src, r, flush=True)
'
pod_exec cli python3 -c "$HOLD" "$TMP/held" >"$TMP/hold.out" 2>&1 &
HOLD_PID=$!
PIDS+=($HOLD_PID)
for _ in $(seq 50); do [[ -s $TMP/held ]] && break; sleep 0.1; done
check "connections from sleep (v4, v6, IPv4-mapped) and api are open before the policy" test -s "$TMP/held"
DENY_SLEEP='{"name": "deny-sleep", "namespace": "default", "scope": "NAMESPACE", "action": "DENY",
  "rules": [{"clauses": [{"matches": [{"principals": [{"exact": "cluster.local/ns/default/sa/sleep"}]}]}]}]}'
apply_policies "[$DENY_SLEEP]"
wait "$HOLD_PID" || true
log "held connections after the DENY: $(xargs <"$TMP/hold.out")"
check "the DENY closes sleep's IPv4 connection (reset/EOF)" grep -Eq '^10.244.0.21 (reset|eof)$' "$TMP/hold.out"
check "the DENY closes sleep's IPv6 connection" grep -Eq '^fd00:10:244::21 (reset|eof)$' "$TMP/hold.out"
check "the DENY closes sleep's IPv4-mapped connection" grep -Eq '^::ffff:10.244.0.21 (reset|eof)$' "$TMP/hold.out"
check "api's connection (not denied) stays open" grep -Eq '^10.244.0.23 open$' "$TMP/hold.out"
check "the agent logs what it closed" grep -q "authz: closed 10.244.0.21 -> 10.244.0.10:8080" "$TMP/agent.log"
NEW='
import socket, time, errno
s = socket.socket(); s.bind(("10.244.0.21", 0)); t = time.monotonic()
try: s.connect(("10.244.0.10", 8080)); print("connected")
except OSError as e: print(errno.errorcode[e.errno], "%.3f" % (time.monotonic() - t))'
out=$(pod_exec cli python3 -c "$NEW")
check "a new connection from sleep is refused at once: $out" eval '[[ $out == ECONNREFUSED\ 0.* ]]'

# --- kernels without bpf_sock_destroy (< 6.5): the iterator is not loaded; new connections are
# still refused, existing ones are kept until they close.
agent_stop
KMESH_PRETEND_NO_SOCK_DESTROY=1 agent_start "$MESH"
check "the agent says why it cannot close connections" \
    grep -q "KMESH_PRETEND_NO_SOCK_DESTROY is set: connections that a policy change denies are kept until they close" "$TMP/agent.log"
check "and pins no iterator" test ! -e "$BPFFS/kmesh/progs/iter_tcp_authz" -a -e "$BPFFS/kmesh/progs/sk_lookup_authz"
out=$(pod_exec cli python3 -c "$NEW")
check "new connections are still refused: $out" eval '[[ $out == ECONNREFUSED\ 0.* ]]'
