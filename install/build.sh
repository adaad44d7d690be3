#!/usr/bin/env bash
# Configures and builds Kmesh-C++ into ${BUILD_DIR:-build}. Run install/deps.sh first.
# BUILD_TYPE (default RelWithDebInfo); extra cmake arguments in CMAKE_ARGS, e.g.
# CMAKE_ARGS="-DKMESH_WERROR=ON" (what CI uses) or "-DKMESH_SANITIZE=address,undefined".
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
read -r -a extra <<<"${CMAKE_ARGS:-}"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "${launcher[@]}" "${extra[@]}"
cmake --build "$BUILD_DIR" -j"$(nproc)" ${BUILD_TARGETS:+--target $BUILD_TARGETS}
