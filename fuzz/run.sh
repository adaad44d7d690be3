#!/usr/bin/env bash
# Runs every libFuzzer target for a while, starting from the seed corpus in fuzz/corpus/<target>
# (new inputs it finds go to a scratch corpus, not into the repo). Exits non-zero on a crash, a
# hang or a sanitizer report; the reproducer is left in the scratch dir and its path printed.
#   fuzz/run.sh <build-dir> [seconds-per-target|0] [target...]
# 0 seconds replays the seed corpus once (a regression check, what CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:?usage: fuzz/run.sh <build-dir> [seconds] [target...]}
SECS=${2:-60}
shift $(($# < 2 ? $# : 2))
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(cni_fuzz yaml_fuzz xds_address_fuzz xds_authz_fuzz conflist_fuzz kube_objects_fuzz)
OUT=${FUZZ_OUT:-/tmp/kmesh-fuzz}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:suppressions=$PWD/fuzz/ubsan.supp}
status=0
for t in "${TARGETS[@]}"; do
    bin=$BUILD/fuzz/$t
    seeds=fuzz/corpus/${t%_fuzz}
    [[ -x $bin ]] || { echo "$t: $bin not built" >&2; status=1; continue; }
    mkdir -p "$OUT/$t/corpus" "$OUT/$t/artifacts"
    if [[ $SECS == 0 ]]; then
        args=(-runs=0 "$seeds")
    else
        args=(-max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$OUT/$t/artifacts/" "$OUT/$t/corpus" "$seeds")
    fi
    echo "== $t (${SECS}s)"
    if ! "$bin" "${args[@]}" 2>"$OUT/$t/log"; then
        status=1
        echo "$t: FAILED; see $OUT/$t/log and $OUT/$t/artifacts/" >&2
        tail -40 "$OUT/$t/log" >&2
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|Done [0-9]+ runs' "$OUT/$t/log" || true
done
exit $status
