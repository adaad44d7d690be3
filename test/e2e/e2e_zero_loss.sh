#!/usr/bin/env bash
# Zero-loss restarts and upgrades under load. A client pod opens a new TCP connection through the
# echo service's VIP (IPv4 and IPv6 in turn) 200 times a second, and every answer names the backend
# that sent it, while the agent is
#   (a) restarted 10 times, SIGTERM and SIGKILL mixed, two of the kills in the middle of a large
#       apply (4,000 services being written; the restarted agent recovers from the half-written
#       maps and finishes),
#   (b) replaced by kmesh-daemon-variant, whose BPF programs differ (other instructions, new
#       tags): the pod links are moved in place (bpftool shows the new tags on the pods' cgroups),
#   (c) moved to a new map layout version (--maps-version): killed half-way through filling the new
#       maps, restarted with a config it rejects (pods must stay on the old programs and maps),
#       then given the config: fill, then publish.
# The test counts every connect: it fails on any failed connect, any answer from a pod that is not
# a backend of the service (a decoy pod backs the 4,000 other services), and any agent-down window
# without traffic through it. Also checked: --version, /version, kmesh_build_info and
# `kmeshctl version` against sha256sum of the BPF objects and bpftool's tags.
# Usage: e2e_zero_loss.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

RATE=200
NSVC=4000
MESH=$TMP/mesh.yaml
EVENTS=$TMP/events
ADMIN_PORT=$(free_port)
# Room for NSVC services of 2 workloads each, twice over (a swap of two large configs).
AGENT_FLAGS="--max-services 16384 --max-endpoints 65536 --max-backends 16384 --max-frontends 16384 --log-level info"
now_ms() { date +%s%3N; }
event() { echo "$(now_ms) $*" >>"$EVENTS"; }

# The agent under test: <binary> [flags...], in the background (wait_ready waits for it).
start_agent() {
    local bin=$1; shift
    event "up $bin $*"
    "$BUILD/agent/$bin" --bpffs-root "$BPFFS" --config "$MESH" --admin-port "$ADMIN_PORT" --metrics-port 0 $AGENT_FLAGS "$@" \
        >>"$TMP/agent.log" 2>&1 &
    AGENT_PID=$!
    AGENT_STARTS=$((${AGENT_STARTS:-0} + 1))
}
wait_ready() { wait_log "kmesh-daemon ready" "$AGENT_STARTS"; }
stop_agent() { # <TERM|KILL>
    kill -"$1" "$AGENT_PID"
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=
    event "down $1"
}
restart() { # <TERM|KILL> [binary] [flags...]
    local sig=$1; shift
    stop_agent "$sig"
    sleep 0.$((RANDOM % 3 + 2))  # 0.2-0.4 s without an agent
    start_agent "${@:-kmesh-daemon}"
    wait_ready
}
# Kills the running agent once K map writes of the apply of config <name> are done; the agent is
# then down. Fails the check (returns 1) if the apply ended first.
kill_during_apply() { # <config> <K>
    local out=$TMP/killer.$1.log
    python3 "$E2E_DIR/kill_mid_apply.py" --admin "127.0.0.1:$ADMIN_PORT" --pid "$AGENT_PID" --writes "$2" \
        --base-from-agent >"$out" 2>&1 &
    local killer=$!
    for _ in $(seq 100); do grep -q armed "$out" && break; sleep 0.05; done
    use_config "$1"
    wait "$killer"
    local rc=$?
    cat "$out"
    kill -KILL "$AGENT_PID" 2>/dev/null  # when the kill missed: the sequence goes on, the check fails
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=
    event "down KILL-mid-apply"
    return $rc
}
connect4_tag() { # <pod>: the tag of the connect4 program attached to the pod's cgroup (bpftool)
    local id
    id=$(bpftool -j cgroup show "$(pod_cgroup "$1")" | python3 -c 'import json,sys
print([p["id"] for p in json.load(sys.stdin) if p.get("attach_type") == "cgroup_inet4_connect"][0])')
    bpftool -j prog show id "$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tag"])'
}
version_field() { # <python expression on the /version document d>
    admin_get /version | python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"
}
loaded_tag() { version_field '[p["tag"] for p in d["programs"]["loaded"] if p["name"] == "cgroup_connect4"][0]'; }
recovered() { # <n>: "services frontends" recovered by the n-th start (from its log line)
    grep -E "recovered [0-9]+ services" "$TMP/agent.log" | sed -n "${1}p" | sed -E 's/.*recovered ([0-9]+) services, [0-9]+ backends, ([0-9]+) frontends.*/\1 \2/'
}


