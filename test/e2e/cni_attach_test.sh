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
NETNS=kmcni-e2e-$$ # the pod's network namespace (CNI_NETNS): kmesh-cni attaches sk_lookup there

cleanup() {
    local rc=$?
    set +e
    # Unmounting the private bpffs drops every pin (programs and links) with it.
    mountpoint -q "$BPFFS" && umount "$BPFFS"
    [[ -d $CGROOT ]] && find "$CGROOT" -depth -type d -exec rmdir {} \;
    ip netns del "$NETNS" 2>/dev/null
    for ns in $(ip netns list | awk '{print $1}' | grep "^$NETNS-pm"); do ip netns del "$ns"; done
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
ip netns add "$NETNS"
# Links of sk_lookup_authz on this test's netns (by the namespace's inode).
netns_links() {
    "$BPFTOOL" -j link show | python3 -c '
import json, sys
ino = int(sys.argv[1])
for link in json.load(sys.stdin):
    if link.get("type") == "netns" and link.get("netns_ino") == ino:
        print(link["id"], link["prog_id"], link.get("attach_type"))
' "$(stat -L -c %i "/run/netns/$NETNS")"
}
mkdir -p "$BPFFS/kmesh"
# loadall pins each program under its function name: exactly <bpffs>/kmesh/progs/cgroup_connect{4,6}.
"$BPFTOOL" prog loadall "$OBJ" "$BPFFS/kmesh/progs"
[[ -e $BPFFS/kmesh/progs/cgroup_connect4 && -e $BPFFS/kmesh/progs/cgroup_connect6 ]] ||
    fail "programs not pinned as expected: $(ls "$BPFFS/kmesh/progs")"
mkdir -p "$POD_CG"

PREV='{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.9.0.2/24","interface":0}]}'
CNIVER=1.0.0 # cniVersion of the config; EXTRA: more config fields (JSON members, leading comma)
EXTRA=
config() { # <bpffs-root> <with-prevResult>
    local c='{"cniVersion":"'$CNIVER'","name":"e2e","type":"kmesh-cni","bpffsRoot":"'$1'","cgroupRoot":"'$CGROOT'"'
    c+=',"logFile":"'$TMP/cni.log'"'$EXTRA
    [[ $2 == yes ]] && c+=',"prevResult":'$PREV
    echo "$c}"
}
cni() { # <command> [bpffs-root] [with-prevResult] [netns]; stdout = plugin output, rc = plugin rc
    # The container id is $CID, or the caller's CNI_CONTAINERID when set.
    config "${2:-$BPFFS}" "${3:-yes}" | CNI_COMMAND=$1 CNI_CONTAINERID=${CNI_CONTAINERID:-$CID} CNI_NETNS=${4-/run/netns/$NETNS} \
        CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=e2e;K8S_POD_UID=$POD_UID" "$CNI"
}
attached() { "$BPFTOOL" cgroup show "${1:-$POD_CG}"; }
# Links kmesh-cni makes per pod: connect4, connect6, sockops (waypoint TLV), and issue 10's
# sendmsg4/6, recvmsg4/6, getpeername4/6 and sock_release (UDP and address transparency).
NLINKS=10
# Ids of the bpf_links attached to this test's pod cgroup only (other BPF users on the machine have
# links too): `bpftool cgroup show` lists program ids, so filter `bpftool link show` by cgroup id,
# which on cgroup v2 is the directory's inode number.
link_ids() { # [cgroup dir]
    local cgid
    cgid=$(stat -c %i "${1:-$POD_CG}")
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
# ... and sk_lookup_authz to the pod's network namespace (CNI_NETNS), pinned in the same record.
[[ -e $PODDIR/sk_lookup_authz ]] || fail "sk_lookup link not pinned in $PODDIR"
[[ $(netns_links | wc -l) == 1 ]] || fail "expected one sk_lookup link on $NETNS: $(netns_links)"
grep -q 'sk_lookup' <<<"$(netns_links)" || fail "netns link is not sk_lookup: $(netns_links)"
netns_before=$(netns_links)

out=$(cni CHECK) || fail "CHECK after ADD: $out"
[[ -z $out ]] || fail "CHECK printed '$out'"

# A repeated ADD keeps the same links.
before=$(link_ids)
[[ $(wc -l <<<"$before") == $NLINKS ]] || fail "expected $NLINKS links on the pod cgroup, got: $before"
out=$(cni ADD) || fail "second ADD: $out"
[[ $(link_ids) == "$before" ]] || fail "second ADD replaced links"
[[ $(attached | grep -c cgroup_connect) == 2 ]] || fail "second ADD attached twice: $(attached)"
[[ $(netns_links) == "$netns_before" ]] || fail "second ADD changed the netns link: $(netns_links)"

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
# The netns link too: same link, new program.
[[ $(netns_links | awk '{print $1}') == $(awk '{print $1}' <<<"$netns_before") ]] || fail "netns link replaced"
[[ $(netns_links | awk '{print $2}') != $(awk '{print $2}' <<<"$netns_before") ]] || fail "netns link runs the old program"

# DEL detaches; containerd's second DEL (no netns, no prevResult) and a DEL without agent succeed.
out=$(cni DEL) || fail "DEL: $out"
[[ -z $out ]] || fail "DEL printed '$out'"
[[ ! -e $PODDIR ]] || fail "DEL left $PODDIR"
shown=$(attached)
! grep -q cgroup_connect <<<"$shown" || fail "programs still attached after DEL: $shown"
[[ -z $(netns_links) ]] || fail "sk_lookup still attached after DEL: $(netns_links)"
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
[[ $(link_ids | wc -l) == $NLINKS ]] || fail "dotted id: expected $NLINKS links on the pod cgroup: $(link_ids)"
out=$(CNI_CONTAINERID=$DOT_CID cni CHECK) || fail "CHECK with dotted id: $out"
out=$(CNI_CONTAINERID=$DOT_CID cni DEL) || fail "DEL with dotted id: $out"
[[ ! -e $DOT_PODDIR ]] || fail "DEL with dotted id left $DOT_PODDIR"
shown=$(attached)
! grep -q cgroup_connect <<<"$shown" || fail "dotted id: still attached after DEL: $shown"
out=$(CNI_CONTAINERID=$DOT_CID cni DEL "$BPFFS" no "") || fail "second DEL with dotted id: $out"

# --- CNI 1.1.0 (containerd with a 1.1.0 conflist): VERSION lists it, ADD/CHECK/DEL work, STATUS
# reports the agent's readiness, GC removes attachments not in cni.dev/valid-attachments.
CNI_COMMAND=VERSION "$CNI" | grep -q '"1.1.0"' || fail "VERSION does not list 1.1.0"
CNIVER=1.1.0
out=$(cni STATUS "$BPFFS" no) || fail "STATUS with agent: $out"
[[ -z $out ]] || fail "STATUS printed '$out'"
out=$(cni STATUS "$TMP/no-agent" no) && fail "STATUS without agent succeeded"
grep -q '"code":50' <<<"$out" || fail "STATUS without agent: $out"
out=$(CNI_CONTAINERID=gcA cni ADD) || fail "1.1.0 ADD: $out"
[[ $out == "${PREV/1.0.0/1.1.0}" ]] || fail "1.1.0 ADD printed '$out'"
out=$(CNI_CONTAINERID=gcA cni CHECK) || fail "1.1.0 CHECK: $out"
gc_cgid=$(stat -c %i "$POD_CG")
EXTRA=',"cni.dev/valid-attachments":[{"containerID":"gcB","ifname":"eth0"}]'
out=$(cni GC "$BPFFS" no) || fail "GC: $out"
EXTRA=
[[ ! -e $BPFFS/kmesh/pods/gcA ]] || fail "GC left the stale attachment gcA"
! attached | grep -q cgroup_connect || fail "GC: gcA still attached: $(attached)"
out=$(CNI_CONTAINERID=gcA cni DEL "$BPFFS" no) || fail "1.1.0 DEL after GC: $out"
# DEL of a version this plugin does not know still succeeds (the sandbox must not be stranded).
CNIVER=1.2.0
out=$(CNI_CONTAINERID=gcA cni DEL "$BPFFS" no) || fail "DEL with cniVersion 1.2.0: $out"
CNIVER=1.0.0

# --- Concurrent ADDs of one container id (50 pairs): both succeed, the links stay pinned.
for i in $(seq 1 50); do
    CNI_CONTAINERID=conc$i cni ADD >"$TMP/a.out" & p1=$!
    CNI_CONTAINERID=conc$i cni ADD >"$TMP/b.out" & p2=$!
    rc1=0 rc2=0
    wait $p1 || rc1=$?
    wait $p2 || rc2=$?
    ((rc1 == 0 && rc2 == 0)) || fail "pair $i: concurrent ADDs failed: $(cat "$TMP/a.out" "$TMP/b.out")"
    [[ -e $BPFFS/kmesh/pods/conc$i/cgroup_connect4 && -e $BPFFS/kmesh/pods/conc$i/cgroup_connect6 ]] ||
        fail "pair $i: links not pinned after concurrent ADDs: $(ls "$BPFFS/kmesh/pods/conc$i" 2>&1)"
    [[ $(link_ids | wc -l) == $NLINKS ]] || fail "pair $i: expected $NLINKS links: $(link_ids)"
    out=$(CNI_CONTAINERID=conc$i cni DEL) || fail "pair $i: DEL: $out"
done

# --- cgroupPath (runtimes without pod cgroups, e.g. podman): 70 containers on one cgroup attach
# one link per program (the kernel refuses a 65th program per hook), the last DEL detaches.
# Each container has its own network namespace (podman without a pod), holding its sk_lookup link.
SHARED_CG=$CGROOT/shared
mkdir -p "$SHARED_CG"
EXTRA=',"cgroupPath":"shared"'
for i in $(seq 1 70); do
    ip netns add "$NETNS-pm$i"
    out=$(CNI_CONTAINERID=pm$i cni ADD "$BPFFS" yes "/run/netns/$NETNS-pm$i") || fail "shared ADD $i: $out"
done
[[ $(link_ids "$SHARED_CG" | wc -l) == $NLINKS ]] || fail "shared cgroup: expected $NLINKS links: $(attached "$SHARED_CG")"
out=$(CNI_CONTAINERID=pm70 cni CHECK "$BPFFS" yes "/run/netns/$NETNS-pm70") || fail "shared CHECK: $out"
[[ -e $BPFFS/kmesh/pods/_cgroup_$(stat -c %i "$SHARED_CG")/users/pm70/sk_lookup_authz ]] ||
    fail "shared cgroup: pm70's sk_lookup link not in its users/ entry"
for i in $(seq 1 69); do
    out=$(CNI_CONTAINERID=pm$i cni DEL) || fail "shared DEL $i: $out"
done
[[ $(link_ids "$SHARED_CG" | wc -l) == $NLINKS ]] || fail "shared cgroup detached before its last user left"
out=$(CNI_CONTAINERID=pm70 cni DEL) || fail "shared DEL 70: $out"
[[ -z $(link_ids "$SHARED_CG") ]] || fail "shared cgroup still attached after the last DEL: $(attached "$SHARED_CG")"
# Confined to cgroupRoot.
for bad in .. /sys/fs/cgroup "$CGROOT"; do
    EXTRA=',"cgroupPath":"'$bad'"'
    out=$(CNI_CONTAINERID=pmx cni ADD) && fail "cgroupPath $bad accepted"
    grep -q '"code":7' <<<"$out" || fail "cgroupPath $bad: $out"
done
EXTRA=

# --- bpffsRoot that is not a bpffs: ADD refuses (code 7), DEL succeeds and deletes nothing.
PLAIN=$TMP/plain
mkdir -p "$PLAIN/kmesh/pods/$CID"
echo data >"$PLAIN/kmesh/pods/$CID/precious"
out=$(cni ADD "$PLAIN") && fail "ADD on a plain dir succeeded"
grep -q '"code":7' <<<"$out" || fail "ADD on a plain dir: $out"
out=$(cni DEL "$PLAIN" no) || fail "DEL on a plain dir: $out"
[[ -e $PLAIN/kmesh/pods/$CID/precious ]] || fail "DEL deleted files under a plain dir"

# --- Hostile stdin: 200,000 nested arrays are a decode error (code 6), not a crash.
rc=0
out=$(head -c 200000 /dev/zero | tr '\0' '[' | CNI_COMMAND=ADD CNI_CONTAINERID=$CID CNI_NETNS=/x CNI_IFNAME=eth0 \
    CNI_PATH=/opt/cni/bin "$CNI") || rc=$?
((rc == 1)) || fail "deep JSON: exit code $rc"
grep -q '"code":6' <<<"$out" || fail "deep JSON: $out"

# --- Hostile environment and spec rules: error objects stay valid UTF-8 JSON, a newline in the
# container id cannot forge a log line, errors carry the config's cniVersion, required fields and
# variables are checked, and neither VERSION nor an early error writes to the default log.
default_log=/var/log/kmesh-cni.log
default_before=$(stat -c %s "$default_log" 2>/dev/null || echo none)
CNI_COMMAND=VERSION "$CNI" >/dev/null
valid_error() { # <json> <code>: strict UTF-8 JSON error object with that code
    python3 -c '
import json, sys
d = json.loads(sys.stdin.buffer.read().decode("utf-8", "strict"))
sys.exit(0 if d["code"] == int(sys.argv[1]) else 1)' "$2" <<<"$1"
}
out=$(CNI_CONTAINERID=$'a\xff\xfe"b' cni ADD) && fail "ADD with a non-UTF-8 id succeeded"
valid_error "$out" 4 || fail "non-UTF-8 id: invalid error object: $(od -c <<<"$out" | head -5)"
out=$(CNI_CONTAINERID=$'x\nFORGED line' cni ADD) && fail "ADD with a newline in the id succeeded"
valid_error "$out" 4 || fail "newline id: $out"
! grep -q '^FORGED' "$TMP/cni.log" || fail "a container id forged a log line: $(grep -n FORGED "$TMP/cni.log")"
grep -q 'x\\x0aFORGED' "$TMP/cni.log" || fail "the refused id is not in the configured log, escaped"
out=$(CNI_CONTAINERID=-abc cni ADD) && fail "ADD with id -abc succeeded"
valid_error "$out" 4 || fail "id -abc: $out"
out=$(cni ADD "$BPFFS" yes "") && fail "ADD without CNI_NETNS succeeded"
valid_error "$out" 4 || fail "ADD without CNI_NETNS: $out"
CNIVER=0.4.0
out=$(cni ADD "$BPFFS" no) && fail "ADD without prevResult succeeded"
grep -q '"cniVersion":"0.4.0"' <<<"$out" || fail "error not in the config's version: $out"
CNIVER=1.0.0
out=$(echo '{"cniVersion":"1.0.0","type":"kmesh-cni","logFile":"","prevResult":{}}' |
    CNI_COMMAND=ADD CNI_CONTAINERID=$CID CNI_NETNS=/x CNI_IFNAME=eth0 CNI_PATH=/opt "$CNI") && fail "no name accepted"
valid_error "$out" 7 || fail "config without name: $out"
# Refused as a config error (code 7), before any search: a walk of / would end in "container
# unknown" or time out instead. (No wall-clock bound: tests run side by side on a loaded machine.)
out=$(echo '{"cniVersion":"1.0.0","name":"e2e","type":"kmesh-cni","cgroupRoot":"/","bpffsRoot":"'$BPFFS'","logFile":"","prevResult":{}}' |
    CNI_COMMAND=ADD CNI_CONTAINERID=$CID CNI_NETNS=/x CNI_IFNAME=eth0 CNI_PATH=/opt CNI_ARGS="K8S_POD_UID=nope" "$CNI") &&
    fail "cgroupRoot / accepted"
valid_error "$out" 7 || fail "cgroupRoot /: $out"
[[ $(stat -c %s "$default_log" 2>/dev/null || echo none) == "$default_before" ]] ||
    fail "$default_log was written although logFile says $TMP/cni.log"
