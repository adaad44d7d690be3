#!/usr/bin/env bash
# Weighted endpoints, draining, round robin and session affinity (docs/lb.md), with the kernel as
# the oracle: real connects from enrolled pods to a VIP, the answering pod counted per connect, and
# the counts compared with shares this script computes itself from the capacities it wrote.
#
# Distribution checks use Pearson's chi-square statistic with fixed sample sizes and a threshold
# whose false-failure probability for a correct implementation is below 1e-6 (computed below from
# the chi-square survival function, not looked up in our code). Each check says, in a comment, what
# a wrong (uniform) implementation would score at that sample size.
# Usage: e2e_lb_policies.sh <build-dir>
source "$(dirname "$0")/lib.sh"
e2e_init "${1:?usage: $0 <build-dir>}"

SVC_WEIGHTED='- {name: weighted, namespace: default, hostname: weighted.default.svc.cluster.local, addresses: ["10.96.0.30", "fd00:96::30"], ports: [{service_port: 80, target_port: 8080}]}'
SVC_RR='- {name: rr, namespace: default, hostname: rr.default.svc.cluster.local, addresses: ["10.96.0.40"], ports: [{service_port: 80, target_port: 8080}], loadBalancer: roundRobin}'
SVC_STICKY='- {name: sticky, namespace: default, hostname: sticky.default.svc.cluster.local, addresses: ["10.96.0.50"], ports: [{service_port: 80, target_port: 8080}], sessionAffinity: ClientIP}'
# Round robin + a 1 s affinity timeout, over e and f (equal weights): after expiry the fresh pick is the rotation's next backend,
# so expiry is observable deterministically (a random re-pick could land on the same one).
SVC_SHORT='- {name: short, namespace: default, hostname: short.default.svc.cluster.local, addresses: ["10.96.0.60"], ports: [{service_port: 80, target_port: 8080}], load_balancer: ROUND_ROBIN, session_affinity: CLIENT_IP, session_affinity_timeout_seconds: 1}'

config() { # <workload lines>
    printf 'services:\n%s\n%s\n%s\n%s\nworkloads:\n%s\n' "$SVC_WEIGHTED" "$SVC_RR" "$SVC_STICKY" "$SVC_SHORT" "$1"
}
# wl <name> <ip4> <ip6> <capacity|-> <services...>
wl() {
    local name=$1 ip4=$2 ip6=$3 cap=$4 svcs="" s
    shift 4
    for s in "$@"; do svcs+="${svcs:+, }default/$s.default.svc.cluster.local: "; done
    printf -- '- {uid: Kubernetes//Pod/default/%s, name: %s, namespace: default, addresses: ["%s", "%s"]%s, services: {%s}}\n' \
        "$name" "$name" "$ip4" "$ip6" "$([[ $cap == - ]] || echo ", capacity: $cap")" "$svcs"
}

MESH=$TMP/mesh.yaml
replace_file "$MESH" "$(config "")"
agent_start "$MESH"
wait_log "config generation 1 applied" 1

pod_create client
pod_create client2
declare -A IP4 IP6
for p in a b c d e f; do
    pod_create $p
    IP4[$p]=$POD_IP4 IP6[$p]=$POD_IP6
    pod_serve $p $p 8080
done
# Thousands of short connections: no TIME_WAIT build-up in the clients (reference §9).
for p in client client2; do ip netns exec "$RUN-$p" sysctl -qw net.ipv4.tcp_max_tw_buckets=0; done

# Gray release: a (capacity 2) and b (capacity 6) share 1:3 once divided by their gcd; c is
# drained (capacity 0) but stays a member. rr: a, b, c and d
# with 3 (capacity is per workload: rr sees 2:6:0:3). sticky: a, b, c. short: e and f (unset: 1).
workloads() {
    wl a "${IP4[a]}" "${IP6[a]}" 2 weighted rr sticky
    wl b "${IP4[b]}" "${IP6[b]}" 6 weighted rr sticky
    wl c "${IP4[c]}" "${IP6[c]}" 0 weighted rr sticky
    wl d "${IP4[d]}" "${IP6[d]}" 3 rr
    wl e "${IP4[e]}" "${IP6[e]}" - short
    wl f "${IP4[f]}" "${IP6[f]}" - short
}
replace_file "$MESH" "$(config "$(workloads)")"
wait_log "config generation 2 applied" 1
sleep 0.3 # let the echo servers bind

