#!/bin/bash
# Real-kernel test of kmesh-cni: pins the connect4/6 programs in a private bpffs the way the agent
# does, then runs ADD / CHECK / ADD again / DEL against a temporary cgroup v2 pod cgroup and checks
# the attachments with bpftool; then the same lifecycle for a container id containing dots (bpffs
# refuses dots in names, kmesh-cni encodes them). Needs root. Usage: cni_attach_test.sh <build-dir>
set -euo pipefail

BUILD=$(realpath "${1:?usage: $0 <build-dir>}")
CNI=$BUILD/cni/kmesh-cni
OBJ=$BUILD/bpf/kmesh_sock.bpf.o
BPFTOOL=${BPFTOOL:-$(command -v bpftool || echo /usr/sbin/bpftool)}
[[ -x $CNI && -f $OBJ ]] || { echo "missing $CNI or $OBJ" >&2; exit 1; }

unset CNI_CONTAINERID # cni() uses $CID unless a step sets it

CG2=$(awk '$0 ~ / - cgroup2 / { print $5; exit }' /proc/self/mountinfo)
[[ -n $CG2 ]] || { echo "no cgroup v2 mount" >&2; exit 1; }

TMP=$(mktemp -d /tmp/kmesh-cni-e2e.XXXXXX)
BPFFS=$TMP/bpffs
CGROOT=$CG2/kmesh-cni-e2e-$$
POD_UID=0b5c1c0e-6d1a-4b8e-9a53-$(printf '%012d' $$)
POD_CG=$CGROOT/kubepods/besteffort/pod$POD_UID
CID=e2e$$
PODDIR=$BPFFS/kmesh/pods/$CID
DOT_CID=k8s.e2e.$$
DOT_PODDIR=$BPFFS/kmesh/pods/k8s%2Ee2e%2E$$

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
    # The container id is $CID, or the caller's CNI_CONTAINERID when set.
    config "${2:-$BPFFS}" "${3:-yes}" | CNI_COMMAND=$1 CNI_CONTAINERID=${CNI_CONTAINERID:-$CID} CNI_NETNS=${4-/var/run/netns/e2e} \
        CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=e2e;K8S_POD_UID=$POD_UID" "$CNI"
}
attached() { "$BPFTOOL" cgroup show "$POD_CG"; }
# Ids of the bpf_links attached to this test's pod cgroup only (other BPF users on the machine have
# links too): `bpftool cgroup show` lists program ids, so filter `bpftool link show` by cgroup id,
# which on cgroup v2 is the directory's inode number.
link_ids() {
    local cgid
    cgid=$(stat -c %i "$POD_CG")
    "$BPFTOOL" -j link show | python3 -c '
import json, sys
cgid = int(sys.argv[1])
for link in json.load(sys.stdin):
    if link.get("type") == "cgroup" and link.get("cgroup_id") == cgid:
        print(link["id"])
' "$cgid" | sort -n
}

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
[[ $(wc -l <<<"$before") == 2 ]] || fail "expected 2 links on the pod cgroup, got: $before"
out=$(cni ADD) || fail "second ADD: $out"
[[ $(link_ids) == "$before" ]] || fail "second ADD replaced links"
[[ $(attached | grep -c cgroup_connect) == 2 ]] || fail "second ADD attached twice: $(attached)"

# Agent restart (new programs pinned): CHECK notices, ADD moves the same links to the new programs
# with bpf_link_update (no detach window), the old programs are no longer attached.
old_progs=$(attached | awk '/cgroup_connect/ { print $1 }' | sort -n)
rm -r "$BPFFS/kmesh/progs"
"$BPFTOOL" prog loadall "$OBJ" "$BPFFS/kmesh/progs"
out=$(cni CHECK) && fail "CHECK with stale links succeeded"
grep -q '"code":102' <<<"$out" || fail "CHECK with stale links: $out"
out=$(cni ADD) || fail "ADD after agent restart: $out"
out=$(cni CHECK) || fail "CHECK after re-ADD: $out"
[[ $(link_ids) == "$before" ]] || fail "ADD after agent restart replaced the links: $(link_ids) != $before"
[[ $(attached | grep -c cgroup_connect) == 2 ]] || fail "stale links still attached: $(attached)"
new_progs=$(attached | awk '/cgroup_connect/ { print $1 }' | sort -n)
[[ $new_progs != "$old_progs" ]] || fail "links still run the old programs: $(attached)"

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

# A container id with dots (allowed by the CNI spec, refused by bpffs in names): ADD, CHECK, DEL and
# a second DEL all succeed; the pod dir name has the dots encoded.
out=$(CNI_CONTAINERID=$DOT_CID cni ADD) || fail "ADD with dotted id: $out"
[[ $out == "$PREV" ]] || fail "ADD with dotted id printed '$out'"
[[ -e $DOT_PODDIR/cgroup_connect4 && -e $DOT_PODDIR/cgroup_connect6 ]] ||
    fail "dotted id: links not pinned in $DOT_PODDIR: $(ls "$BPFFS/kmesh/pods")"
[[ $(link_ids | wc -l) == 2 ]] || fail "dotted id: expected 2 links on the pod cgroup: $(link_ids)"
out=$(CNI_CONTAINERID=$DOT_CID cni CHECK) || fail "CHECK with dotted id: $out"
out=$(CNI_CONTAINERID=$DOT_CID cni DEL) || fail "DEL with dotted id: $out"
[[ ! -e $DOT_PODDIR ]] || fail "DEL with dotted id left $DOT_PODDIR"
shown=$(attached)
! grep -q cgroup_connect <<<"$shown" || fail "dotted id: still attached after DEL: $shown"
out=$(CNI_CONTAINERID=$DOT_CID cni DEL "$BPFFS" no "") || fail "second DEL with dotted id: $out"
