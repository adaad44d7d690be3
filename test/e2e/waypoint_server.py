#!/usr/bin/env python3
"""Test peers for the waypoint end-to-end test (python3 stdlib only).

  waypoint_server.py waypoint PORT LOG     a stand-in for Kmesh's waypoint: reads the original-
        destination TLV strictly (reference §3: 0x01, BE32 length 6 or 18, address, port, then
        0xfe and a BE32 zero), then proxies the rest of the connection to that destination. Anything
        else is rejected (the connection is reset) and logged. One JSON line per connection in LOG:
        {"event": "proxied", "orig": "10.96.0.10:80", "family": 4, "bytes": N, "sha256": H}
        {"event": "reject", "reason": "..."}
  waypoint_server.py sink NAME PORT        reads each connection to EOF, answers "NAME N SHA256"
  waypoint_server.py client ADDR PORT SIZE [--mapped] [--sendfile] [--timeout S]
        connects (--mapped: an AF_INET6 socket to ::ffff:ADDR), sends SIZE deterministic bytes in
        ONE first write (send() of the whole buffer, or one sendfile() of a file), half-closes,
        and prints "ok NAME" when the sink's count and hash match what was sent, "mismatch ..."
        when not, "error ERRNO_NAME" when connect/send fails, "closed" when the peer hung up.
  waypoint_server.py raw ADDR PORT HEX     sends the bytes, half-closes, prints what came back
        ("closed" when nothing, "reset" on a reset)
"""

import errno
import hashlib
import json
import os
import random
import select
import socket
import struct
import sys
import tempfile
import threading
import traceback

LOG_LOCK = threading.Lock()


def log(path, **entry):
    with LOG_LOCK, open(path, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")


def listener(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(128)
    return s


def read_exact(c, n):
    buf = b""
    while len(buf) < n:
        chunk = c.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def parse_tlv(c):
    """Returns (family, ip text, port) or raises ValueError naming what is wrong."""
    head = read_exact(c, 5)
    if head[0] != 0x01:
        raise ValueError(f"first TLV type {head[0]:#04x}, want 0x01 (original destination)")
    length = struct.unpack(">I", head[1:5])[0]
    if length not in (6, 18):
        raise ValueError(f"original destination length {length}, want 6 or 18")
    value = read_exact(c, length)
    family = 4 if length == 6 else 6
    ip = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, value[:-2])
    port = struct.unpack(">H", value[-2:])[0]
    end = read_exact(c, 5)
    if end != b"\xfe\x00\x00\x00\x00":
        raise ValueError(f"end marker {end.hex()}, want fe00000000")
    return family, ip, port


def reset(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def pump(src, dst, digest, counter):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if digest is not None:
                digest.update(data)
                counter[0] += len(data)
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def waypoint_conn(c, logfile):
    try:
        family, ip, port = parse_tlv(c)
    except (ValueError, EOFError, OSError) as e:
        log(logfile, event="reject", reason=str(e))
        reset(c)
        return
    orig = f"{ip}:{port}" if family == 4 else f"[{ip}]:{port}"
    try:
        up = socket.create_connection((ip, port), timeout=5)
        up.settimeout(None)
    except OSError as e:
        log(logfile, event="upstream_failed", orig=orig, error=errno.errorcode.get(e.errno, str(e)))
        reset(c)
        return
    digest, counter = hashlib.sha256(), [0]
    back = threading.Thread(target=pump, args=(up, c, None, None), daemon=True)
    back.start()
    pump(c, up, digest, counter)
    back.join(10)
    log(logfile, event="proxied", orig=orig, family=family, bytes=counter[0], sha256=digest.hexdigest())
    c.close()
    up.close()


def serve(port, handler, *args):
    s = listener(port)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c, *args), daemon=True).start()


def sink_conn(c, name):
    digest, n = hashlib.sha256(), 0
    try:
        while True:
            data = c.recv(65536)
            if not data:
                break
            digest.update(data)
            n += len(data)
        c.sendall(f"{name} {n} {digest.hexdigest()}\n".encode())
    except OSError:
        pass
    c.close()


def payload(size):
    return random.Random(size).randbytes(size)


def open_client(addr, port, mapped, timeout):
    if mapped:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        target = ("::ffff:" + addr, port)
    else:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        target = (addr, port)
    s.settimeout(timeout)
    s.connect(target)
    return s


def client(argv):
    addr, port, size = argv[0], int(argv[1]), int(argv[2])
    mapped, use_sendfile = "--mapped" in argv, "--sendfile" in argv
    timeout = float(argv[argv.index("--timeout") + 1]) if "--timeout" in argv else 5.0
    data = payload(size)
    try:
        s = open_client(addr, port, mapped, timeout)
        if use_sendfile:
            s.settimeout(None)  # blocking: os.sendfile on a socket with a timeout answers EAGAIN
            with tempfile.TemporaryFile() as f:
                f.write(data)
                f.flush()
                sent = 0
                while sent < size:  # the first call carries the whole file
                    try:
                        n = os.sendfile(s.fileno(), f.fileno(), sent, size - sent)
                    except BlockingIOError:
                        # tcp_bpf's splice path can answer EAGAIN on a blocking socket whose send
                        # buffer is full (docs/waypoint.md): wait until writable, as a
                        # non-blocking sender (nginx, Envoy) does.
                        print(f"sendfile: EAGAIN after {sent} bytes", file=sys.stderr)
                        select.select([], [s], [], timeout)
                        continue
                    if n == 0:
                        break
                    sent += n
        else:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    except OSError as e:
        traceback.print_exc()
        print("error " + errno.errorcode.get(e.errno, str(e)) if e.errno else "error " + str(e))
        return
    text = reply.decode(errors="replace").strip()
    if not text:
        print("closed")
        return
    parts = text.split()
    want = hashlib.sha256(data).hexdigest()
    if len(parts) == 3 and parts[1] == str(size) and parts[2] == want:
        print("ok " + parts[0])
    else:
        print(f"mismatch got '{text}' want {size} {want}")


def raw(argv):
    addr, port, data = argv[0], int(argv[1]), bytes.fromhex(argv[2])
    try:
        s = open_client(addr, port, False, 5.0)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(4096)
        print(reply.decode(errors="replace").strip() or "closed")
    except ConnectionResetError:
        print("reset")
    except OSError as e:
        # The waypoint's RST can land before our shutdown() or recv() runs (a loaded machine):
        # shutdown() on a reset socket fails with ENOTCONN, a send with EPIPE. Both mean reset.
        if e.errno in (errno.ENOTCONN, errno.EPIPE):
            print("reset")
        else:
            print("error " + errno.errorcode.get(e.errno, str(e)))


def main():
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "waypoint":
        serve(int(argv[0]), waypoint_conn, argv[1])
    elif cmd == "sink":
        serve(int(argv[1]), sink_conn, argv[0])
    elif cmd == "client":
        client(argv)
    elif cmd == "raw":
        raw(argv)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
