#!/usr/bin/env python3
"""TCP client and server with known byte counts, for the telemetry tests (e2e_telemetry_kernel.sh).

  conn_tool.py serve PORT...
      Dual-stack listeners. Per connection: reads a 17-byte header (mode, request length, response
      length, big-endian), then the request, sends the response, then waits for the client's EOF
      and closes.
  conn_tool.py once HOST PORT REQ RESP [COUNT]
      COUNT connections one after the other: header + REQ bytes out, RESP bytes in, close. Prints
      "ok <local-port> <sent> <received>" per connection (sent includes the 17-byte header), or
      "error <errno-name>".
  conn_tool.py hold HOST PORT REQ RESP RELEASE-FILE
      One connection that stays open after the exchange until RELEASE-FILE exists; prints the
      "ok ..." line (flushed) as soon as the exchange is done, then "closed" at the end.
"""
import errno
import os
import socket
import struct
import sys
import threading
import time

HEADER = struct.Struct(">cQQ")


def recv_exact(sock, n):
    got = 0
    while got < n:
        chunk = sock.recv(min(65536, n - got))
        if not chunk:
            raise ConnectionError("short read: %d of %d" % (got, n))
        got += len(chunk)
    return got


def handle(conn):
    try:
        hdr = b""
        while len(hdr) < HEADER.size:
            chunk = conn.recv(HEADER.size - len(hdr))
            if not chunk:
                return
            hdr += chunk
        _, req, resp = HEADER.unpack(hdr)
        recv_exact(conn, req)
        conn.sendall(b"r" * resp)
        while conn.recv(65536):  # the client closes first: its FIN, then ours
            pass
    except OSError:
        pass
    finally:
        conn.close()


def serve(port):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(1024)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def exchange(host, port, req, resp):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam)
    s.settimeout(10)
    s.connect((host, port))
    local_port = s.getsockname()[1]
    s.sendall(HEADER.pack(b"x", req, resp) + b"q" * req)
    recv_exact(s, resp)
    return s, local_port


def once(host, port, req, resp, count):
    for _ in range(count):
        try:
            s, lp = exchange(host, port, req, resp)
            s.close()
            print("ok %d %d %d" % (lp, HEADER.size + req, resp), flush=True)
        except OSError as e:
            print("error %s" % errno.errorcode.get(e.errno, str(e)), flush=True)


def hold(host, port, req, resp, release):
    s, lp = exchange(host, port, req, resp)
    print("ok %d %d %d" % (lp, HEADER.size + req, resp), flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    s.close()
    print("closed", flush=True)


def main():
    a = sys.argv[1:]
    if a[0] == "serve":
        ports = [int(p) for p in a[1:]]
        for p in ports[1:]:
            threading.Thread(target=serve, args=(p,), daemon=True).start()
        serve(ports[0])
    elif a[0] == "once":
        once(a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]) if len(a) > 5 else 1)
    elif a[0] == "hold":
        hold(a[1], int(a[2]), int(a[3]), int(a[4]), a[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
