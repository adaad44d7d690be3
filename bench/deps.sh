#!/usr/bin/env bash
# Installs the benchmark suite's Debian packages (on top of install/deps.sh). Package scripts are
# told not to start services (nginx, haproxy) on the host: the suite runs its own inside namespaces.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
PKGS=(wrk sockperf nginx-light haproxy iptables gnuplot-nox util-linux python3 hyperfine containernetworking-plugins)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
((${#missing[@]})) || exit 0
policy=/usr/sbin/policy-rc.d
created=
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null
    $SUDO chmod +x $policy
    created=1
fi
trap '[[ -n $created ]] && $SUDO rm -f $policy' EXIT
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
