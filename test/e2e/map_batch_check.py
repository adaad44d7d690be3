#!/usr/bin/env python3
"""The service maps as the kernel holds them (bpftool -j map dump of each pinned map, raw bytes)
against what a JSON config of bench/mesh_config.py's shape must give, computed here from the config
alone: every VIP:port a frontend of its service, each service's IPv4 list holding exactly its
workloads' addresses (dense indices 1..count), one member of weight 1 per (service, workload), and
no other entry in any of these maps.

usage: map_batch_check.py CONFIG.json DUMP_DIR   (DUMP_DIR/km_frontend.json, ... from bpftool)
Prints what differs and exits 1, or prints a summary and exits 0.
"""
import ipaddress
import json
import struct
import sys

PRIOS = 7  # KMESH_PRIO_COUNT
V4 = 0     # KMESH_FAMILY_V4


def load(dump_dir, name):
    with open(f"{dump_dir}/{name}.json") as f:
        entries = json.load(f)
    out = {}
    for e in entries:
        key = bytes(int(b, 16) for b in e["key"])
        value = bytes(int(b, 16) for b in e["value"])
        out[key] = value
    return out


def mapped(ip):
    return ipaddress.IPv6Address("::ffff:" + ip).packed


def main():
    config_path, dump_dir = sys.argv[1], sys.argv[2]
    with open(config_path) as f:
        cfg = json.load(f)
    frontends = load(dump_dir, "km_frontend")
    services = load(dump_dir, "km_service")
    endpoints = load(dump_dir, "km_endpoint")
    backends = load(dump_dir, "km_backend")
    members = load(dump_dir, "km_member")
    problems = []

    workloads_of = {}
    for w in cfg.get("workloads", []):
        for svc in w["services"]:
            workloads_of.setdefault(svc, []).append(w["addresses"][0])

    backend_addr = {}
    for k, v in backends.items():
        (bid,) = struct.unpack("<I", k)
        backend_addr[bid] = str(ipaddress.IPv6Address(v[:16]).ipv4_mapped)
        # struct kmesh_backend_value (ABI v8): addr4, addr6, flags, port, pad, name hash. Ambient
        # workloads have no port of their own (KMESH_BACKEND_HAS_PORT, 4, is kernel-native's).
        flags, port, pad = struct.unpack_from("<IHH", v, 32)
        if flags & 4 or port or pad:
            problems.append(f"backend {bid}: flags {flags:#x} port {port} pad {pad}: a per-backend port on an ambient workload")

    want_frontends = want_endpoints = want_members = 0
    for s in cfg["services"]:
        key = f'{s["namespace"]}/{s["hostname"]}'
        ips = sorted(workloads_of.get(key, []))
        service_id = None
        for vip in s["addresses"]:
            for p in s["ports"]:
                want_frontends += 1
                fk = mapped(vip) + struct.pack(">H", p["service_port"]) + b"\0\0"
                fv = frontends.get(fk)
                if fv is None:
                    problems.append(f"{key}: no frontend {vip}:{p['service_port']}")
                    continue
                # struct kmesh_frontend_value (ABI v7): service id, target port, flags, limit id, pad.
                sid, target, flags, limit_id, pad = struct.unpack("<IHHII", fv)
                if socket_port(target) != p.get("target_port", p["service_port"]) or flags or limit_id or pad:
                    problems.append(f"{key}: frontend {vip}:{p['service_port']} -> port {socket_port(target)} "
                                    f"flags {flags} limit {limit_id} pad {pad}")
                if service_id not in (None, sid):
                    problems.append(f"{key}: frontends name services {service_id} and {sid}")
                service_id = sid
        if service_id is None:
            continue
        sv = services.get(struct.pack("<I", service_id))
        if sv is None:
            problems.append(f"{key}: frontend names service {service_id}, which is not in km_service")
            continue
        counts = struct.unpack("<14I", sv[:56])
        count = counts[V4 * PRIOS + 0]
        if count != len(ips) or sum(counts) != count:
            problems.append(f"{key}: counts {counts}, want {len(ips)} IPv4 endpoints at priority 0")
        got, ids = [], set()
        for i in range(1, count + 1):
            ev = endpoints.get(struct.pack("<IHHI", service_id, V4, 0, i))
            if ev is None:
                problems.append(f"{key}: endpoint {i} of {count} missing")
                continue
            (bid,) = struct.unpack("<I", ev)
            ids.add(bid)
            got.append(backend_addr.get(bid, f"missing backend {bid}"))
        if sorted(got) != ips:
            problems.append(f"{key}: endpoints reach {sorted(got)}, want {ips}")
        for bid in ids:
            mv = members.get(struct.pack("<II", service_id, bid))
            if mv is None or struct.unpack("<I", mv[:4])[0] != 1:
                problems.append(f"{key}: backend {bid} not a member of weight 1")
        want_endpoints += len(ips)
        want_members += len(ips)

    totals = {"km_frontend": (len(frontends), want_frontends), "km_service": (len(services), len(cfg["services"])),
              "km_endpoint": (len(endpoints), want_endpoints), "km_backend": (len(backends), len(cfg.get("workloads", []))),
              "km_member": (len(members), want_members)}
    for name, (have, want) in totals.items():
        if have != want:
            problems.append(f"{name} holds {have} entries, want {want}")
    for p in problems[:20]:
        print(p)
    if problems:
        print(f"{len(problems)} problems")
        return 1
    print("maps as expected: " + ", ".join(f"{n} {h}" for n, (h, _) in totals.items()))
    return 0


def socket_port(network_order):
    return struct.unpack(">H", struct.pack("<H", network_order))[0]


if __name__ == "__main__":
    sys.exit(main())
