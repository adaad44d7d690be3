#!/usr/bin/env bash
# The CNI installer, end to end with the real binaries against temp conf/bin dirs:
#  - `kmesh-daemon cni install|uninstall` with a .conf and a .conflist primary (odd formatting,
#    unknown fields, unusual modes): uninstall leaves the dir byte for byte as before (diff -r, a
#    sha256 listing and the file modes); failures exit non-zero with the reason;
#  - the daemon with --install-cni: waits for a config, chains it when it appears, re-chains the
#    primary's 20 rewrites in a row within 1 s each (never twice), follows an earlier config, and
#    does not rewrite its own output; the chained conflist runs for real (bridge + host-local +
#    kmesh-cni through cni_runtime.py, a libcni-style runner) and attaches the pod;
#  - an agent restart leaves everything installed; in a (fake) cluster the kubeconfig is written
#    0600, referenced by the entry, and rewritten when the projected token's ..data symlink swaps.
source "$(dirname "$0")/lib.sh"
e2e_init "$1"

CONF=$TMP/net.d
BIN=$TMP/cni-bin
SA=$TMP/serviceaccount
mkdir -p "$CONF" "$BIN"
DAEMON=$BUILD/agent/kmesh-daemon
CNI_FLAGS=(--cni-conf-dir "$CONF" --cni-bin-dir "$BIN" --cni-binary "$BUILD/cni/kmesh-cni"
    --service-account-dir "$SA" --cni-log-file "$TMP/kmesh-cni.log")

listing() { # <dir>: mode, sha256 and name of every file (dotfiles included)
    (cd "$1" && find . -type f -printf '%m %p\n' | sort && find . -type f -print0 | sort -z | xargs -0 -r sha256sum)
}
plugins() { # <conflist>: its plugin types, comma-separated
    python3 -c 'import json,sys; print(",".join(p["type"] for p in json.load(open(sys.argv[1]))["plugins"]))' "$1"
}
entries() { grep -o '"kmesh-cni"' "$1" 2>/dev/null | wc -l; }
cni() { "$DAEMON" --bpffs-root "$BPFFS" cni "$@" "${CNI_FLAGS[@]}"; }
same_dir() { # <dir> <copy> <listing-file>
    diff -r "$1" "$2" && diff <(listing "$1") "$3"
}
reinstall_changes_nothing() { cni install && diff <(listing "$CONF") "$TMP/listing.installed"; }
uninstall_restores() { cni uninstall && same_dir "$CONF" "$TMP/net.d.before" "$TMP/listing.before"; }
fails_saying() { # <description> <expected text> <command...>: exits non-zero and says it
    local desc=$1 want=$2 out rc
    shift 2
    out=$("$@" 2>&1) && rc=0 || rc=$?
    if ((rc != 0)) && [[ $out == *"$want"* ]]; then ok "$desc"; else not_ok "$desc (rc $rc: $out)"; fi
}
types_are() { [[ $(plugins "$1") == "$2" ]]; }

# ---- One-shot subcommands
printf '{\r\n\t"cniVersion" : "0.3.1","name":"cbr0",   "type":"flannel",\n  "delegate": {"hairpinMode": true, "mtu": 1.50e3}, "x-unknown": ["\\u00e9"]\n}' >"$CONF/10-flannel.conf"
chmod 0640 "$CONF/10-flannel.conf"
printf '{"cniVersion":"0.3.1","name":"lo","type":"loopback"}' >"$CONF/99-loopback.conf"
echo "not a config" >"$CONF/README"
cp -a "$CONF" "$TMP/net.d.before"
listing "$CONF" >"$TMP/listing.before"

check "cni install (.conf primary) exits 0" cni install
check ".conf became 10-flannel.conflist: flannel then kmesh-cni" types_are "$CONF/10-flannel.conflist" flannel,kmesh-cni
check "the .conf is gone (one file for the runtime)" test ! -e "$CONF/10-flannel.conf"
check "the conflist keeps the .conf's mode (640)" test "$(stat -c %a "$CONF/10-flannel.conflist")" = 640
check "the entry as specified (standalone: no kubeConfig; bpffsRoot, logFile, namespaces)" python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["plugins"][-1]
want = {"type": "kmesh-cni", "excludeNamespaces": ["kube-system"], "kmeshNamespace": "kmesh-system",
        "bpffsRoot": sys.argv[2], "logFile": sys.argv[3]}
