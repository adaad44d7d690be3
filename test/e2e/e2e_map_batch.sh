#!/usr/bin/env bash
# Batched map writes (issue 12) against the kernel: the agent programs a JSON config of 400 services
# (800 workloads), then a change that deletes 100 services and a workload of every third one (the
# batched removal path: slots moved into holes, counts shrunk, services and members deleted). After
# each, the kernel's maps (bpftool dumps) are checked against what the config must give, computed
# independently (map_batch_check.py); then a fresh agent with --map-batch off (one bpf() call per
# entry) programs the same two configs, and its maps must be byte for byte the batched ones.
source "$(dirname "$0")/lib.sh"
e2e_init "${1:-build}"
AGENT_FLAGS="--max-services 512 --max-endpoints 2048 --max-backends 2048 --max-frontends 1024 --max-members 2048"
MAPS=(km_frontend km_service km_endpoint km_backend km_member km_port)

python3 "$E2E_DIR/../../bench/mesh_config.py" --json 400 10.244.2.2 >"$TMP/a.json"
python3 - "$TMP/a.json" >"$TMP/b.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
gone = {f"svc-{i}" for i in range(100, 200)}
cfg["services"] = [s for s in cfg["services"] if s["name"] not in gone]
hosts = {f'{s["namespace"]}/{s["hostname"]}' for s in cfg["services"]}
ws = []
for w in cfg["workloads"]:
    uid = w["uid"]
    # A workload of every third filler service leaves: a hole in its list.
    if uid.endswith("-a") and int(uid.split("svc-")[1][:-2]) % 3 == 0:
        continue
    w["services"] = {k: v for k, v in w["services"].items() if k in hosts}
    if w["services"]:
        ws.append(w)
cfg["workloads"] = ws
json.dump(cfg, sys.stdout)
PY

dump_maps() { # <dir>
    local dir=$1 m pin
    mkdir -p "$dir"
    for m in "${MAPS[@]}"; do
        pin=$(ls -d "$BPFFS"/kmesh/maps/v*/"$m" | head -1)
        bpftool -j map dump pinned "$pin" >"$dir/$m.json"
    done
}

program() { # <config> <generation> <dump dir>
    cp "$1" "$TMP/mesh.conf.tmp" && mv "$TMP/mesh.conf.tmp" "$TMP/mesh.conf"
    wait_log "config generation $2 applied" 1
    dump_maps "$3"
}

cp "$TMP/a.json" "$TMP/mesh.conf"
agent_start "$TMP/mesh.conf"
wait_log "config generation 1 applied" 1
dump_maps "$TMP/batched-a"
check "batched: 400 services in the kernel maps as the config says" \
    python3 "$E2E_DIR/map_batch_check.py" "$TMP/a.json" "$TMP/batched-a"
grep -q "read and parsed in .* (.* bytes, JSON)" "$TMP/agent.log" && ok "the config was read as JSON" ||
    not_ok "the config was read as JSON"
program "$TMP/b.json" 2 "$TMP/batched-b"
check "batched: after deleting 100 services (and their workloads) and a workload of every third service, the maps are as the config says" \
    python3 "$E2E_DIR/map_batch_check.py" "$TMP/b.json" "$TMP/batched-b"
calls=$(grep -c "no batch" "$TMP/agent.log" || true)
check "the kernel took every batch (no fallback logged)" test "$calls" = 0
agent_stop

# The same two configs, one bpf() call per entry, into fresh maps.
rm -rf "$BPFFS/kmesh"
: >"$TMP/agent.log"
AGENT_STARTS=0
cp "$TMP/a.json" "$TMP/mesh.conf"
AGENT_FLAGS="$AGENT_FLAGS --map-batch off" agent_start "$TMP/mesh.conf"
wait_log "config generation 1 applied" 1
dump_maps "$TMP/single-a"
program "$TMP/b.json" 2 "$TMP/single-b"
agent_stop
for m in "${MAPS[@]}"; do
    check "$m after the first config: batched and one call per entry hold the same bytes" \
        cmp <(python3 -c 'import json,sys; print(sorted((e["key"], e["value"]) for e in json.load(open(sys.argv[1]))))' "$TMP/batched-a/$m.json") \
        <(python3 -c 'import json,sys; print(sorted((e["key"], e["value"]) for e in json.load(open(sys.argv[1]))))' "$TMP/single-a/$m.json")
    check "$m after the change: batched and one call per entry hold the same bytes" \
        cmp <(python3 -c 'import json,sys; print(sorted((e["key"], e["value"]) for e in json.load(open(sys.argv[1]))))' "$TMP/batched-b/$m.json") \
        <(python3 -c 'import json,sys; print(sorted((e["key"], e["value"]) for e in json.load(open(sys.argv[1]))))' "$TMP/single-b/$m.json")
done