summary() { sort <<<"$1" | uniq -c | xargs; }
count_of() { grep -cx -- "$2" <<<"$1" || true; }

# chi_square <output> <name=share>...: prints "X2 threshold": Pearson's statistic of the observed
# counts against N*share, and the critical value for k-1 degrees of freedom at p = 1e-6 (the
# survival function: df 1 erfc(sqrt(x/2)), df 2 exp(-x/2), df 3 erfc(sqrt(x/2)) +
# sqrt(2x/pi) exp(-x/2); solved by bisection). Fails when a line names none of the given pods.
CHI_PY=$(cat <<'PY'
import math, sys
shares = dict(a.split("=") for a in sys.argv[1:])
lines = [l.strip() for l in sys.stdin if l.strip()]
bad = [l for l in lines if l not in shares]
if bad:
    print("unexpected answers: %s" % sorted(set(bad))); sys.exit(1)
n = len(lines)
total = sum(float(v) for v in shares.values())
x2 = 0.0
for name, share in shares.items():
    exp = n * float(share) / total
    x2 += (lines.count(name) - exp) ** 2 / exp
df = len(shares) - 1
sf = {1: lambda x: math.erfc(math.sqrt(x / 2)),
      2: lambda x: math.exp(-x / 2),
      3: lambda x: math.erfc(math.sqrt(x / 2)) + math.sqrt(2 * x / math.pi) * math.exp(-x / 2)}[df]
lo, hi = 0.0, 1000.0
for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if sf(mid) > 1e-6 else (lo, mid)
print("%.2f %.2f" % (x2, hi))
PY
)
chi_square() {
    local out=$1
    shift
    python3 -c "$CHI_PY" "$@" <<<"$out"
}
chi_ok() { # <output> <name=share>...: passes when X2 stays below the p = 1e-6 threshold
    local r
    r=$(chi_square "$@") || { echo "$r"; return 1; }
    echo "chi-square $r"
    awk '{ exit !($1 < $2) }' <<<"$r"
}

# --- weighted random pick (1:3 after the gcd), draining --------------------------------------
# N = 4000: expected a 1000, b 3000. Threshold (df 1, p 1e-6) = 23.93. A uniform pick over a and b
# (weights ignored) expects 2000/2000: X2 = 1000^2/1000 + 1000^2/3000 = 1333, far above; one that
# takes the raw capacities without the drain (2:6:0 -> c picked) fails on the unexpected answer; a
# 1:2 share scores about 148.
N=4000
out=$(pod_connect client 10.96.0.30 80 $N)
check "weighted 1:3 over IPv4, c drained ($(summary "$out"))" chi_ok "$out" a=1 b=3
check "the drained workload got no connection" test "$(count_of "$out" c)" = 0
out=$(pod_connect client fd00:96::30 80 $N)
check "weighted 1:3 over IPv6 ($(summary "$out"))" chi_ok "$out" a=1 b=3

dump=$(kmeshctl dump)
# gcd: capacities 2 and 6 take 1 and 3 slots, 4 in all (not 8).
slots_after_gcd() { grep -A8 "pick=random\$" <<<"$1" | grep -q "IPv4 priority 0: 4 endpoint(s)"; }
check "kmeshctl dump: 4 weighted slots per family (gcd applied)" slots_after_gcd "$dump"
check "kmeshctl dump lists the drained member with weight 0" grep -q "weight 0 (draining)" <<<"$dump"
check "kmeshctl dump shows round robin and affinity" \
    bash -c 'grep -q "pick=round-robin" <<<"$1" && grep -q "pick=random affinity=10800s" <<<"$1" && grep -q "pick=round-robin affinity=1s" <<<"$1"' _ "$dump"

