#!/usr/bin/env python3
"""Opens new TCP connections at a steady rate until SIGTERM, one line per connection (to stdout):

    <epoch ms> <v4|v6> ok <answer> <connect+reply ms>
    <epoch ms> <v4|v6> fail <reason> <ms>

(wall-clock milliseconds at the start of the connect, to line up with events the test records).

Each connection is a fresh socket: connect, read the one line the server sends (its identity),
close. The addresses given are used in turn (e.g. a VIP's IPv4 and IPv6 address). Connects are
paced on an absolute schedule (rate per second); a client that falls behind does not burst to catch
up by more than one connection, so the rate measured is the rate offered.

Usage: steady_client.py --rate 200 --port 80 [--timeout 2] ADDR [ADDR...]
"""
import argparse
import errno
import signal
import socket
import sys
import time

stop = False


def on_term(_sig, _frame):
    global stop
    stop = True


def one(addr, port, timeout):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        answer = data.decode(errors="replace").strip()
        if not answer:
            return "fail", "no-reply"
        return "ok", answer.replace(" ", "_")
    except socket.timeout:
        return "fail", "timeout"
    except OSError as e:
        return "fail", errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("addrs", nargs="+")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    interval = 1.0 / args.rate
    start = time.monotonic()
    next_at = start
    i = 0
    out = sys.stdout
    while not stop:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
            continue
        # Behind schedule (a slow connect, a busy machine): go on from now, one connection late.
        next_at = max(next_at + interval, now)
        addr = args.addrs[i % len(args.addrs)]
        i += 1
        wall = time.time()
        t0 = time.monotonic()
        result, what = one(addr, args.port, args.timeout)
        t1 = time.monotonic()
        out.write("%d %s %s %s %.2f\n" % (wall * 1000, "v6" if ":" in addr else "v4", result, what,
                                         (t1 - t0) * 1000))
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