# The agent first (kmesh-cni enrols pods with its pinned programs), on a placeholder config.
replace_file "$MESH" "$(echo_one_backend 10.244.0.250)"
start_agent kmesh-daemon
wait_ready
pod_create client
pod_create b1
B1=("$POD_IP4" "$POD_IP6")
pod_create b2
B2=("$POD_IP4" "$POD_IP6")
pod_create decoy
DECOY=("$POD_IP4" "$POD_IP6")
for pod in b1 b2 decoy; do
    # The servers close first: their TIME_WAIT sockets would otherwise pile up over the run.
    ip netns exec "$RUN-$pod" sysctl -qw net.ipv4.tcp_max_tw_buckets=0
    pod_serve "$pod" "$pod" 8080
done

# small: the echo service (b1, b2) and a decoy service; big A/B: the same plus NSVC services each
# backed by the decoy pod and one workload with no pod behind it (A and B name theirs apart, so a
# swap from A to B removes NSVC services and adds NSVC others).
gen_config() { # <small|A|B>
    python3 - "$1" "$NSVC" "${B1[@]}" "${B2[@]}" "${DECOY[@]}" <<'PY'
import sys
kind, n, b1v4, b1v6, b2v4, b2v6, dv4, dv6 = sys.argv[1], int(sys.argv[2]), *sys.argv[3:9]
echo = "default/echo.default.svc.cluster.local"
out = ["services:",
       '- {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, '
       'addresses: ["10.96.0.10", "fd00:96::10"], ports: [{service_port: 80, target_port: 8080}]}',
       '- {name: decoy, namespace: default, hostname: decoy.default.svc.cluster.local, '
       'addresses: ["10.96.0.20"], ports: [{service_port: 80, target_port: 8080}]}']
names = []
if kind != "small":
    second = 1 if kind == "A" else 2
    for i in range(n):
        name = "s%s%d" % (kind.lower(), i)
        names.append("default/%s.default.svc.cluster.local" % name)
        out.append('- {name: %s, namespace: default, hostname: %s.default.svc.cluster.local, '
                   'addresses: ["10.%d.%d.%d"], ports: [{service_port: 80, target_port: 8080}]}'
                   % (name, name, 100 + second, i // 250, i % 250 + 1))
out.append("workloads:")
for wl, v4, v6 in (("b1", b1v4, b1v6), ("b2", b2v4, b2v6)):
    out.append('- {uid: Kubernetes//Pod/default/%s, name: %s, namespace: default, addresses: ["%s", "%s"], '
               'services: {%s: }}' % (wl, wl, v4, v6, echo))
svcs = ", ".join(["default/decoy.default.svc.cluster.local: "] + ["%s: " % s for s in names])
out.append('- {uid: Kubernetes//Pod/default/decoy, name: decoy, namespace: default, addresses: ["%s", "%s"], '
           'services: {%s}}' % (dv4, dv6, svcs))
for i, s in enumerate(names):
    # No pod has these addresses (outside the pod subnet): a connect sent there fails fast.
    out.append('- {uid: Kubernetes//Pod/default/w-%s, name: w-%s, namespace: default, '
               'addresses: ["10.%d.%d.%d"], services: {%s: }}'
               % (s.split("/")[1].split(".")[0], s.split("/")[1].split(".")[0],
                  240 + (1 if kind == "A" else 2), i // 250, i % 250 + 1, s))
print("\n".join(out))
PY
}
gen_config small >"$TMP/small.yaml"
gen_config A >"$TMP/A.yaml"
gen_config B >"$TMP/B.yaml"
use_config() { cp "$TMP/$1.yaml" "$MESH.tmp" && mv "$MESH.tmp" "$MESH"; }

SHA_MAIN=$(sha256sum "$BUILD/bpf/kmesh_sock.bpf.o" | cut -d' ' -f1)
SHA_VARIANT=$(sha256sum "$BUILD/bpf/variant/kmesh_sock.bpf.o" | cut -d' ' -f1)
check "the two builds' BPF objects differ" test "$SHA_MAIN" != "$SHA_VARIANT"
check "kmesh-daemon --version names its programs (sha256sum of kmesh_sock.bpf.o) and map layout" \
    eval '"$BUILD/agent/kmesh-daemon" --version | grep -q "sha256:$SHA_MAIN" && "$BUILD/agent/kmesh-daemon" --version | grep -q "map layout: v[0-9]"'
check "kmesh-daemon-variant --version names the variant object" \
    eval '"$BUILD/agent/kmesh-daemon-variant" --version | grep -q "sha256:$SHA_VARIANT"'

use_config small
wait_log "config generation 2 applied" 1
# The client runs in the client pod's netns and cgroup; nsenter and sh exec into it (one pid).
pod_exec client python3 "$E2E_DIR/steady_client.py" --rate "$RATE" --port 80 10.96.0.10 fd00:96::10 \
    >"$TMP/client.out" 2>"$TMP/client.err" &
CLIENT=$!
PIDS+=($CLIENT)
event "phase a"
sleep 1

# (a) 10 restarts.
MAIN_TAG=$(connect4_tag client)
restart TERM                                    # 1
restart KILL                                    # 2
check "restart 3: SIGKILL during the apply of $NSVC new services" kill_during_apply A 12000   # 3
sleep 0.2
start_agent kmesh-daemon
wait_ready
read -r svc fe < <(recovered "$AGENT_STARTS")
check "the killed apply was half-way: $svc services and $fe frontends recovered (of $((NSVC + 2)))" \
    test "$fe" -lt "$((NSVC + 3))" -a "$fe" -ge 3
check "the restarted agent finished it" wait_log "applied: $((NSVC + 2)) services" 1
restart TERM                                    # 4
check "restart 4 found nothing to rewrite" eval 'grep "applied:" "$TMP/agent.log" | tail -1 | grep -q "; 0 map changes"'
check "restart 5: SIGKILL while swapping $NSVC services for $NSVC others" kill_during_apply B 15000   # 5
sleep 0.3
start_agent kmesh-daemon
wait_ready
read -r svc fe < <(recovered "$AGENT_STARTS")
check "the swap was half-way: $svc services recovered (between $((NSVC + 2)) and $((2 * NSVC + 2)))" \
    test "$svc" -gt "$((NSVC + 2))" -a "$svc" -le "$((2 * NSVC + 2))"
check "the restarted agent finished it: $((NSVC + 2)) services" \
    eval 'grep "applied:" "$TMP/agent.log" | tail -1 | grep -q "applied: $((NSVC + 2)) services"'
restart KILL                                    # 6
restart TERM                                    # 7
restart KILL                                    # 8
restart TERM                                    # 9
restart KILL                                    # 10
check "10 restarts done, each logged ready" test "$(grep -c "kmesh-daemon ready" "$TMP/agent.log")" = 11

# (b) programs that differ.
event "phase b"
restart TERM kmesh-daemon-variant
VARIANT_TAG=$(connect4_tag client)
check "bpftool: the client pod's connect4 link now runs a program with another tag ($MAIN_TAG -> $VARIANT_TAG)" \
    test -n "$VARIANT_TAG" -a "$VARIANT_TAG" != "$MAIN_TAG"
check "and so do the backends' ($(connect4_tag b1))" test "$(connect4_tag b1)" = "$VARIANT_TAG"
check "/version reports that tag for cgroup_connect4" test "$(loaded_tag)" = "$VARIANT_TAG"
check "/version reports the variant object's sha256" test "$(version_field 'd["programs"]["sha256"]')" = "$SHA_VARIANT"
check "/version: every pod link (4 pods) runs the loaded programs" \
    test "$(version_field 'd["pod_links"]["total"] >= 4 and d["pod_links"]["on_loaded_programs"] == d["pod_links"]["total"]')" = True
check "kmesh_build_info names the programs and the layout" \
    eval 'grep -q "^kmesh_build_info{version=\"[^\"]*\",abi=\"[0-9]*\",maps_version=\"[0-9]*\",programs=\"${SHA_VARIANT:0:12}\"} 1$" <<<"$(admin_get /metrics)"'
OLD_MAPS=$(version_field 'd["maps"]["dir"]')

# (c) a new map layout: fill, then publish.
event "phase c"
stop_agent TERM
start_agent kmesh-daemon --maps-version 99
check "restart 12: SIGKILL while filling the new layout's maps" \
    python3 "$E2E_DIR/kill_mid_apply.py" --admin "127.0.0.1:$ADMIN_PORT" --pid "$AGENT_PID" --writes 12000
wait "$AGENT_PID" 2>/dev/null || true
event "down KILL-mid-fill"
AGENT_PID=
AGENT_STARTS=$((AGENT_STARTS - 1))  # it never got to log "started" or "ready"
check "the pods still run the variant's programs" test "$(connect4_tag client)" = "$VARIANT_TAG"
replace_file "$MESH" "services: [{name: echo, bogus: 1}]"
start_agent kmesh-daemon --maps-version 99
wait_log "kmesh-daemon started" "$AGENT_STARTS"
check "restart 13 with a rejected config: it reuses the half-filled maps" grep -q "reused pinned maps under $BPFFS/kmesh/maps/v99" "$TMP/agent.log"
check "and holds the pods on the previous programs (which read other maps)" \
    eval 'grep "programs sha256" "$TMP/agent.log" | tail -1 | grep -q "pods run programs reading other maps"'
sleep 1
check "the pods still run the variant's programs" test "$(connect4_tag client)" = "$VARIANT_TAG"
check "/ready answers 503" test "$(admin_status /ready)" = 503
check "the previous maps are still pinned" test -d "$OLD_MAPS"
use_config B
wait_ready
check "once the config is in the new maps the pods are moved" test "$(connect4_tag client)" = "$MAIN_TAG"
check "/version: maps v99 in use, every pod link on the loaded programs" \
    test "$(version_field 'd["maps"]["version"] == 99 and d["pod_links"]["total"] >= 4 and d["pod_links"]["on_loaded_programs"] == d["pod_links"]["total"]')" = True
check "kmesh_build_info says maps_version 99" eval 'grep -q "maps_version=\"99\",programs=\"${SHA_MAIN:0:12}\"} 1$" <<<"$(admin_get /metrics)"'
check "the previous maps are gone" test ! -e "$OLD_MAPS"
kmeshctl --admin "127.0.0.1:$ADMIN_PORT" version >"$TMP/kmeshctl.version" 2>&1
check "kmeshctl version prints the client's and the agent's programs and layout" \
    eval 'grep -q "client: kmeshctl .*" "$TMP/kmeshctl.version" && grep -q "sha256:$SHA_MAIN" "$TMP/kmeshctl.version" &&
          grep -q "map layout: v99 in use" "$TMP/kmeshctl.version" && grep -q "cgroup_connect4 .*tag $MAIN_TAG" "$TMP/kmeshctl.version"'
cat "$TMP/kmeshctl.version"
sleep 1
event "end"
kill -TERM "$CLIENT"
wait "$CLIENT" 2>/dev/null || true

# The count: every connect, by phase; agent-down windows must have carried traffic.
python3 - "$TMP/client.out" "$EVENTS" "$RATE" >"$TMP/summary" <<'PY'
import sys
lines = [l.split() for l in open(sys.argv[1]) if l.strip()]
events = [l.rstrip("\n").split(" ", 1) for l in open(sys.argv[2])]
rate = float(sys.argv[3])
conns = [(int(t), fam, res, what, float(ms)) for t, fam, res, what, ms in lines]
start = int([t for t, e in events if e == "phase a"][0])
end = int([t for t, e in events if e == "end"][0])
run = [c for c in conns if start <= c[0] < end]
phases = [(int(t), e.split()[1]) for t, e in events if e.startswith("phase")] + [(end, "end")]
allowed = {"b1", "b2"}
def stats(cs):
    fail = [c for c in cs if c[2] != "ok"]
    mis = [c for c in cs if c[2] == "ok" and c[3] not in allowed]
    return fail, mis
fail, mis = stats(run)
secs = (end - start) / 1000
by = {}
for c in run:
    if c[2] == "ok":
        by[c[3]] = by.get(c[3], 0) + 1
print("connects %d in %.1f s (%.0f/s offered %d/s): failed %d, misrouted %d; answers %s; v4 %d v6 %d; "
      "slowest %.1f ms" % (len(run), secs, len(run) / secs, rate, len(fail), len(mis),
                          " ".join("%s=%d" % kv for kv in sorted(by.items())),
                          sum(1 for c in run if c[1] == "v4"), sum(1 for c in run if c[1] == "v6"),
                          max(c[4] for c in run)))
for (t0, name), (t1, _) in zip(phases, phases[1:]):
    cs = [c for c in run if t0 <= c[0] < t1]
    f, m = stats(cs)
    print("phase %s: %d connects in %.1f s, failed %d, misrouted %d" % (name, len(cs), (t1 - t0) / 1000, len(f), len(m)))
# Windows with no agent: from each "down" to the next "up".
windows, down = [], None
for t, e in events:
    if e.startswith("down"):
        down = int(t)
    elif e.startswith("up") and down is not None:
        windows.append((down, int(t)))
        down = None
empty = 0
during = 0
for a, b in windows:
    n = sum(1 for c in run if a <= c[0] < b)
    during += n
    empty += n == 0
print("agent-down windows %d (%.1f s in all): %d connects made while no agent ran, %d windows without any"
      % (len(windows), sum(b - a for a, b in windows) / 1000, during, empty))
for c in (fail + mis)[:20]:
    print("  bad: %s" % " ".join(map(str, c)))
print("RESULT failed=%d misrouted=%d empty_windows=%d total=%d" % (len(fail), len(mis), empty, len(run)))
PY
cat "$TMP/summary"
result=$(grep ^RESULT "$TMP/summary")
check "zero failed connects" grep -q "failed=0 " <<<"$result"
check "zero misrouted connects (every answer from b1 or b2)" grep -q "misrouted=0 " <<<"$result"
check "traffic went through every agent-down window" grep -q "empty_windows=0 " <<<"$result"
check "the client kept its rate (>= $((RATE / 2))/s over the run)" \
    python3 -c 'import re,sys; m=re.search(r"connects (\d+) in ([\d.]+) s", open(sys.argv[1]).read()); sys.exit(int(m[1])/float(m[2]) < float(sys.argv[2])/2)' "$TMP/summary" "$RATE"
check "both backends answered" eval 'grep -q "b1=[1-9]" "$TMP/summary" && grep -q "b2=[1-9]" "$TMP/summary"'
