#!/usr/bin/env python3
"""Replays test/authz/decision_table.json through the kernel: for each case, writes the case's
workloads and policies as the agent's config file, waits until the agent applied it, then makes
every check's connection for real from the pod namespace that holds the check's source address
(bound to it), and compares the outcome with the table: allow = the connection is accepted,
deny = it fails with ECONNREFUSED in under a second (sk_lookup dropped the SYN: the kernel answered
with a reset). Sources 10.244.0.21-23 live in an enrolled client pod, 10.244.0.99 in a pod outside
the mesh; servers listen in enrolled pods on 8080 and 9090.

Usage: authz_replay.py <table> <config-path> <agent-log> <first-generation> <netns-of-src-json>
Prints one line per mismatch and a summary; exit 1 on any mismatch.
"""
import json
import subprocess
import sys
import time

CLIENT = r'''
import errno, json, socket, sys, time
out = []
for c in json.loads(sys.argv[1]):
    src, dst = c["src"], c["dst"]
    mapped = dst.startswith("::ffff:") or src.startswith("::ffff:")
    if mapped:  # an IPv4 connection from a dual-stack (AF_INET6) socket
        src = src if src.startswith("::ffff:") else "::ffff:" + src
        dst = dst if dst.startswith("::ffff:") else "::ffff:" + dst
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    s.bind((src, 0))
    t = time.monotonic()
    try:
        s.connect((dst, c["port"]))
        r = "allow"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "timeout"
    out.append({"result": r, "seconds": time.monotonic() - t})
    s.close()
print(json.dumps(out))
'''


def wait_generation(log, n):
    needle = f"config generation {n} applied"
    for _ in range(200):
        with open(log) as f:
            if needle in f.read():
                return True
        time.sleep(0.05)
    return False


def main():
    table_path, config_path, agent_log, gen, netns_json = sys.argv[1:6]
    gen = int(gen)
    netns_of = json.loads(netns_json)  # source address -> netns name
    table = json.load(open(table_path))
    failures = checks = 0
    for case in table["cases"]:
        workloads = {w["uid"]: w for w in table["workloads"]}
        for w in case.get("workloads", []):
            workloads[w["uid"]] = w
        # A marker workload that changes every time, so that each case is a new generation whose
        # "applied" line can be waited for whatever else the agent does with a policy-only change.
        marker = {"uid": "Kubernetes//Pod/e2e/marker", "name": "marker", "namespace": "e2e",
                  "addresses": [f"10.245.{(gen + 1) // 250}.{(gen + 1) % 250 + 1}"]}
        config = {"workloads": list(workloads.values()) + [marker], "policies": case["policies"]}
        with open(config_path + ".tmp", "w") as f:
            json.dump(config, f)
        subprocess.run(["mv", config_path + ".tmp", config_path], check=True)
        gen += 1
        if not wait_generation(agent_log, gen):
            print(f"FAIL {case['name']}: generation {gen} not applied (config refused?)")
            failures += 1
            break
        by_ns = {}
        for i, c in enumerate(case["checks"]):
            src = c["src"].removeprefix("::ffff:")
            by_ns.setdefault(netns_of[src], []).append((i, c))
        results = {}
        for ns, items in by_ns.items():
            p = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "python3", "-c", CLIENT,
                                json.dumps([c for _, c in items])], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"FAIL {case['name']}: client in {ns}: {p.stderr.strip()}")
                failures += 1
                continue
            for (i, _), r in zip(items, json.loads(p.stdout)):
                results[i] = r
        for i, c in enumerate(case["checks"]):
            if i not in results:
                continue
            checks += 1
            r = results[i]
            want = c["verdict"]
            got = r["result"]
            ok = (got == "allow") if want == "allow" else (got == "ECONNREFUSED" and r["seconds"] < 1.0)
            if not ok:
                failures += 1
                print(f"FAIL {case['name']}: {c['src']} -> {c['dst']}:{c['port']}: want {want}, "
                      f"got {got} in {r['seconds']:.3f} s")
    print(f"replayed {checks} connections of {len(table['cases'])} cases: {failures} mismatches")
    print(f"generation {gen}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
