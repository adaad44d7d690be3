#!/usr/bin/env python3
"""Markdown tables of a bench/programming.sh run (its JSONL): end to end per system and size, and
the in-process phases.

usage: programming_report.py RESULTS.jsonl
"""
import json
import statistics
import sys


def ms(us):
    return "–" if us is None else f"{us / 1000:,.1f}"


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    e2e = [r for r in rows if r["system"] != "phases"]
    sizes = sorted({r["services"] for r in e2e})
    print("| system | services | file → maps (wall) | parse | desired state | plan | map writes | CPU pressure (some avg10, before → after) |")
    print("|---|---|---|---|---|---|---|---|")
    order = {"iptables-restore": 0, "kmesh-before": 1, "kmesh": 2}
    for n in sizes:
        for key in sorted({(r["system"], r.get("format", "")) for r in e2e if r["services"] == n},
                          key=lambda k: (order.get(k[0], 9), k[1])):
            rs = [r for r in e2e if r["services"] == n and (r["system"], r.get("format", "")) == key]
            wall = statistics.median(r["wall_ms"] for r in rs)
            label = key[0] if key[0] == "iptables-restore" else f"{key[0]} ({key[1].upper()})"
            if key[0] == "kmesh-before":
                label = "kmesh, main before issue 12 (YAML)"
            elif key[0] == "kmesh":
                label = f"kmesh, this branch ({key[1].upper()})"

            def med(f):
                v = [r[f] for r in rs if r.get(f) is not None]
                return statistics.median(v) if v else None
            psi = ", ".join(f"{r['psi_before']} → {r['psi_after']}" for r in rs)
            print(f"| {label} | {n:,} | {wall:,.0f} ms | {ms(med('parse_us'))} | {ms(med('desired_us'))} | "
                  f"{ms(med('plan_us'))} | {ms(med('writes_us'))} | {psi} |")
    ph = [r for r in rows if r["system"] == "phases"]
    if not ph:
        return
    print()
    names = ["read", "parse to model", "count", "tree", "model", "free tree", "collisions", "desired", "diff",
             "writes"]
    print("| config | parse | writes | " + " | ".join(names) + " | total | kernel calls | remove all: plan + writes (calls) | writes into warm maps (calls) |")
    print("|---|---|---|" + "---|" * (len(names) + 4))
    for r in ph:
        fmt = "JSON" if r["config"].endswith(".json") else "YAML"
        cells = " | ".join(ms(r.get(f"{n}_us")) for n in names)
        print(f"| {r['services']:,} services, {fmt} ({r['bytes'] / 1e6:.1f} MB) | "
              f"{r.get('path', 'tree')} | {'one call per entry' if r['single'] else 'batched'} | {cells} | {ms(r['total_us'])} | "
              f"{r['add_calls']:,} | {ms(r['remove-all diff_us'])} + {ms(r['remove-all writes_us'])} ({r['remove_calls']:,}) | "
              f"{ms(r['writes (warm maps)_us'])} ({r['warm_calls']:,}) |")


if __name__ == "__main__":
    main()
