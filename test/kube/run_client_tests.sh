#!/usr/bin/env bash
# ctest e2e_kube_client: starts fake_apiserver.py (HTTPS with a CA made here, client certificates
# accepted) and runs the kube client/informer tests against it. Usage: run_client_tests.sh BINARY [doctest args]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$1
shift
source "$here/lib.sh"
work=$(mktemp -d /tmp/kmesh-kube-test.XXXXXX)
cleanup() {
    kube_fake_stop
    rm -rf "$work"
}
trap cleanup EXIT
kube_fake_start "$work/server" --fixtures "$here/fixtures" --client-ca "$work/server/ca.crt"
"$bin" "$@"
