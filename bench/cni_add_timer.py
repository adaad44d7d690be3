#!/usr/bin/env python3
"""Times kmesh-cni invocations exec-to-exit: posix_spawn (vfork+exec, no shell) to waitpid, with the
config on stdin from a file. Between timed ADDs an untimed DEL resets the attachment, so every
enrolled ADD attaches for real.

usage: cni_add_timer.py --plugin PATH --config FILE --env K=V... --runs N [--del-between]
Prints one JSON object: {"runs", "p50_us", "p99_us", "min_us", "max_us", "failures"}.
"""
import argparse
import json
import os
import time


def run(plugin, config, env, command):
    e = dict(env, CNI_COMMAND=command)
    with open(config, "rb") as stdin, open(os.devnull, "wb") as out:
        t0 = time.perf_counter_ns()
        pid = os.posix_spawn(plugin, [plugin], e, file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin.fileno(), 0), (os.POSIX_SPAWN_DUP2, out.fileno(), 1)])
        _, status = os.waitpid(pid, 0)
        t1 = time.perf_counter_ns()
    return (t1 - t0) // 1000, os.waitstatus_to_exitcode(status)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--del-config")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in a.env)
    samples, failures = [], 0
    for _ in range(a.runs):
        if a.del_config:
            run(a.plugin, a.del_config, env, "DEL")
        us, rc = run(a.plugin, a.config, env, "ADD")
        failures += rc != 0
        samples.append(us)
    samples.sort()
    pct = lambda p: samples[min(len(samples) - 1, int(round(p / 100 * len(samples) + 0.5)) - 1)]
    print(json.dumps({"runs": len(samples), "p50_us": pct(50), "p99_us": pct(99), "min_us": samples[0],
                      "max_us": samples[-1], "failures": failures}))


if __name__ == "__main__":
    main()