# --- round robin: exact rotation ---------------------------------------------------------------
# rr's members have capacities a 2, b 6, c 0 (drained), d 3 (gcd 1): 11 slots. Serialised connects
# rotate exactly, so any 11 consecutive connects hold a twice, b six times, d three times: 1100
# connects give exactly 200/600/0/300, and the answers repeat with period 11. A random pick matches
# those counts with probability well under 1e-3 and the period almost never.
out=$(pod_connect client 10.96.0.40 80 1100)
check "round robin: exact weighted shares 2:6:0:3 over 1100 connects ($(summary "$out"))" \
    test "$(count_of "$out" a) $(count_of "$out" b) $(count_of "$out" c) $(count_of "$out" d)" = "200 600 0 300"
periodic() { # the answer sequence repeats with period 11
    python3 -c 'import sys; l=sys.stdin.read().split(); sys.exit(len(l) < 22 or any(l[i] != l[i+11] for i in range(len(l)-11)))' <<<"$1"
}
check "round robin: the sequence repeats with period 11" periodic "$out"

# --- session affinity (ClientIP by network namespace) ----------------------------------------
out=$(pod_connect client 10.96.0.50 80 200)
first=$(head -1 <<<"$out")
check "affinity: 200 connects from one pod all reach $first ($(summary "$out"))" test "$(count_of "$out" "$first")" = 200
# Different pods are different clients: 20 pods' first picks would all coincide with
# probability 3^-19 if they were one key. We use a second pod and many rounds of its own.
out2=$(pod_connect client2 10.96.0.50 80 100)
first2=$(head -1 <<<"$out2")
check "affinity: a second pod is sticky too, on its own pick ($first2)" test "$(count_of "$out2" "$first2")" = 100

# Draining the remembered backend: new connections leave it (weight 0), and stick to the new pick.
case $first in a) cap_a=0 cap_b=6 ;; b) cap_a=2 cap_b=0 ;; *) cap_a=2 cap_b=6 ;; esac
drained=$(
    wl a "${IP4[a]}" "${IP6[a]}" $cap_a weighted rr sticky
    wl b "${IP4[b]}" "${IP6[b]}" $cap_b weighted rr sticky
    wl c "${IP4[c]}" "${IP6[c]}" "$([[ $first == c ]] && echo 0 || echo 1)" weighted rr sticky
    wl d "${IP4[d]}" "${IP6[d]}" 3 rr
    wl e "${IP4[e]}" "${IP6[e]}" - short
    wl f "${IP4[f]}" "${IP6[f]}" - short
)
# c starts drained; make sure the remembered one is the only drained one of a, b, c.
replace_file "$MESH" "$(config "$drained")"
wait_log "config generation 3 applied" 1
out=$(pod_connect client 10.96.0.50 80 100)
second=$(head -1 <<<"$out")
check "affinity: draining the remembered backend ($first) moves the client ($(summary "$out"))" \
    bash -c '[[ $1 != "$2" ]] && [[ $(grep -cx -- "$1" <<<"$3") == 100 ]]' _ "$second" "$first" "$out"

# --- affinity expiry and refresh (1 s timeout, round robin underneath) -------------------------
out=$(pod_connect client 10.96.0.60 80 1)
s1=$out
refreshed=yes
for _ in 1 2 3 4 5; do # 2.5 s in all, each use within the timeout of the last: stays
    sleep 0.5
    [[ $(pod_connect client 10.96.0.60 80 1) == "$s1" ]] || refreshed=no
done
check "affinity: used every 0.5 s, a 1 s timeout never expires (stays on $s1)" test $refreshed = yes
sleep 1.5
s2=$(pod_connect client 10.96.0.60 80 1)
check "affinity: after 1.5 s unused it expired; the next pick moved on ($s1 -> $s2)" \
    bash -c '[[ -n $1 && $1 != "$2" && $1 != error* ]]' _ "$s2" "$s1"
s3=$(pod_connect client 10.96.0.60 80 20 | sort -u | xargs)
check "affinity: and the new pick sticks ($s3)" test "$s3" = "$s2"
