#!/usr/bin/env bash
# One command from a fresh machine to every test, as root (the end-to-end tests load BPF programs
# and create network namespaces and cgroups): install packages, then build once with
# AddressSanitizer + UndefinedBehaviorSanitizer (warnings are errors under CI=true) and run ctest:
# unit tests, end-to-end tests on the real kernel, and a replay of every fuzz target's seed corpus.
# One build, not a plain one and a sanitized one: two cold builds and their test runs do not fit
# CI's 30 minutes on two cores, and every test passing under the sanitizers passes without them.
#
# FULL=1 adds what CI leaves out for time: the plain build (what the demo and bench/ use) with its
# own test run, which includes image_build (a container image built from source with podman), and
# the clang/libFuzzer build fuzzing each target for FUZZ_SECONDS (default 30).
# CTEST_JOBS (default 2): tests run side by side; each end-to-end test builds its own node
# (netns, bpffs mount, cgroup subtree), and most of their time is spent waiting on the kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install/deps.sh
step() { echo; echo "=== $* ($(date +%T), cpu pressure: $(head -1 /proc/pressure/cpu))"; }
werror=OFF
[[ ${CI:-} == true ]] && werror=ON
jobs=${CTEST_JOBS:-2}

step "ASan + UBSan build"
BUILD_DIR=${ASAN_BUILD_DIR:-build-asan} CMAKE_ARGS="-DKMESH_WERROR=$werror -DKMESH_SANITIZE=address,undefined" \
    bash install/build.sh
step "tests under ASan + UBSan"
# Leak checks stay on; a sanitizer report aborts the process, so the test fails.
(cd "${ASAN_BUILD_DIR:-build-asan}" && ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$jobs")

if [[ -n ${FULL:-} ]]; then
    step "plain build and its tests (image_build included)"
    CMAKE_ARGS="-DKMESH_WERROR=$werror" bash install/build.sh
    (cd "${BUILD_DIR:-build}" && ctest --output-on-failure -j"$jobs")
    step "libFuzzer build: ${FUZZ_SECONDS:-30} s per target"
    BUILD_DIR=build-fuzz BUILD_TARGETS=fuzzers CC=clang CXX=clang++ \
        CMAKE_ARGS="-DKMESH_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++" bash install/build.sh
    fuzz/run.sh build-fuzz "${FUZZ_SECONDS:-30}"
fi
step "all tests passed"
