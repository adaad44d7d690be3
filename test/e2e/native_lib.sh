# Helpers shared by the kernel-native e2e scripts (e2e_native_*.sh), which program splits, limits
# and per-backend ports with bpftool until the agent's ADS path writes them. Source after lib.sh
# and set MAPS (the pinned maps directory). The byte layouts live in native_maps.py.
NATIVE_MAPS="python3 $E2E_DIR/native_maps.py"

hex_le32() { $NATIVE_MAPS hex-le32 "$1"; }
# The frontend key of <ipv4> [port, default 80].
fe_key() { $NATIVE_MAPS fe-key "$@"; }
# struct kmesh_frontend_value: <service-or-split id> <flags> [target port 8080] [limit id 0].
fe_value() { $NATIVE_MAPS fe-value "$@"; }
split_value() { $NATIVE_MAPS split-value "$@"; } # <svc:cum>...
# The entry at <key hex...> of <map>, as bpftool -j prints it.
map_lookup() { local map=$1; shift; bpftool -j map lookup pinned "$MAPS/$map" key hex "$@"; }
# The service (or split) id a frontend points at, read from the kernel's map.
service_of() { map_lookup km_frontend $(fe_key "$1") | $NATIVE_MAPS u32 0; }
# Rewrites the entry at <key> of <map> with fields patched (native_maps.py patch specs).
map_patch() { # <map> <key hex as one word> <spec>...
    local map=$1 key=$2 v
    shift 2
    v=$(map_lookup "$map" $key | $NATIVE_MAPS patch "$@") || return 1
    bpftool map update pinned "$MAPS/$map" key hex $key value hex $v
}
