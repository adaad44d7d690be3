#!/usr/bin/env bash
# Configures and builds Kmesh-C++ into ${BUILD_DIR:-build}. Run install/deps.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
cmake --build "$BUILD_DIR" -j"$(nproc)"
