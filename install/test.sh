#!/usr/bin/env bash
# One command from a fresh machine to every test, as root (the end-to-end tests load BPF programs
# and create network namespaces and cgroups): install packages, then
#   1. build (warnings are errors under CI=true) and run ctest: unit and end-to-end tests;
#   2. build again with AddressSanitizer + UndefinedBehaviorSanitizer and run the same tests;
#   3. build the libFuzzer targets with clang and replay their seed corpora (fuzz/run.sh).
# SKIP_SANITIZERS=1 or SKIP_FUZZ=1 leave out steps 2 or 3 (a quicker local loop).
# CTEST_JOBS (default 2): tests run side by side; each end-to-end test builds its own node
# (netns, bpffs mount, cgroup subtree), and most of their time is spent waiting on the kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install/deps.sh
step() { echo; echo "=== $* ($(date +%T), cpu pressure: $(head -1 /proc/pressure/cpu))"; }

step "build and test"
werror=OFF
[[ ${CI:-} == true ]] && werror=ON
CMAKE_ARGS="-DKMESH_WERROR=$werror" bash install/build.sh
jobs=${CTEST_JOBS:-2}
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure -j"$jobs")

if [[ -z ${SKIP_SANITIZERS:-} ]]; then
    step "ASan + UBSan build and test"
    BUILD_DIR=build-asan CMAKE_ARGS="-DKMESH_WERROR=$werror -DKMESH_SANITIZE=address,undefined" \
        bash install/build.sh
    # Leak checks stay on; a sanitizer report aborts the process, so the test fails. The image
    # test is left out: it builds its own binaries inside the image, none of this build's.
    (cd build-asan && ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$jobs" -E '^image_build$')
fi

if [[ -z ${SKIP_FUZZ:-} ]]; then
    step "fuzz targets: seed corpus replay"
    BUILD_DIR=build-fuzz BUILD_TARGETS=fuzzers CC=clang CXX=clang++ \
        CMAKE_ARGS="-DKMESH_FUZZ=ON -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++" bash install/build.sh
    fuzz/run.sh build-fuzz 0
fi
step "all tests passed"
