#!/bin/bash
# Real-kernel test of kmesh-cni: pins the connect4/6 programs in a private bpffs the way the agent
# does, then runs ADD / CHECK / ADD again / DEL against a temporary cgroup v2 pod cgroup and checks
# the attachments with bpftool. Needs root. Usage: cni_attach_test.sh <build-dir>
set -euo pipefail

BUILD=$(realpath "${1:?usage: $0 <build-dir>}")
CNI=$BUILD/cni/kmesh-cni
OBJ=$BUILD/bpf/kmesh_sock.bpf.o
BPFTOOL=${BPFTOOL:-$(command -v bpftool || echo /usr/sbin/bpftool)}
[[ -x $CNI && -f $OBJ ]] || { echo "missing $CNI or $OBJ" >&2; exit 1; }

CG2=$(awk '$0 ~ / - cgroup2 / { print $5; exit }' /proc/self/mountinfo)
[[ -n $CG2 ]] || { echo "no cgroup v2 mount" >&2; exit 1; }

TMP=$(mktemp -d /tmp/kmesh-cni-e2e.XXXXXX)
BPFFS=$TMP/bpffs
CGROOT=$CG2/kmesh-cni-e2e-$$
POD_UID=0b5c1c0e-6d1a-4b8e-9a53-$(printf '%012d' $$)
POD_CG=$CGROOT/kubepods/besteffort/pod$POD_UID
CID=e2e$$
PODDIR=$BPFFS/kmesh/pods/$CID

cleanup() {
    local rc=$?
    set +e
    # Unmounting the private bpffs drops every pin (programs and links) with it.
    mountpoint -q "$BPFFS" && umount "$BPFFS"
    [[ -d $CGROOT ]] && find "$CGROOT" -depth -type d -exec rmdir {} \;
    rm -rf "$TMP"
    if ((rc == 0)); then echo "PASS cni_attach_test"; else echo "FAIL cni_attach_test (rc=$rc)" >&2; fi
    exit $rc
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    echo "--- kmesh-cni log:" >&2
    cat "$TMP/cni.log" >&2 || true
    exit 1
}

mkdir -p "$BPFFS"
mount -t bpf bpf "$BPFFS"
mkdir -p "$BPFFS/kmesh"
# loadall pins each program under its function name: exactly <bpffs>/kmesh/progs/cgroup_connect{4,6}.
"$BPFTOOL" prog loadall "$OBJ" "$BPFFS/kmesh/progs"
[[ -e $BPFFS/kmesh/progs/cgroup_connect4 && -e $BPFFS/kmesh/progs/cgroup_connect6 ]] ||
    fail "programs not pinned as expected: $(ls "$BPFFS/kmesh/progs")"
mkdir -p "$POD_CG"

PREV='{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.9.0.2/24","interface":0}]}'
config() { # <bpffs-root> <with-prevResult>
    local c='{"cniVersion":"1.0.0","name":"e2e","type":"kmesh-cni","bpffsRoot":"'$1'","cgroupRoot":"'$CGROOT'"'
    c+=',"logFile":"'$TMP/cni.log'","kubeConfig":"/nonexistent"'
    [[ $2 == yes ]] && c+=',"prevResult":'$PREV
    echo "$c}"
}
cni() { # <command> [bpffs-root] [with-prevResult] [netns]; stdout = plugin output, rc = plugin rc
    config "${2:-$BPFFS}" "${3:-yes}" | CNI_COMMAND=$1 CNI_CONTAINERID=$CID CNI_NETNS=${4-/var/run/netns/e2e} \
        CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=e2e;K8S_POD_UID=$POD_UID" "$CNI"
}
attached() { "$BPFTOOL" cgroup show "$POD_CG"; }
link_ids() { "$BPFTOOL" -j link show | grep -o '"id":[0-9]*' | sort; }

# Agent not running: try again later, nothing created.
out=$(cni ADD "$TMP/no-agent") && fail "ADD without agent succeeded"
grep -q '"code":11' <<<"$out" || fail "ADD without agent: $out"
grep -q 'kmesh agent not running' <<<"$out" || fail "ADD without agent: $out"
[[ ! -e $PODDIR ]] || fail "ADD without agent left $PODDIR"

# ADD attaches both programs to the pod cgroup (found from K8S_POD_UID) and prints prevResult.
out=$(cni ADD) || fail "ADD: $out"
[[ $out == "$PREV" ]] || fail "ADD output '$out' != prevResult"
shown=$(attached)
grep -Eq 'cgroup_inet4_connect .*cgroup_connect4' <<<"$shown" || fail "connect4 not attached: $shown"
grep -Eq 'cgroup_inet6_connect .*cgroup_connect6' <<<"$shown" || fail "connect6 not attached: $shown"
[[ -e $PODDIR/cgroup_connect4 && -e $PODDIR/cgroup_connect6 ]] || fail "links not pinned in $PODDIR"

out=$(cni CHECK) || fail "CHECK after ADD: $out"
[[ -z $out ]] || fail "CHECK printed '$out'"

# A repeated ADD keeps the same links.
before=$(link_ids)
out=$(cni ADD) || fail "second ADD: $out"
[[ $(link_ids) == "$before" ]] || fail "second ADD replaced links"
[[ $(attached | grep -c cgroup_connect) == 2 ]] || fail "second ADD attached twice: $(attached)"

# Agent restart (new programs pinned): CHECK notices, ADD swaps the links, old ones detach.
rm -r "$BPFFS/kmesh/progs"
"$BPFTOOL" prog loadall "$OBJ" "$BPFFS/kmesh/progs"
out=$(cni CHECK) && fail "CHECK with stale links succeeded"
grep -q '"code":102' <<<"$out" || fail "CHECK with stale links: $out"
out=$(cni ADD) || fail "ADD after agent restart: $out"
out=$(cni CHECK) || fail "CHECK after re-ADD: $out"
[[ $(attached | grep -c cgroup_connect) == 2 ]] || fail "stale links still attached: $(attached)"

# DEL detaches; containerd's second DEL (no netns, no prevResult) and a DEL without agent succeed.
out=$(cni DEL) || fail "DEL: $out"
[[ -z $out ]] || fail "DEL printed '$out'"
[[ ! -e $PODDIR ]] || fail "DEL left $PODDIR"
shown=$(attached)
! grep -q cgroup_connect <<<"$shown" || fail "programs still attached after DEL: $shown"
out=$(cni DEL "$BPFFS" no "") || fail "second DEL: $out"
out=$(cni DEL "$TMP/no-agent" no "") || fail "DEL without agent: $out"

out=$(cni CHECK) && fail "CHECK after DEL succeeded"
grep -q '"code":102' <<<"$out" || fail "CHECK after DEL: $out"
