#!/usr/bin/env bash
# One command from a fresh machine to every test: install packages, build, run ctest (as root:
# the end-to-end tests load BPF programs and create network namespaces and cgroups).
set -euo pipefail
cd "$(dirname "$0")/.."
bash install/deps.sh
bash install/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure
