#!/usr/bin/env python3
"""Clients that hold TCP connections open, for the kernel-native tests (e2e_native_cb.sh).

  native_tool.py hold HOST PORT N RELEASE-FILE
      N connections one after the other, each socket kept open (a failed one too: its slot must
      come back without close()); prints "ok" or "error <ERRNO>" per connection (flushed), then
      waits until RELEASE-FILE exists, closes them all and prints "closed".
  native_tool.py burst HOST PORT P HOLD-SECONDS
      P threads connect at the same instant (a barrier), keep what connected open for
      HOLD-SECONDS, then close; prints one line "ok K ECONNREFUSED R" plus any other errno.
  native_tool.py rate HOST PORT THREADS SECONDS
      THREADS threads connect and close in a loop (10 ms apart each) for SECONDS; prints
      "ok K ECONNREFUSED R" plus any other errno, then "first-ok-ms F" (when the first accepted
      connect started, from the common start).
"""
import errno
import os
import socket
import sys
import threading
import time


def connect(host, port, keep_failed=False):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return s, "ok"
    except OSError as e:
        if not keep_failed:
            s.close()
            s = None
        return s, "error " + errno.errorcode.get(e.errno, str(e.errno))


def hold(host, port, n, release):
    held = []
    for _ in range(n):
        s, res = connect(host, port, keep_failed=True)
        held.append(s)
        print(res, flush=True)
    while not os.path.exists(release):
        time.sleep(0.02)
    for s in held:
        s.close()
    print("closed", flush=True)


def burst(host, port, p, hold_s):
    barrier = threading.Barrier(p)
    results, held, lock = [], [], threading.Lock()

    def one():
        barrier.wait()
        s, res = connect(host, port)
        with lock:
            results.append(res)
            if s:
                held.append(s)

    threads = [threading.Thread(target=one) for _ in range(p)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(hold_s)
    for s in held:
        s.close()
    counts = {}
    for r in results:
        key = "ok" if r == "ok" else r.split()[1]
        counts[key] = counts.get(key, 0) + 1
    out = ["ok %d" % counts.pop("ok", 0), "ECONNREFUSED %d" % counts.pop("ECONNREFUSED", 0)]
    out += ["%s %d" % kv for kv in sorted(counts.items())]
    print(" ".join(out), flush=True)


def rate(host, port, threads, seconds):
    results, lock = [], threading.Lock()
    start = time.monotonic()
    end = start + seconds

    def loop():
        while time.monotonic() < end:
            t = time.monotonic()
            s, res = connect(host, port)
            if s:
                s.close()
            with lock:
                results.append((t - start, res))
            time.sleep(0.01)

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    counts = {}
    for _, r in results:
        key = "ok" if r == "ok" else r.split()[1]
        counts[key] = counts.get(key, 0) + 1
    out = ["ok %d" % counts.pop("ok", 0), "ECONNREFUSED %d" % counts.pop("ECONNREFUSED", 0)]
    out += ["%s %d" % kv for kv in sorted(counts.items())]
    print(" ".join(out), flush=True)


def main():
    cmd = sys.argv[1]
    if cmd == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif cmd == "rate":
        rate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif cmd == "burst":
        burst(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
