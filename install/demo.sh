#!/usr/bin/env bash
# One command from a fresh machine to the demo: install packages, build, run the demo (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash install/deps.sh
bash install/build.sh
bash test/e2e/demo.sh "${BUILD_DIR:-build}"
