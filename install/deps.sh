#!/usr/bin/env bash
# Installs the Debian packages Kmesh-C++ needs. Groups (default: all of them):
#   build  compile kmesh-daemon, kmesh-cni and kmeshctl (the Dockerfile's builder stage runs
#          `install/deps.sh build`, so this is the one list of build packages)
#   all    build + formatting, fuzzing, the tests, the demo, the image and the manifests
# `install/deps.sh --print build` prints a group's packages instead of installing them.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

BUILD_PKGS=(
  build-essential cmake pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  rapidjson-dev libyaml-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev libcurl4-openssl-dev
  libgrpc++-dev libabsl-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev
  libnl-3-dev libnl-route-3-dev libnl-xfrm-3-dev doctest-dev ccache
)
DEV_PKGS=(
  clang-format
  # fuzzing (libFuzzer with clang's sanitizer runtimes)
  libfuzzer-14-dev libclang-rt-14-dev
  # tests and demo: real CNI plugins, namespaces, cgroups
  containernetworking-plugins iproute2 util-linux procps python3 curl openssl
  # tests: promtool (validates the /metrics text)
  prometheus
  # image: install/image.sh builds the Debian base image locally (mmdebstrap) and the image
  # with podman, which runs on runc here (crun refuses hybrid cgroups); uidmap for rootless use
  podman buildah mmdebstrap runc uidmap
)

print=false
if [[ ${1:-} == --print ]]; then
  print=true
  shift
fi
case ${1:-all} in
  build) PKGS=("${BUILD_PKGS[@]}") ;;
  all) PKGS=("${BUILD_PKGS[@]}" "${DEV_PKGS[@]}") ;;
  *) echo "usage: $0 [--print] [build|all]" >&2; exit 2 ;;
esac
# deploy_manifests and envoy_api_subset tests: node + npm (npm ci of pinned packages: the
# validators; the Envoy API protos of @grpc/grpc-js-xds, test/proto). Nodesource's nodejs
# bundles npm and conflicts with Debian's npm package: ask for npm only when it is missing.
# kubectl (its built-in kustomize renders deploy/) is not packaged by Debian 12: the test skips
# without it; see https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/.
if [[ ${1:-all} == all ]] && ! command -v npm >/dev/null; then
  PKGS+=(nodejs npm)
fi

if $print; then
  echo "${PKGS[@]}"
  exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PKGS[@]}"