assert e == want and list(e) == list(want), e' "$CONF/10-flannel.conflist" "$BPFFS" "$TMP/kmesh-cni.log"
check "kmesh-cni copied, mode 755, same bytes" bash -c "[[ \$(stat -c %a $BIN/kmesh-cni) == 755 ]] && cmp $BIN/kmesh-cni $BUILD/cni/kmesh-cni"
check "99-loopback.conf untouched" cmp "$CONF/99-loopback.conf" "$TMP/net.d.before/99-loopback.conf"
listing "$CONF" >"$TMP/listing.installed"
check "a second cni install changes nothing" reinstall_changes_nothing
check "cni uninstall: the conf dir is byte for byte as before (diff -r, sha256, modes)" uninstall_restores
check "after uninstall the bin dir is empty" test -z "$(ls -A "$BIN")"

rm -rf "$CONF" "$TMP/net.d.before" && mkdir -p "$CONF"
printf '{ "name": "k8s-pod-network", "cniVersion": "1.0.0",\n  "plugins": [\n    { "type": "calico", "ipam": { "type": "calico-ipam" } },\n    {"type":"portmap","snat":true,"capabilities":{"portMappings":true}}\n  ], "vendor": {"n": 10000000000000000001}\n}\n' >"$CONF/10-calico.conflist"
chmod 0600 "$CONF/10-calico.conflist"
cp -a "$CONF" "$TMP/net.d.before"
listing "$CONF" >"$TMP/listing.before"
check "cni install (.conflist primary) exits 0" cni install
check "calico, portmap, then kmesh-cni" types_are "$CONF/10-calico.conflist" calico,portmap,kmesh-cni
check "cni uninstall (.conflist primary): byte for byte as before" uninstall_restores

