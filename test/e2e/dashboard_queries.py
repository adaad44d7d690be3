#!/usr/bin/env python3
"""Checks a Grafana dashboard against a real Prometheus: the dashboard's structure (schemaVersion,
a Prometheus datasource variable every panel and query uses), then every template variable's
label_values() query and every panel's PromQL expression, with the variables replaced as Grafana
would for "All" (allValue) and $__rate_interval replaced by --rate-interval. Each expression must
be accepted by Prometheus and return data (at least one series).

  dashboard_queries.py DASHBOARD.json PROMETHEUS_URL [--rate-interval 1m] [--positive REGEX]

--positive: panels whose title matches REGEX must also return a value > 0 (the traffic the test made).
Prints one line per query; exits 1 if any check fails.
"""
import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

failures = 0


def report(ok, text):
    global failures
    if not ok:
        failures += 1
    print(("ok   " if ok else "FAIL ") + text, flush=True)


def api(base, path, params):
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:  # Prometheus answers a bad query with 400 and a JSON error
        body = json.load(e)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]


def substitute(expr, values, rate_interval):
    builtins = {"__rate_interval": rate_interval, "__interval": "15s", "__range": "1h",
                "__range_s": "3600", "__interval_ms": "15000"}

    def repl(m):
        name = m.group("a") or m.group("b") or m.group("c")
        if name in builtins:
            return builtins[name]
        if name in values:
            return values[name]
        return m.group(0)  # left as is: reported as unresolved below

    return re.sub(r"\$\{(?P<a>\w+)(?::\w+)?\}|\$(?P<b>\w+)|\[\[(?P<c>\w+)(?::\w+)?\]\]", repl, expr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dashboard")
    ap.add_argument("prometheus")
    ap.add_argument("--rate-interval", default="1m")
    ap.add_argument("--positive", default="")
    a = ap.parse_args()
    d = json.load(open(a.dashboard))
    base = a.prometheus.rstrip("/")

    # Structure: what Grafana needs to import it and bind every query to the chosen Prometheus.
    report(d.get("schemaVersion", 0) >= 36, f"schemaVersion {d.get('schemaVersion')} >= 36")
    variables = d.get("templating", {}).get("list", [])
    ds = [v for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    report(len(ds) == 1, "one Prometheus datasource variable")
    dsref = "${%s}" % ds[0]["name"] if ds else None
    panels = []
    for p in d.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # collapsed rows hold their panels
    ids = [p["id"] for p in panels]
    report(len(ids) == len(set(ids)), f"{len(ids)} panels, unique ids")
    graphs = [p for p in panels if p.get("type") != "row"]
    report(bool(graphs), f"{len(graphs)} graph panels")

    # Variables: "All" (allValue) for query variables, the current value for the others.
    values = {}
    for v in variables:
        if v.get("type") == "query":
            values[v["name"]] = v.get("allValue") or ".*"
        elif v.get("type") in ("custom", "constant", "textbox"):
            cur = v.get("current", {}).get("value", v.get("query", ""))
            values[v["name"]] = cur[0] if isinstance(cur, list) else cur
    for v in variables:
        if v.get("type") != "query":
            continue
        report(v.get("datasource", {}).get("uid") == dsref, f"variable {v['name']} uses the datasource variable")
        q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        q = substitute(q, values, a.rate_interval)
        m = re.fullmatch(r"\s*label_values\((?:(?P<sel>.+),\s*)?(?P<label>\w+)\)\s*", q)
        if not m:
            report(False, f"variable {v['name']}: unsupported query {q!r}")
            continue
        try:
            if m.group("sel"):
                series = api(base, "/api/v1/series", {"match[]": m.group("sel")})
                vals = sorted({s[m.group("label")] for s in series if m.group("label") in s})
            else:
                vals = api(base, f"/api/v1/label/{m.group('label')}/values", {})
            report(bool(vals), f"variable {v['name']} = {q}: {vals[:8]}")
        except (ValueError, OSError) as e:
            report(False, f"variable {v['name']} = {q}: {e}")

    # Every panel's every query.
    for p in graphs:
        title = p.get("title", "?")
        report(p.get("datasource", {}).get("uid") == dsref, f"panel '{title}' uses the datasource variable")
        targets = [t for t in p.get("targets", []) if not t.get("hide")]
        report(bool(targets), f"panel '{title}' has queries")
        for t in targets:
            expr = substitute(t.get("expr", ""), values, a.rate_interval)
            name = f"panel '{title}' [{t.get('refId')}]"
            if "$" in expr or "[[" in expr:
                report(False, f"{name}: unresolved variable in {expr}")
                continue
            try:
                res = api(base, "/api/v1/query", {"query": expr})["result"]
            except (ValueError, OSError) as e:
                report(False, f"{name}: {expr}: {e}")
                continue
            vals = [float(r["value"][1]) for r in res]
            top = max(vals) if vals else None
            report(bool(res), f"{name}: {len(res)} series, max {top}: {expr}")
            if a.positive and re.search(a.positive, title):
                report(bool(vals) and top > 0, f"{name}: shows the test's traffic (max {top} > 0)")
    print(f"{failures} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
