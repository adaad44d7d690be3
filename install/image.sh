#!/usr/bin/env bash
# Builds the container image kmesh-cpp/kmesh:<version> (and :latest) from ./Dockerfile with podman.
#   install/image.sh [--save FILE.tar]     (--save: also write it as an archive for `ctr import`,
#                                           `kind load image-archive`, `docker load`)
# <version> is the project() version in CMakeLists.txt, which the binaries' --version print.
#
# These machines reach Debian's archive but no image registry: when debian:bookworm-slim is not in
# local storage, it is made here with mmdebstrap (minbase, docs and man pages left out as the slim
# image does) and imported under docker.io/library/debian:bookworm-slim, the name the Dockerfile's
# FROM resolves to, so the same Dockerfile builds unchanged where a registry exists. The rootfs
# tarball is cached in $KMESH_IMAGE_CACHE (default ~/.cache/kmesh-image); podman's layer cache and
# the Dockerfile's ccache mount make a rebuild after a source change cheap.
#
# Podman settings are passed as flags, the host's containers.conf is left alone: runc (crun refuses
# hybrid cgroup layouts), cgroupfs when systemd is not running, file events; RUN steps share the
# host network so apt-get reaches the archive (podman's default network needs a CNI/netavark setup).
set -euo pipefail
cd "$(dirname "$0")/.."

save=""
while (($#)); do
  case $1 in
    --save) save=$2; shift 2 ;;
    *) echo "usage: $0 [--save FILE.tar]" >&2; exit 2 ;;
  esac
done

VERSION=$(sed -n 's/^project(kmesh-cpp VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
[[ -n $VERSION ]] || { echo "image.sh: no project(kmesh-cpp VERSION x.y.z) in CMakeLists.txt" >&2; exit 1; }
IMAGE=${IMAGE:-kmesh-cpp/kmesh}
BASE=docker.io/library/debian:bookworm-slim
CACHE=${KMESH_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kmesh-image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}

PODMAN=(podman)
command -v runc >/dev/null && PODMAN+=(--runtime "$(command -v runc)")
[[ -d /run/systemd/system ]] || PODMAN+=(--cgroup-manager cgroupfs)
PODMAN+=(--events-backend file)

step() { echo "=== image.sh: $* ($(date +%T))"; }

if ! "${PODMAN[@]}" image exists "$BASE"; then
  tarball=$CACHE/debian-bookworm-slim-$(dpkg --print-architecture).tar
  if [[ ! -s $tarball ]]; then
    step "making $BASE with mmdebstrap (no registry needed)"
    mkdir -p "$CACHE"
    # merged-usr as debootstrap sets it up (directory symlinks and usr-is-merged; otherwise
    # usrmerge comes in and pulls in perl), and the slim image's dpkg filters: no docs, man pages
    # or translations.
    mmdebstrap --variant=minbase --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
      --aptopt='Acquire::Languages "none"' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      bookworm "$tarball.tmp" \
      "deb $MIRROR/debian bookworm main" \
      "deb $MIRROR/debian bookworm-updates main" \
      "deb $MIRROR/debian-security bookworm-security main"
    mv "$tarball.tmp" "$tarball"
  fi
  step "importing $tarball as $BASE"
  "${PODMAN[@]}" import --change 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null
fi

step "building $IMAGE:$VERSION"
revision=$(git describe --always --dirty 2>/dev/null || echo unknown)
"${PODMAN[@]}" build --network host --layers --pull=never \
  --build-arg VERSION="$VERSION" --label org.opencontainers.image.revision="$revision" \
  -t "$IMAGE:$VERSION" -t "$IMAGE:latest" -f Dockerfile .
"${PODMAN[@]}" image ls --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE:$VERSION"
if [[ -n $save ]]; then
  step "saving to $save"
  rm -f "$save"
  "${PODMAN[@]}" save --format docker-archive -o "$save" "$IMAGE:$VERSION" "$IMAGE:latest"
fi
