#!/usr/bin/env python3
"""Bytes of the kernel-native map entries (bpf/kmesh_abi.h, ABI v8) for the e2e scripts, which
write them with bpftool (native_lib.sh wraps each subcommand). Input values come as bpftool -j
JSON on stdin; output is hex bytes separated by spaces, as `bpftool map update ... hex` takes them.

  hex-le32 N                         a u32 key, host (little-endian) order
  fe-key IPV4 [PORT]                 struct kmesh_frontend_key (IPv4-mapped address, port 80)
  fe-value ID FLAGS [TPORT] [LIMIT]  struct kmesh_frontend_value (target port 8080)
  split-value [SVC:CUM ...]          struct kmesh_split_value, name hash 0 (not the agent's)
  limit-value B F INTERVAL_NS        struct kmesh_limit_cfg, name hash 0
  u32 OFFSET                         the u32 at OFFSET of a looked-up value (stdin)
  patch SPEC...                      a looked-up value (stdin) with fields changed; SPEC is
                                     OFFSET:FMT=V (set) or OFFSET:FMT|=V (or), FMT a struct format
  find-backend IPV4                  the key of the km_backend entry with that IPv4 (stdin: a dump)
"""
import ipaddress
import json
import struct
import sys


def hexs(b):
    return " ".join("%02x" % x for x in b)


def value_in():
    return bytearray(int(x, 16) for x in json.load(sys.stdin)["value"])


def main(cmd, *a):
    if cmd == "hex-le32":
        return hexs(struct.pack("<I", int(a[0])))
    if cmd == "fe-key":
        port = int(a[1]) if len(a) > 1 else 80
        return hexs(bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(a[0]).packed + struct.pack("!H", port) + bytes(2))
    if cmd == "fe-value":
        tport = int(a[2]) if len(a) > 2 else 8080
        limit = int(a[3]) if len(a) > 3 else 0
        return hexs(struct.pack("<I", int(a[0])) + struct.pack("!H", tport) + struct.pack("<HII", int(a[1]), limit, 0))
    if cmd == "split-value":
        pairs = [tuple(map(int, x.split(":"))) for x in a]
        svcs = [p[0] for p in pairs] + [0] * (16 - len(pairs))
        cums = [p[1] for p in pairs] + [0] * (16 - len(pairs))
        total = pairs[-1][1] if pairs else 0
        return hexs(struct.pack("<II16I16IQ", len(pairs), total, *svcs, *cums, 0))
    if cmd == "limit-value":
        return hexs(struct.pack("<QQQQ", int(a[0]), int(a[1]), int(a[2]), 0))
    if cmd == "u32":
        return str(struct.unpack_from("<I", value_in(), int(a[0]))[0])
    if cmd == "patch":
        v = value_in()
        for spec in a:
            where, val = spec.split("=")
            off, fmt = where.split(":")
            off, orr = int(off), fmt.endswith("|")
            fmt = fmt.rstrip("|")
            n = int(val) | (struct.unpack_from(fmt, v, off)[0] if orr else 0)
            struct.pack_into(fmt, v, off, n)
        return hexs(v)
    if cmd == "find-backend":
        want = ipaddress.IPv4Address(a[0]).packed
        for e in json.load(sys.stdin):
            v = bytes(int(x, 16) for x in e["value"])
            if v[12:16] == want:
                return " ".join(e["key"]).replace("0x", "")
        sys.exit("no backend " + a[0])
    sys.exit(__doc__)


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
