#!/usr/bin/env bash
# deploy_manifests / deploy_daemon_flags: renders every kustomize overlay of deploy/ offline with
# kubectl's built-in kustomize and validates the result (validate.mjs says what is checked).
#   deploy_manifests.sh SRC_DIR WORK_DIR [KMESH_DAEMON]
# The validators (kubernetes-models, yaml; pinned by package-lock.json) are installed with
# `npm ci` into WORK_DIR/npm, again only when the lock file changes. With KMESH_DAEMON, its
# --help is the oracle for the flags and default paths the manifests rely on.
set -euo pipefail
src=$1 work=$2 daemon=${3:-}
here=$(cd "$(dirname "$0")" && pwd)

for tool in kubectl node npm; do
  command -v $tool >/dev/null || { echo "SKIP: $tool is not installed (install/deps.sh; kubectl: see there)"; exit 77; }
done

npmdir=$work/npm
mkdir -p "$npmdir"
if ! cmp -s "$here/package-lock.json" "$npmdir/package-lock.json" || [[ ! -d $npmdir/node_modules ]]; then
  cp "$here/package.json" "$here/package-lock.json" "$npmdir/"
  (cd "$npmdir" && npm ci --no-audit --no-fund --loglevel=error)
fi

rendered=()
render() {  # name dir
  local out=$work/rendered-$1.yaml
  kubectl kustomize "$2" >"$out"
  rendered+=("$1=$out")
}
render default "$src/deploy"
for d in "$src"/deploy/overlays/*/; do
  render "$(basename "$d")" "$d"
done
# deploy/ is the istiod overlay, unchanged.
cmp -s "$work/rendered-default.yaml" "$work/rendered-istiod.yaml" ||
  { echo "FAIL: kubectl kustomize deploy/ is not the istiod overlay" >&2; exit 1; }

args=(--modules "$npmdir" --src "$src")
if [[ -n $daemon ]]; then
  "$daemon" --help >"$work/daemon-help.txt"
  "$daemon" cni --help >>"$work/daemon-help.txt" 2>/dev/null || true
  args+=(--daemon-help "$work/daemon-help.txt")
fi
node "$here/validate.mjs" "${args[@]}" "${rendered[@]}"
