#!/usr/bin/env python3
"""Traffic with known byte counts for the telemetry tests: the test's oracle for Istio's TCP series
is what this tool sent and received, counted here, not by the code under test.

  telemetry_tool.py serve PORT RESP_BYTES [--log FILE]
      Dual-stack listener. Per connection: reads the request to EOF, answers RESP_BYTES bytes and
      closes. Appends "<request bytes received> <response bytes sent>" per connection to FILE.
  telemetry_tool.py connect ADDR PORT N REQ_BYTES RESP_BYTES [--hold-until FILE] [--timeout S]
      N connections, one after the other. Each sends REQ_BYTES (then, with --hold-until, waits until
      FILE exists, at most 60 s, printing "holding" once), shuts its sending side, reads the answer to
      EOF and checks it is RESP_BYTES long. Prints one line per connection ("ok" or "error <reason>")
      and a summary "connections=N ok=K sent=S received=R"; exits 1 if any connection failed.
"""
import os
import socket
import sys
import threading
import time


def serve(port, resp, log):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(1024)
    lock = threading.Lock()
    payload = b"r" * resp

    def handle(c):
        got = 0
        try:
            c.settimeout(90)
            while True:
                b = c.recv(65536)
                if not b:
                    break
                got += len(b)
            c.sendall(payload)
            sent = resp
        except OSError:
            sent = -1
        finally:
            c.close()
        if log:
            with lock, open(log, "a") as f:
                f.write(f"{got} {sent}\n")

    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def connect(addr, port, n, req, resp, hold, timeout):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    payload = b"q" * req
    ok = sent = received = 0
    for _ in range(n):
        try:
            c = socket.socket(family, socket.SOCK_STREAM)
            c.settimeout(timeout)
            c.connect((addr, port))
            c.sendall(payload)
            sent += req
            if hold:
                print("holding", flush=True)
                deadline = time.monotonic() + 60
                while not os.path.exists(hold) and time.monotonic() < deadline:
                    time.sleep(0.05)
            c.shutdown(socket.SHUT_WR)
            got = 0
            while True:
                b = c.recv(65536)
                if not b:
                    break
                got += len(b)
            received += got
            c.close()
            if got != resp:
                print(f"error short-answer {got}", flush=True)
                continue
            ok += 1
            print("ok", flush=True)
        except OSError as e:
            print(f"error {e.__class__.__name__} {e}", flush=True)
    print(f"connections={n} ok={ok} sent={sent} received={received}", flush=True)
    return 0 if ok == n else 1


def main():
    a = sys.argv[1:]
    opt = {}
    for name in ("--log", "--hold-until", "--timeout"):
        if name in a:
            i = a.index(name)
            opt[name] = a[i + 1]
            del a[i:i + 2]
    if len(a) == 3 and a[0] == "serve":
        serve(int(a[1]), int(a[2]), opt.get("--log"))
    elif len(a) == 6 and a[0] == "connect":
        sys.exit(connect(a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), opt.get("--hold-until"),
                         float(opt.get("--timeout", 10))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
