#!/usr/bin/env python3
"""SIGKILLs the agent in the middle of a config apply, judged from its own /metrics.

    kill_mid_apply.py --admin HOST:PORT --pid PID --writes K [--base-from-agent] [--timeout S]

With --base-from-agent it first reads the running agent's kmesh_map_writes_total and
kmesh_config_generation, prints "armed" (the caller then hands the agent the large config) and
waits for the apply to start; without it the agent is new and the counters start at 0 (its
first apply is under way or about to be). Once K map writes past the base are counted while the
generation has not moved (the apply is not finished), it kills the agent and prints
"killed after N map writes". If the generation moves first, the apply finished before it could
be interrupted: it prints "missed" and exits 2.
"""
import argparse
import http.client
import os
import re
import signal
import sys
import time


def read(addr):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=1)
    try:
        c.request("GET", "/metrics")
        body = c.getresponse().read().decode()
    finally:
        c.close()
    writes = int(re.search(r"^kmesh_map_writes_total (\d+)$", body, re.M).group(1))
    gen = int(re.search(r"^kmesh_config_generation (\d+)$", body, re.M).group(1))
    return writes, gen


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--writes", type=int, required=True)
    ap.add_argument("--base-from-agent", action="store_true")
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    base_writes, base_gen = 0, 0
    if args.base_from_agent:
        base_writes, base_gen = read(args.admin)
    print("armed", flush=True)
    while time.monotonic() < deadline and alive(args.pid):
        try:
            writes, gen = read(args.admin)
        except (OSError, AttributeError, http.client.HTTPException):
            time.sleep(0.002)  # not listening yet, or between answers
            continue
        if gen > base_gen:
            print("missed: generation %d applied before %d writes were seen (at %d)"
                  % (gen, args.writes, writes - base_writes), flush=True)
            return 2
        if writes - base_writes >= args.writes:
            os.kill(args.pid, signal.SIGKILL)
            print("killed after %d map writes" % (writes - base_writes), flush=True)
            return 0
    print("gave up: the agent exited or the apply never reached %d writes" % args.writes, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
