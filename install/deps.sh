#!/usr/bin/env bash
# Installs every Debian package needed to build Kmesh-C++, run its tests, the demo and the benchmarks.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo

PKGS=(
  # build
  build-essential cmake pkg-config clang llvm bpftool libbpf-dev libelf-dev zlib1g-dev
  rapidjson-dev libyaml-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev libcurl4-openssl-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc libssl-dev
  libnl-3-dev libnl-route-3-dev libnl-xfrm-3-dev doctest-dev clang-format ccache
  # fuzzing (libFuzzer with clang's sanitizer runtimes)
  libfuzzer-14-dev libclang-rt-14-dev
  # tests and demo: real CNI plugins, namespaces, cgroups
  containernetworking-plugins iproute2 util-linux procps python3 curl openssl
  # tests: promtool (validates the /metrics text)
  prometheus
)

$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PKGS[@]}"
