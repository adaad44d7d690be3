#!/usr/bin/env python3
"""Renders the istiod-at-scale table of docs/benchmarks.md from bench/results/xds.jsonl.

usage: bench/xds_report.py <results.jsonl> <benchmarks.md>

The latest run of each (label, busy) pair of the latest date's runs becomes a column, so a
"before" binary (--agent main's build --label before) and this build sit side by side.
"""
import sys

import json

results, doc = sys.argv[1:]
runs = [json.loads(l) for l in open(results) if l.strip()]
if not runs:
    sys.exit(0)
day = runs[-1]["date"][:10]
cols = {}
for r in runs:
    if r["date"][:10] == day and "mem_kb" in r:
        cols[(r["label"], r["busy"])] = r  # the latest wins
order = sorted(cols, key=lambda k: (k[1], k[0] != "before", k[0]))


def ms(v):
    return "–" if v is None else f"{v:,.0f} ms" if v >= 10 else f"{v:.2f} ms"


def mb(r, at, key):
    m = r["mem_kb"].get(at, {})
    return f"{m[key] / 1024:.1f}" if key in m else "–"


def pressure(p):
    return p.split("avg10=")[1].split()[0] if "avg10=" in p else "?"


rows = [
    ("full push → ACK (server's clock)", lambda r: ms(r["full_push_to_ack_ms"]), "≤ 1,000 ms quiet"),
    ("full push → every map programmed", lambda r: ms(r["full_push_to_maps_ms"]), "≤ 1,000 ms quiet, ≤ 2× busy"),
    ("mass removal (→ 11 resources) → maps", lambda r: ms(r["removal_to_maps_ms"]), ""),
    ("one workload change → maps, p50 / p99", lambda r: f'{ms(r["single_to_maps_p50_ms"])} / {ms(r["single_to_maps_p99_ms"])}', ""),
    ("one workload change → ACK, p50 / p99", lambda r: f'{ms(r["single_to_ack_p50_ms"])} / {ms(r["single_to_ack_p99_ms"])}', ""),
    ("RSS idle, one service (MB): VmRSS / RssAnon / RssFile",
     lambda r: f'{mb(r, "idle_one_service", "VmRSS")} / {mb(r, "idle_one_service", "RssAnon")} / {mb(r, "idle_one_service", "RssFile")}',
     "≤ 12 MB"),
    ("peak during the push: VmHWM (MB)", lambda r: mb(r, "after_push", "VmHWM"), "≤ 100 MB"),
    ("RSS right after the push: VmRSS / RssAnon (MB)",
     lambda r: f'{mb(r, "after_push", "VmRSS")} / {mb(r, "after_push", "RssAnon")}', "≤ 100 MB"),
    ("RSS settled (5 s later): VmRSS / RssAnon (MB)",
     lambda r: f'{mb(r, "settled", "VmRSS")} / {mb(r, "settled", "RssAnon")}', "≤ 100 MB"),
    ("RSS after the changes (MB)", lambda r: mb(r, "after_changes", "VmRSS"), ""),
    ("RSS 5 s after the mass removal: VmRSS / RssAnon (MB)",
     lambda r: f'{mb(r, "after_mass_removal", "VmRSS")} / {mb(r, "after_mass_removal", "RssAnon")}', "near idle"),
    ("threads", lambda r: str(r["mem_kb"].get("settled", {}).get("Threads", "–")), ""),
    ("/proc/pressure/cpu some avg10, start → end", lambda r: f'{pressure(r["pressure_start"])} → {pressure(r["pressure_end"])}', ""),
]
first = cols[order[0]]
head = [f"### istiod at scale — {day}", "",
        f"Machine: {first['machine']} (shared with other sessions: noisy). Command: "
        f"`bench/xds_bench.sh --services {first['services']} --per-service {first['per_service']} "
        f"--changes {first['changes']}` per column, `--agent <main's kmesh-daemon> --label before` for the "
        "before columns, `--busy` for the busy ones (one `yes >/dev/null` CPU hog from before the push "
        "to the end). Times are on the server's clock: fake istiod's send of a nonce (events.jsonl) "
        "to its ACK, and to the agent's `maps programmed for nonce` line (µs wall clock). "
        "Raw runs: `bench/results/xds.jsonl`.", ""]
names = [f"{l}{' (busy)' if b else ''}" for l, b in order]
out = head + ["| what | " + " | ".join(names) + " | target |", "|---|" + "---|" * len(names) + "---|"]
for name, f, target in rows:
    out.append(f"| {name} | " + " | ".join(f(cols[k]) for k in order) + f" | {target} |")
text = "\n".join(out) + "\n"
print(text)
begin, end = "<!-- results:xds:begin -->", "<!-- results:xds:end -->"
d = open(doc).read()
block = begin + "\n" + text + "\n" + end
d = d[:d.index(begin)] + block + d[d.index(end) + len(end):] if begin in d else d + "\n" + block + "\n"
open(doc, "w").write(d)
