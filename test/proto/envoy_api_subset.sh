#!/usr/bin/env bash
# envoy_api_subset: proto/'s vendored Envoy subsets checked field by field against upstream.
#   envoy_api_subset.sh CHECKER OURS.pb WORK_DIR [FIXTURE.json...]
# Upstream is the Envoy API that @grpc/grpc-js-xds ships (deps/envoy-api, deps/xds, deps/googleapis,
# deps/protoc-gen-validate), pinned with integrity hashes by package-lock.json and installed with
# `npm ci` into WORK_DIR/npm, again only when the lock file changes (as test/deploy does). protoc
# builds a descriptor set of the upstream files our subset mirrors; CHECKER (proto_subset_check)
# compares every message, field, enum value and RPC we declare, then parses each fixture strictly
# with the upstream schema. Without node/npm/protoc or the registry: exit 77 (ctest SKIP), saying why.
set -euo pipefail
for tool in node npm protoc; do
  command -v $tool >/dev/null || { echo "SKIP: $tool is not installed (install/deps.sh)"; exit 77; }
done
checker=$1 ours=$2
work=$(mkdir -p "$3" && cd "$3" && pwd)
shift 3
here=$(cd "$(dirname "$0")" && pwd)

npmdir=$work/npm
mkdir -p "$npmdir"
if ! cmp -s "$here/package-lock.json" "$npmdir/package-lock.json" || [[ ! -d $npmdir/node_modules ]]; then
  rm -rf "$npmdir/node_modules" "$npmdir/package-lock.json"
  cp "$here/package.json" "$here/package-lock.json" "$npmdir/"
  # --ignore-scripts: only the .proto files are wanted; nothing of the package runs.
  if ! (cd "$npmdir" && timeout 120 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error); then
    rm -f "$npmdir/package-lock.json"  # install again next time
    echo "SKIP: npm ci of @grpc/grpc-js-xds failed (no registry?): the upstream oracle is unavailable"
    exit 77
  fi
fi
deps=$npmdir/node_modules/@grpc/grpc-js-xds/deps
[[ -d $deps/envoy-api/envoy ]] || { echo "FAIL: $deps/envoy-api is missing from the package"; exit 1; }

# The package's validate.proto predates StringRules.ignore_empty (26), which the Envoy files use in
# options. Options do not change a message's fields; a copy with that one field added lets protoc
# read the files. Nothing else of upstream is touched.
shim=$work/shim
mkdir -p "$shim/validate"
sed '/optional bool strict = 25/a\  optional bool ignore_empty = 26;' \
  "$deps/protoc-gen-validate/validate/validate.proto" >"$shim/validate/validate.proto"
grep -q 'ignore_empty = 26' "$shim/validate/validate.proto" ||
  { echo "FAIL: could not patch validate.proto (layout changed?)"; exit 1; }

# The upstream files that define what proto/ declares (proto/README.md lists the mapping).
up=$work/upstream.pb
(cd "$deps" && protoc -I"$shim" -Ienvoy-api -Ixds -Igoogleapis -Iprotoc-gen-validate \
  --include_imports --descriptor_set_out="$up" \
  envoy/config/core/v3/base.proto envoy/config/core/v3/address.proto \
  envoy/config/core/v3/health_check.proto \
  envoy/config/listener/v3/listener.proto envoy/config/listener/v3/listener_components.proto \
  envoy/config/route/v3/route.proto envoy/config/route/v3/route_components.proto \
  envoy/config/cluster/v3/cluster.proto envoy/config/cluster/v3/circuit_breaker.proto \
  envoy/config/cluster/v3/outlier_detection.proto \
  envoy/config/endpoint/v3/endpoint.proto envoy/config/endpoint/v3/endpoint_components.proto \
  envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto \
  envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto \
  envoy/extensions/filters/network/local_ratelimit/v3/local_rate_limit.proto \
  envoy/type/v3/token_bucket.proto udpa/type/v1/typed_struct.proto xds/type/v3/typed_struct.proto \
  envoy/service/discovery/v3/discovery.proto envoy/service/discovery/v3/ads.proto \
  `# not mirrored; the fixtures use them (HCM router, listener filters, upstream TLS)` \
  envoy/extensions/filters/http/router/v3/router.proto \
  envoy/extensions/transport_sockets/tls/v3/tls.proto \
  envoy/extensions/filters/listener/http_inspector/v3/http_inspector.proto \
  envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto)

"$checker" compare "$up" "$ours"
if (($# > 0)); then
  "$checker" fixtures "$up" "$@"
fi
