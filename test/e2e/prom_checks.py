#!/usr/bin/env python3
"""Evaluate a batch of PromQL checks against a Prometheus in one process (e2e_telemetry.sh);
with --fresh, wait for a complete scrape (prometheus.sh's prom_fresh).

Each check is a line on stdin: description, PromQL, low and high, separated by tabs (none of them
has a tab or a newline); low == high asks for an exact value. For each check, the query is polled until its value first reaches the
wait condition (== low for an exact check, >= low for a range), up to --wait seconds for the whole
batch. Then the batch settles: two complete scrapes that started after every check matched, so
that the kernel events of the traffic phase are all in Prometheus (the agent flushes its events on
each scrape). Then every query is read again and checked against [low, high]: a count that
overshoots after first matching fails.

Output: one line per check, "ok <text>" or "FAIL <text>", in input order (the shell turns them into
its ok/not_ok lines). Exit status 0 even when checks fail: the caller counts them.

Why one process: the shell version spent ~2.5 s per check under ASan load, most of it starting curl
and three Python interpreters per poll.
"""
import argparse
import datetime
import json
import sys
import time
import urllib.parse
import urllib.request


def query(base, expr):
    """The single sample's value as a float, None for an empty result; raises on an error."""
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        a = json.load(r)
    if a.get("status") != "success":
        raise RuntimeError("prometheus: %s: %s" % (a.get("errorType"), a.get("error")))
    d = a["data"]
    if d["resultType"] == "scalar":
        return float(d["result"][1])
    res = d["result"]
    if len(res) > 1:
        raise RuntimeError("%d samples, expected at most one: %s" % (len(res), [x["metric"] for x in res]))
    return float(res[0]["value"][1]) if res else None


def last_scrape(base):
    """The target's last successful scrape as a Unix time, 0 if it is not up."""
    with urllib.request.urlopen(base + "/api/v1/targets", timeout=2) as r:
        t = json.load(r)["data"]["activeTargets"][0]
    if t["health"] != "up":
        return 0.0
    ts = t["lastScrape"]
    # RFC 3339 with nanoseconds: fromisoformat takes microseconds at most.
    if "." in ts:
        head, frac = ts.split(".", 1)
        tz = frac.lstrip("0123456789")
        ts = head + "." + frac[: len(frac) - len(tz)][:6].ljust(6, "0") + tz
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def fresh(base, timeout=10.0):
    """Waits until a scrape that started after this call has completed."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            if last_scrape(base) > t0:
                return True
        except Exception:
            pass
        time.sleep(0.2)
    return False


def fmt(v):
    if v is None:
        return "none"
    return str(int(v)) if v == int(v) else repr(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prometheus", help="base URL, e.g. http://127.0.0.1:9090")
    ap.add_argument("--wait", type=float, default=20.0, help="seconds for the whole batch to match")
    ap.add_argument("--fresh", action="store_true",
                    help="no checks: wait (10 s at most) for a scrape that started after this call; exit 1 if none")
    args = ap.parse_args()
    if args.fresh:
        sys.exit(0 if fresh(args.prometheus) else 1)
    checks = []
    for line in sys.stdin:
        if not line.strip():
            continue
        desc, expr, low, high = line.rstrip("\n").split("\t")
        checks.append({"desc": desc, "expr": expr, "low": float(low), "high": float(high)})
    pending = list(range(len(checks)))
    deadline = time.time() + args.wait
    while pending and time.time() < deadline:
        still = []
        for i in pending:
            c = checks[i]
            try:
                v = query(args.prometheus, c["expr"])
            except Exception:
                v = None
            matched = v is not None and (v == c["low"] if c["low"] == c["high"] else v >= c["low"])
            if not matched:
                still.append(i)
        pending = still
        if pending:
            time.sleep(0.2)
    fresh(args.prometheus)
    fresh(args.prometheus)
    for c in checks:
        try:
            v, err = query(args.prometheus, c["expr"]), ""
        except Exception as e:  # noqa: BLE001 - the message goes into the check's line
            v, err = None, " (%s)" % e
        want = fmt(c["low"]) if c["low"] == c["high"] else "in [%s, %s]" % (fmt(c["low"]), fmt(c["high"]))
        good = v is not None and c["low"] <= v <= c["high"]
        print("%s %s: %s = %s (expected %s)%s" % ("ok" if good else "FAIL", c["desc"], c["expr"], fmt(v), want, err))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
