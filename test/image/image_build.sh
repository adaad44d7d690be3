#!/usr/bin/env bash
# image_build: builds the image with install/image.sh (cached layers and ccache make a rebuild
# cheap; the Dockerfile really runs), then runs it with podman and checks what it ships:
#   - kmesh-daemon, kmeshctl and kmesh-cni print the project() version of CMakeLists.txt (the
#     oracle: read here from the source, not from the image), both tags name the same image;
#   - kmesh-cni answers the CNI VERSION command (a JSON with the spec versions it speaks);
#   - the runtime stage has no compiler, assembler, linker or -dev package.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=${IMAGE:-kmesh-cpp/kmesh}
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v podman >/dev/null || { echo "SKIP: podman is not installed (install/deps.sh)"; exit 77; }
[[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root (podman storage shared with install/image.sh)"; exit 77; }

want=$(sed -n 's/^project(kmesh-cpp VERSION \([0-9][0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
[[ -n $want ]] || fail "no project version in CMakeLists.txt"

start=$(date +%s)
IMAGE=$IMAGE bash "$src/install/image.sh"
echo "image.sh took $(($(date +%s) - start)) s"

# Same podman settings as install/image.sh (runc, cgroupfs without systemd, file events). No
# network: nothing here needs one.
PODMAN=(podman)
command -v runc >/dev/null && PODMAN+=(--runtime "$(command -v runc)")
[[ -d /run/systemd/system ]] || PODMAN+=(--cgroup-manager cgroupfs)
PODMAN+=(--events-backend file)
# Podman raises nofile and nproc to its own defaults (1048576...), which runc cannot set where
# root lacks CAP_SYS_RESOURCE (as here; even this shell's hard nproc limit is refused): ask for
# modest limits, enough for the commands below.
ulimits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
run() { "${PODMAN[@]}" run --rm --network none "${ulimits[@]}" "$@"; }

id_v=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE:$want") || fail "no image $IMAGE:$want"
id_l=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE:latest") || fail "no image $IMAGE:latest"
[[ $id_v == "$id_l" ]] || fail "$IMAGE:latest ($id_l) is not $IMAGE:$want ($id_v)"

for bin in kmesh-daemon kmeshctl kmesh-cni; do
  got=$(run "$IMAGE:$want" "$bin" --version) || fail "$bin --version failed in the image: $got"
  # kmesh-daemon goes on with its program digest and map layout (docs/upgrade.md): the first line
  # is the release.
  [[ ${got%%$'\n'*} == "$bin $want" ]] || fail "$bin --version printed '$got', want '$bin $want' first"
  where=$(run "$IMAGE:$want" sh -c "command -v $bin")
  [[ $where == /usr/local/bin/$bin ]] || fail "$bin is at '$where', want /usr/local/bin/$bin"
  echo "ok: $bin $want"
done

cni=$(run -e CNI_COMMAND=VERSION "$IMAGE:$want" kmesh-cni </dev/null) || fail "kmesh-cni VERSION failed: $cni"
python3 - "$cni" <<'PY' || fail "kmesh-cni VERSION answered '$cni'"
import json, sys
v = json.loads(sys.argv[1])
assert "1.0.0" in v["supportedVersions"] and v["cniVersion"] in v["supportedVersions"], v
PY
echo "ok: kmesh-cni VERSION $cni"

# The daemon's full help runs: every shared library it links is in the runtime stage.
run "$IMAGE:$want" kmesh-daemon --help >/dev/null || fail "kmesh-daemon --help failed in the image"

tools=$(run "$IMAGE:$want" sh -c \
  'for t in cc gcc g++ c++ clang clang++ cpp as ld make cmake; do command -v $t || true; done')
[[ -z $tools ]] || fail "the runtime image has build tools: $tools"
dev=$(run "$IMAGE:$want" sh -c "dpkg-query -W -f '\${Package}\n' | grep -E -- '-dev(:|\$)' || true")
[[ -z $dev ]] || fail "the runtime image has -dev packages: $dev"
echo "ok: no compiler, linker or -dev package in the runtime image"

"${PODMAN[@]}" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE:$want"
echo "PASS"