rm -f "$CONF"/*
fails_saying "cni install without any config fails, naming the dir" "no CNI config to chain into in $CONF" cni install
echo '{"name":"a","cniVersion":"1.0.0","plugins":[{"type":"ptp"}]}' >"$CONF/10-a.conflist"
fails_saying "cni install with no plugin to copy fails, naming it" "$TMP/nope" \
    "$DAEMON" cni install --cni-conf-dir "$CONF" --cni-bin-dir "$BIN" --cni-binary "$TMP/nope"
fails_saying "cni without install|uninstall is refused" "subcommand is required" "$DAEMON" cni
rm -rf "$CONF" "$BIN" && mkdir -p "$CONF" "$BIN"

# ---- The daemon with --install-cni
echo_one_backend 10.244.0.250 >"$TMP/mesh.yaml"
agent_start --config "$TMP/mesh.yaml" --install-cni "${CNI_FLAGS[@]}"
check "no config yet: the agent says it waits, and serves" wait_log "waiting for a CNI config in $CONF" 1
PRIMARY=$CONF/10-kmbr0.conflist
chained_within() { # <file> <ms>: the file has exactly one entry, last, within the time; prints the ms it took
    # Plain bash, no python: python's start-up alone can take a second on a loaded machine.
    local t0 c n
    t0=$(date +%s%N)
    while :; do
        c=$(<"$1") || c=
        n=$(grep -o '"kmesh-cni"' <<<"$c" | wc -l)
        ((n > 1)) && { echo "duplicated entry"; return 1; }
        # Last: no other plugin's "type" after our entry.
        if ((n == 1)) && [[ ${c##*\"kmesh-cni\"} != *'"type"'* ]]; then
            echo $((($(date +%s%N) - t0) / 1000000)); return 0
        fi
        (($(date +%s%N) - t0 > $2 * 1000000)) && { echo "not chained after $2 ms"; return 1; }
        sleep 0.01
    done
}
sleep 2.5  # past the installer's 2 s tick: the wait is logged once, not on every pass
check "the wait is logged once" test "$(grep -c 'waiting for a CNI config' "$TMP/agent.log")" = 1
cp "$TMP/plain.conflist" "$CONF/.new" && mv "$CONF/.new" "$PRIMARY"
ms=$(chained_within "$PRIMARY" 1000) && ok "the primary appearing after the agent is chained ($ms ms)" || not_ok "primary appearing: $ms"

# The primary restarting drops our entry: 20 rewrites in a row, alternately renamed into place and
# written in place (as some CNIs do).
worst=0 bad=0
for i in $(seq 20); do
    if ((i % 2)); then cp "$TMP/plain.conflist" "$CONF/.new" && mv "$CONF/.new" "$PRIMARY"; else cat "$TMP/plain.conflist" >"$PRIMARY"; fi
    if ms=$(chained_within "$PRIMARY" 1000); then ((ms > worst)) && worst=$ms; else bad=$((bad + 1)); log "rewrite $i: $ms"; fi
done
((bad == 0)) && ok "20 rewrites by the primary: the entry is back each time, once (slowest: $worst ms)" || not_ok "$bad of 20 rewrites not re-chained within 1 s"
before=$(stat -c '%i %Y' "$PRIMARY") writes=$(grep -c 'chained into' "$TMP/agent.log")
sleep 3
check "no self-triggered rewrites: the file and the log stay still for 3 s" \
    test "$(stat -c '%i %Y' "$PRIMARY") $(grep -c 'chained into' "$TMP/agent.log")" = "$before $writes"
check "exactly one config file for the runtime" test "$(ls "$CONF"/*.conf* | xargs -n1 basename | xargs)" = "10-kmbr0.conflist"

# A lexicographically earlier config becomes the runtime's choice: chained too; then it goes away.
echo '{"cniVersion":"1.0.0","name":"early","plugins":[{"type":"ptp"}]}' >"$CONF/05-early.conflist"
ms=$(chained_within "$CONF/05-early.conflist" 1000) && ok "an earlier config appearing is chained ($ms ms)" || not_ok "earlier config: $ms"
rm "$CONF/05-early.conflist"

# The chain as a runtime runs it: bridge + host-local + the installed kmesh-cni attach the pod.
CNI_BIN=$BIN:/usr/lib/cni
ln -s "$PRIMARY" "$TMP/installed.conflist"
check "a pod created through the installed conflist" pod_create p1 installed
check "kmesh-cni (chained by the installer) attached the pod's cgroup" test "$(attached_programs p1)" -ge 1
check "CNI DEL through the installed conflist" cni_chain DEL p1
check "the pod is detached" test "$(attached_programs p1)" -eq 0

# Restart: nothing is removed while the agent is down.
cp "$TMP/plain.conflist" "$TMP/primary.bytes"
installed=$(listing "$CONF"; listing "$BIN")
agent_stop
check "agent stopped: the chained config, the saved original and the binary stay" \
    test "$(listing "$CONF"; listing "$BIN")" = "$installed"

# In a (fake) cluster: projected service-account volume as the kubelet makes it.
mkdir -p "$SA/..2026_12_02_1"
echo -n "token-$RUN-one" >"$SA/..2026_12_02_1/token"
echo "-----BEGIN CERTIFICATE-----" >"$SA/..2026_12_02_1/ca.crt"
ln -s ..2026_12_02_1 "$SA/..data"
ln -s ..data/token "$SA/token"
ln -s ..data/ca.crt "$SA/ca.crt"
export KUBERNETES_SERVICE_HOST=fd00:10:96::1 KUBERNETES_SERVICE_PORT=443
agent_start --config "$TMP/mesh.yaml" --install-cni "${CNI_FLAGS[@]}"
KC=$CONF/kmesh-cni-kubeconfig
for _ in $(seq 20); do grep -q "kubeConfig" "$PRIMARY" && break; sleep 0.1; done
check "restarted in a cluster: kubeconfig written with mode 600" test "$(stat -c %a "$KC" 2>/dev/null)" = 600
check "the kubeconfig: bracketed IPv6 server and the token" grep -q "server: \"https://\[fd00:10:96::1\]:443\"" "$KC"
check "the entry points at the kubeconfig, once, last" python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))["plugins"]
assert [x["type"] for x in p].count("kmesh-cni") == 1 and p[-1]["kubeConfig"] == sys.argv[2], p' "$PRIMARY" "$KC"
mkdir -p "$SA/..2026_12_02_2"
echo -n "token-$RUN-two" >"$SA/..2026_12_02_2/token"
cp "$SA/..2026_12_02_1/ca.crt" "$SA/..2026_12_02_2/"
ln -s ..2026_12_02_2 "$SA/..data_tmp" && mv -T "$SA/..data_tmp" "$SA/..data" && rm -rf "$SA/..2026_12_02_1"
t0=$(date +%s%N)
for _ in $(seq 50); do grep -q "token-$RUN-two" "$KC" && break; sleep 0.1; done
check "token rotation rewrites the kubeconfig ($((($(date +%s%N) - t0) / 1000000)) ms), mode still 600" \
    bash -c "grep -q 'token-$RUN-two' $KC && ! grep -q 'token-$RUN-one' $KC && [[ \$(stat -c %a $KC) == 600 ]]"
check "the token never reaches the agent log" bash -c "! grep -q 'token-$RUN' $TMP/agent.log"
agent_stop
check "stopped again: still installed (entry, kubeconfig, binary)" \
    bash -c "[[ -f $KC && -x $BIN/kmesh-cni ]] && grep -q kmesh-cni $PRIMARY"

check "cni uninstall after the daemon" cni uninstall
check "the primary's last bytes are back" cmp "$PRIMARY" "$TMP/primary.bytes"
check "nothing else is left in the conf and bin dirs" test "$(ls -A "$CONF" | xargs)/$(ls -A "$BIN")" = "10-kmbr0.conflist/"
