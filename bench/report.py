#!/usr/bin/env python3
"""Parses benchmark tool output into JSON lines and turns a run's results into the table, the
ratios against direct, the target check, docs/benchmarks.md's results section and the plots.

  report.py parse-wrk --scenario S --services N --rep R --mode M --cpu-path-us U --cpu-machine-us U < wrk-output
  report.py parse-sockperf --scenario S --services N --rep R < sockperf-output
  report.py brief < jsonl
  report.py report --results FILE --mode quick|full --duration D --reps R [--docs DIR]
  report.py sockmap-report --results FILE --duration D --reps R [--docs DIR]
  report.py telemetry-report --results FILE --duration D --reps R [--docs DIR]
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

UNITS = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(a, text):
    pct = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)$", text, re.M))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    reqs = re.search(r"^\s+(\d+) requests in", text, re.M)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if not (pct and rps and reqs):
        sys.exit(f"cannot parse wrk output:\n{text}")
    n = int(reqs.group(1))
    return {"kind": "wrk", "scenario": a.scenario, "services": a.services, "rep": a.rep, "mode": a.mode,
            "rps": float(rps.group(1)), "p50": to_us(pct["50"]), "p90": to_us(pct["90"]),
            "p99": to_us(pct["99"]), "requests": n,
            "errors": (sum(map(int, errors.groups())) if errors else 0) + (int(non2xx.group(1)) if non2xx else 0),
            "cpu_path_us_per_req": a.cpu_path_us / max(n, 1),
            "cpu_machine_us_per_req": a.cpu_machine_us / max(n, 1),
            **prog_ns(a.prog_stats),
            **{("authz_" + k): v for k, v in prog_ns(a.authz_stats).items()},
            **({"pressure_avg10": a.pressure} if a.pressure is not None else {}),
            **({"redirected": a.redirected} if a.redirected is not None else {}),
            **({"cpu_agent_us_per_req": a.agent_cpu_us / max(n, 1)} if getattr(a, "agent_cpu_us", None) is not None else {}),
            **({"tracked": a.tracked} if getattr(a, "tracked", None) is not None else {})}


def prog_ns(stats):
    """connect4's average run time over the run, from 'ns0 cnt0 ns1 cnt1' (bpf_stats)."""
    try:
        ns0, c0, ns1, c1 = map(int, stats.split())
    except (AttributeError, ValueError):
        return {}
    return {"bpf_ns_per_connect": (ns1 - ns0) / (c1 - c0)} if c1 > c0 else {}


def parse_sockperf(a, text):
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    pct = dict(re.findall(r"percentile (50|90|99)\.000 =\s+([\d.]+)", text))
    if len(pct) != 3:
        sys.exit(f"cannot parse sockperf output:\n{text}")
    row = {"kind": "sockperf", "scenario": a.scenario, "services": a.services, "rep": a.rep,
           "mode": "pingpong", "p50": float(pct["50"]), "p90": float(pct["90"]), "p99": float(pct["99"])}
    # Round trips over the whole run (warm-up included, as the CPU counters are), for CPU per request.
    total = re.search(r"\[Total Run\].*?ReceivedMessages=(\d+)", text)
    if total and a.cpu_path_us is not None:
        n = max(int(total.group(1)), 1)
        row.update({"requests": n, "cpu_path_us_per_req": a.cpu_path_us / n,
                    "cpu_machine_us_per_req": a.cpu_machine_us / n})
    if a.pressure is not None:
        row["pressure_avg10"] = a.pressure
    if a.redirected is not None:
        row["redirected"] = a.redirected
    return row


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(values):
    return statistics.median(values) if values else float("nan")


def aggregate(rows):
    """(scenario, services, mode) -> {metric: (median, min, max)}"""
    cells = {}
    for r in rows:
        if r["kind"] not in ("wrk", "sockperf"):
            continue
        cells.setdefault((r["scenario"], r["services"], r["mode"]), []).append(r)
    out = {}
    for key, rs in cells.items():
        out[key] = {}
        for m in ("rps", "p50", "p90", "p99", "cpu_path_us_per_req", "cpu_machine_us_per_req", "errors",
                  "bpf_ns_per_connect"):
            vals = [r[m] for r in rs if m in r]
            if vals:
                out[key][m] = (med(vals), min(vals), max(vals))
        out[key]["runs"] = len(rs)
    return out


def label(scenario, services):
    return scenario if scenario in ("direct", "proxy") else f"{scenario}@{services}"


def order(keys):
    rank = {"direct": 0, "kmesh": 1, "iptables": 2, "proxy": 3}
    return sorted(keys, key=lambda k: (rank[k[0]], k[1]))


def fmt(v, digits=0):
    return f"{v:,.{digits}f}"


def spread(t, digits=0):
    return f"{fmt(t[0], digits)} ({fmt(t[1], digits)}–{fmt(t[2], digits)})"


def tables(agg):
    lines = []
    for mode, title in (("keepalive", "HTTP keep-alive (wrk, 1 thread, 8 connections)"),
                        ("newconn", "HTTP, new connection per request (wrk, `Connection: close`)")):
        base = agg.get(("direct", 0, mode))
        lines += [f"#### {title}", "",
                  "| scenario | req/s | p50 µs | p90 µs | p99 µs | CPU µs/req (path) | CPU µs/req (machine) | p50 ÷ direct | p99 ÷ direct | req/s ÷ direct |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key in order(k for k in agg if k[2] == mode):
            c = agg[key]
            ratio = lambda m: fmt(c[m][0] / base[m][0], 2) if base else "n/a"
            lines.append(f"| {label(key[0], key[1])} | {spread(c['rps'])} | {spread(c['p50'])} | {fmt(c['p90'][0])} | "
                         f"{spread(c['p99'])} | {fmt(c['cpu_path_us_per_req'][0], 1)} | {fmt(c['cpu_machine_us_per_req'][0], 1)} | "
                         f"{ratio('p50')} | {ratio('p99')} | {ratio('rps')} |")
        lines.append("")
    prof = [(k[1], agg[k]["bpf_ns_per_connect"][0]) for k in order(agg) if k[0] == "kmesh" and k[2] == "newconn"
            and "bpf_ns_per_connect" in agg[k]]
    if prof:
        lines += ["Profile of Kmesh's per-connection work (kernel `bpf_stats`, `cgroup/connect4` average run time): " +
                  ", ".join(f"{fmt(ns)} ns per connect at {n:,} services" for n, ns in prof) + ".", ""]
    base = agg.get(("direct", 0, "pingpong"))
    lines += ["#### TCP request/response latency (sockperf ping-pong, 64 B, full round trip)", "",
              "| scenario | p50 µs | p90 µs | p99 µs | p50 ÷ direct | p99 ÷ direct |", "|---|---|---|---|---|---|"]
    for key in order(k for k in agg if k[2] == "pingpong"):
        c = agg[key]
        lines.append(f"| {label(key[0], key[1])} | {spread(c['p50'], 1)} | {fmt(c['p90'][0], 1)} | {spread(c['p99'], 1)} | "
                     f"{fmt(c['p50'][0] / base['p50'][0], 2) if base else 'n/a'} | {fmt(c['p99'][0] / base['p99'][0], 2) if base else 'n/a'} |")
    lines.append("")
    return lines


def programming(rows):
    lines = ["#### Control plane", "",
             "| what | services | median | spread |", "|---|---|---|---|"]
    prog = {}
    for r in rows:
        if r["kind"] == "program":
            prog.setdefault((r["system"], r["services"]), []).append(r)
    for (system, n), rs in sorted(prog.items()):
        walls = [r["wall_ms"] for r in rs]
        what = "iptables-restore of the nat table" if system == "iptables" else "kmesh-daemon: config file replaced → maps programmed"
        lines.append(f"| {what} | {n:,} | {fmt(med(walls))} ms | {min(walls)}–{max(walls)} ms |")
        if system == "kmesh":
            lines.append(f"| kmesh-daemon: of which map writes | {n:,} | {fmt(med([r['map_writes_ms'] for r in rs]))} ms | |")
            lines.append(f"| kmesh-daemon RSS after programming | {n:,} | {fmt(med([r['rss_kb'] for r in rs]) / 1024, 1)} MB | |")
    adds = [r["us"] for r in rows if r["kind"] == "cni_add"]
    if adds:
        adds.sort()
        lines.append(f"| kmesh-cni ADD (process start to exit) | – | {fmt(med(adds) / 1000, 2)} ms | p90 {fmt(adds[int(len(adds) * 0.9) - 1] / 1000, 2)} ms |")
    lines.append("")
    return lines, prog


def targets(agg, prog, sweep):
    lines = ["#### Targets", "", "| target | measured | met |", "|---|---|---|"]
    lo, hi = min(sweep), max(sweep)

    def row(name, value, ok):
        lines.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")

    for mode in ("keepalive", "newconn"):
        d = agg.get(("direct", 0, mode))
        for n in (lo, hi):
            k = agg.get(("kmesh", n, mode))
            if d and k:
                for m in ("p50", "p99"):
                    r = k[m][0] / d[m][0]
                    row(f"kmesh@{n} ÷ direct ≤ 1.03, {m}, {mode}", fmt(r, 3), r <= 1.03)
        k_lo, k_hi = agg.get(("kmesh", lo, mode)), agg.get(("kmesh", hi, mode))
        if k_lo and k_hi and hi != lo:
            for m in ("p50", "p99"):
                r = k_hi[m][0] / k_lo[m][0]
                row(f"kmesh@{hi} ÷ kmesh@{lo} ≤ 1.05, {m}, {mode}", fmt(r, 3), r <= 1.05)
        p, k = agg.get(("proxy", 0, mode)), agg.get(("kmesh", lo, mode))
        if p and k:
            want = 2 if mode == "keepalive" else 4
            r = p["p50"][0] / k["p50"][0]
            row(f"proxy pair p50 ÷ kmesh p50 ≥ {want}, {mode}", fmt(r, 2), r >= want)
    ipt, km = prog.get(("iptables", 10000)), prog.get(("kmesh", 10000))
    if ipt and km:
        ipt_ms = med([r["wall_ms"] for r in ipt])
        r = ipt_ms / max(med([r["wall_ms"] for r in km]), 0.001)
        row("programming 10k services: iptables-restore ÷ kmesh (file parsed → maps written) ≥ 100", fmt(r, 1), r >= 100)
        r = ipt_ms / max(med([r["map_writes_ms"] for r in km]), 0.001)
        row("programming 10k services: iptables-restore ÷ kmesh map writes alone ≥ 100", fmt(r, 1), r >= 100)
    lines.append("")
    return lines


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} × {cpu}, kernel {platform.release()}"


def plots(agg, sweep, docs, mode):
    data = os.path.join(docs, f"bench-{mode}.dat")
    with open(data, "w") as f:
        f.write("# services iptables_p99_newconn kmesh_p99_newconn iptables_rps_newconn kmesh_rps_newconn direct_p99 direct_rps\n")
        d = agg.get(("direct", 0, "newconn"))
        for n in sorted(sweep):
            i, k = agg.get(("iptables", n, "newconn")), agg.get(("kmesh", n, "newconn"))
            if i and k and d:
                f.write(f"{n} {i['p99'][0]} {k['p99'][0]} {i['rps'][0]} {k['rps'][0]} {d['p99'][0]} {d['rps'][0]}\n")
    bars = os.path.join(docs, f"bench-{mode}-bars.dat")
    with open(bars, "w") as f:
        f.write("# scenario ka_p50 lo hi nc_p50 lo hi pp_p50 lo hi\n")
        for key in order({(s, n) for (s, n, _) in agg}):
            cells = [agg.get((key[0], key[1], m)) for m in ("keepalive", "newconn", "pingpong")]
            if all(cells):
                f.write(f"\"{label(*key)}\" " + " ".join(f"{c['p50'][0]} {c['p50'][1]} {c['p50'][2]}" for c in cells) + "\n")
    stamp = f"{datetime.date.today()} · {machine()}"
    script = f"""
set terminal pngcairo size 1200,480 font ",10" noenhanced
set output "{docs}/bench-{mode}-scale.png"
set multiplot layout 1,2 title "New connection per request vs number of services ({stamp})"
set logscale x
set xlabel "services"
set key top left
set ylabel "p99 latency (µs)"
set yrange [0:*]
plot "{data}" using 1:2 with linespoints lw 2 title "iptables DNAT (kube-proxy)", \\
     "" using 1:3 with linespoints lw 2 title "kmesh", \\
     "" using 1:6 with lines dt 2 title "direct pod IP"
set ylabel "requests/s"
set key bottom left
set yrange [0:*]
plot "{data}" using 1:4 with linespoints lw 2 title "iptables DNAT (kube-proxy)", \\
     "" using 1:5 with linespoints lw 2 title "kmesh", \\
     "" using 1:7 with lines dt 2 title "direct pod IP"
unset multiplot
set output "{docs}/bench-{mode}-scenarios.png"
unset logscale x
set title "p50 latency by scenario, median with min–max over runs ({stamp})"
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.7 border -1
set ylabel "p50 latency (µs)"
set xlabel ""
set xtics rotate by -20
set key top left
plot "{bars}" using 2:3:4:xtic(1) title "HTTP keep-alive", \\
     "" using 5:6:7 title "HTTP new connection", \\
     "" using 8:9:10 title "TCP ping-pong RTT"
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)


def report(a):
    rows = load(a.results)
    agg = aggregate(rows)
    sweep = sorted({k[1] for k in agg if k[0] == "kmesh"})
    prog_lines, prog = programming(rows)
    errors = sum(r.get("errors", 0) for r in rows if r["kind"] == "wrk")
    header = [f"### {a.mode} mode — {datetime.date.today()}", "",
              f"Machine: {machine()}. {a.reps} repetitions of {a.duration} s per cell; "
              "values are medians with (min–max). Command: "
              f"`bench/run.sh --{a.mode}`. wrk/HTTP errors over the run: {errors}.", ""]
    body = header + tables(agg) + prog_lines + targets(agg, prog, sweep)
    text = "\n".join(body)
    print(text)
    if a.docs:
        plots(agg, sweep, a.docs, a.mode)
        body.append(f"![scale](bench-{a.mode}-scale.png)\n\n![scenarios](bench-{a.mode}-scenarios.png)\n")
        md = os.path.join(a.docs, "benchmarks.md")
        begin, end = f"<!-- results:{a.mode}:begin -->", f"<!-- results:{a.mode}:end -->"
        doc = open(md).read() if os.path.exists(md) else ""
        block = f"{begin}\n" + "\n".join(body) + f"\n{end}"
        if begin in doc:
            doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
        else:
            doc += "\n" + block + "\n"
        open(md, "w").write(doc)


def authz_report(a):
    """bench/authz.sh: direct, kmesh@10 and authz@N side by side; the ≥ 0.97 target of issue 9."""
    rows = [r for r in load(a.results) if r["kind"] == "wrk"]
    cells = {}
    for r in rows:
        cells.setdefault((r["scenario"], r["services"], r["mode"]), []).append(r)
    rank = {"direct": 0, "kmesh": 1, "authz": 2}
    keys = sorted(cells, key=lambda k: (k[2], rank.get(k[0], 9), k[1]))
    body = [f"### authz@N — {datetime.date.today()}", "",
            f"Machine: {machine()}. {a.reps} repetitions of {a.duration} s per cell, interleaved; medians "
            "with (min–max). Command: `bench/authz.sh`. authz@N: the client connects to the service VIP of an "
            "enrolled server to which N policies apply (half DENY, half ALLOW, 10 rules each; the last "
            "ALLOW admits the client), so every connection takes the allowed path. kmesh@10: same client "
            "and service, server not enrolled (no sk_lookup). `sk_lookup ns` is the kernel's bpf_stats "
            "average run time of sk_lookup_authz per call; `pressure` is /proc/pressure/cpu avg10 after "
            "each run (max over the cell).", "",
            "| mode | scenario | req/s | p50 µs | p99 µs | connect4 ns | sk_lookup ns | pressure | runs |",
            "|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        rs = cells[k]
        def col(m, digits=0):
            vals = [r[m] for r in rs if m in r]
            return spread((med(vals), min(vals), max(vals)), digits) if vals else "–"
        pres = max((r.get("pressure_avg10", 0) for r in rs), default=0)
        body.append(f"| {k[2]} | {label(k[0], k[1])} | {col('rps')} | {col('p50')} | {col('p99')} | "
                    f"{col('bpf_ns_per_connect')} | {col('authz_bpf_ns_per_connect')} | {pres:.1f} | {len(rs)} |")
    body += ["", "| target | value | met |", "|---|---|---|"]
    for mode in ("newconn", "keepalive"):
        base = cells.get(("authz", 0, mode))
        for n in sorted({k[1] for k in cells if k[0] == "authz" and k[1] > 0}):
            c = cells.get(("authz", n, mode))
            if base and c:
                r = med([x["rps"] for x in c]) / med([x["rps"] for x in base])
                body.append(f"| authz@{n} ÷ authz@0 req/s ≥ 0.97, {mode} | {r:.3f} | {'yes' if r >= 0.97 else 'NO'} |")
        k10, a0 = cells.get(("kmesh", 10, mode)), cells.get(("authz", 0, mode))
        if k10 and a0:
            r = med([x["rps"] for x in a0]) / med([x["rps"] for x in k10])
            body.append(f"| authz@0 ÷ kmesh@10 req/s (cost of enrolling the server), {mode} | {r:.3f} | – |")
    text = "\n".join(body)
    print(text)
    if a.docs:
        md = os.path.join(a.docs, "benchmarks.md")
        begin, end = "<!-- results:authz:begin -->", "<!-- results:authz:end -->"
        doc = open(md).read() if os.path.exists(md) else ""
        block = f"{begin}\n{text}\n{end}"
        if begin in doc:
            doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
        else:
            doc += "\n" + block + "\n"
        open(md, "w").write(doc)


def sockmap_report(a):
    """bench/sockmap.sh: direct, kmesh and kmesh-sockmap on the same pods; the 0.85x p50 target."""
    rows = [r for r in load(a.results) if r["kind"] in ("wrk", "sockperf")]
    cells = {}
    for r in rows:
        cells.setdefault((r["mode"], r["scenario"]), []).append(r)
    modes = [("pingpong", "TCP ping-pong, 64 B (sockperf, full round trip)"),
             ("keepalive-c1", "HTTP keep-alive, 1 connection (wrk + nginx)"),
             ("keepalive-c8", "HTTP keep-alive, 8 connections (wrk + nginx)")]
    rank = {"direct": 0, "kmesh": 1, "kmesh-sockmap": 2}
    body = [f"### sockmap — {datetime.date.today()}", "",
            f"Machine: {machine()}. {a.reps} repetitions of {a.duration} s per cell, interleaved; medians with "
            "(min–max). Command: `bench/sockmap.sh`. Same pods throughout: `direct` is a non-enrolled client pod "
            "to the server pod's IP; `kmesh` and `kmesh-sockmap` are an enrolled client pod to the service VIP "
            "of the same (enrolled) server pod, with `kmesh-daemon --sockmap=off` and `on`. CPU µs/req: the "
            "client and server pods' cgroup CPU time (path) and all CPUs' busy time (machine) per request or "
            "round trip. `redirected`: sends redirected by sk_msg_accel during the cell (0 = not accelerated). "
            "`pressure`: /proc/pressure/cpu some avg10 after the cell (max over its runs; a cell at ≥ 10 is "
            "measured again once).", ""]
    for mode, title in modes:
        keys = sorted((k for k in cells if k[0] == mode), key=lambda k: rank.get(k[1], 9))
        if not keys:
            continue
        base = cells.get((mode, "direct"))
        body += [f"#### {title}", "",
                 "| scenario | req/s | p50 µs | p99 µs | CPU µs/req (path) | CPU µs/req (machine) | p50 ÷ direct | "
                 "p99 ÷ direct | redirected | pressure | runs |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k in keys:
            rs = cells[k]

            def col(m, digits=0):
                vals = [r[m] for r in rs if m in r]
                return spread((med(vals), min(vals), max(vals)), digits) if vals else "–"

            def ratio(m):
                if not base:
                    return "n/a"
                return fmt(med([r[m] for r in rs]) / med([r[m] for r in base]), 2)

            pres = max((r.get("pressure_avg10", 0) for r in rs), default=0)
            red = med([r.get("redirected", 0) for r in rs])
            body.append(f"| {k[1]} | {col('rps')} | {col('p50', 1)} | {col('p99', 1)} | "
                        f"{col('cpu_path_us_per_req', 1)} | {col('cpu_machine_us_per_req', 1)} | {ratio('p50')} | "
                        f"{ratio('p99')} | {fmt(red)} | {pres:.1f} | {len(rs)} |")
        body.append("")
    body += ["| target | value | met |", "|---|---|---|"]
    for mode, _ in modes:
        d, s = cells.get((mode, "direct")), cells.get((mode, "kmesh-sockmap"))
        if d and s:
            r = med([x["p50"] for x in s]) / med([x["p50"] for x in d])
            body.append(f"| kmesh-sockmap p50 ÷ direct p50 ≤ 0.85, {mode} | {r:.3f} | {'yes' if r <= 0.85 else '**no**'} |")
    text = "\n".join(body)
    print(text)
    if a.docs:
        md = os.path.join(a.docs, "benchmarks.md")
        begin, end = "<!-- results:sockmap:begin -->", "<!-- results:sockmap:end -->"
        doc = open(md).read() if os.path.exists(md) else ""
        block = f"{begin}\n{text}\n{end}"
        if begin in doc:
            doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
        else:
            doc += "\n" + block + "\n"
        open(md, "w").write(doc)


def telemetry_report(a):
    """bench/telemetry.sh: kmesh with monitoring off and on, same pods; the >= 0.97x target of issue 11."""
    rows = [r for r in load(a.results) if r["kind"] == "wrk"]
    cells = {}
    for r in rows:
        cells.setdefault((r["mode"], r["scenario"]), []).append(r)
    body = [f"### telemetry: monitoring on vs off — {datetime.date.today()}", "",
            f"Machine: {machine()}. {a.reps} repetitions of {a.duration} s per cell, interleaved (the order of "
            "off and on alternates per repetition); medians with (min–max). Command: `bench/telemetry.sh`. "
            "Same pods throughout: an enrolled client pod to the service VIP of an enrolled nginx pod (both "
            "reporters fire: the most telemetry work per connection); one agent, monitoring switched off and on "
            "at run time (admin `POST /debug/monitoring`); the metrics endpoint is scraped once a second during "
            "every cell. CPU µs/req: the two pods' cgroups "
            "(path), the agent process (agent), all CPUs' busy time (machine). `tracked`: connections counted in "
            "istio_tcp_connections_opened_total{reporter=\"source\"} during the cell. `pressure`: "
            "/proc/pressure/cpu some avg10 after the cell (max over its runs; a cell at >= 10 is measured again once).", "",
            "| mode | scenario | req/s | p50 µs | p99 µs | CPU µs/req (path) | CPU µs/req (agent) | "
            "CPU µs/req (machine) | tracked | pressure | runs |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    rank = {"kmesh-mon-off": 0, "kmesh-mon-on": 1}
    for k in sorted(cells, key=lambda k: (k[0] != "newconn", rank.get(k[1], 9))):
        rs = cells[k]

        def col(m, digits=0):
            vals = [r[m] for r in rs if m in r]
            return spread((med(vals), min(vals), max(vals)), digits) if vals else "–"

        pres = max((r.get("pressure_avg10", 0) for r in rs), default=0)
        body.append(f"| {k[0]} | {k[1]} | {col('rps')} | {col('p50')} | {col('p99')} | {col('cpu_path_us_per_req', 1)} | "
                    f"{col('cpu_agent_us_per_req', 2)} | {col('cpu_machine_us_per_req', 1)} | {col('tracked')} | "
                    f"{pres:.1f} | {len(rs)} |")
    body += ["", "| target | value | met |", "|---|---|---|"]
    for mode in ("newconn", "keepalive"):
        off, on = cells.get((mode, "kmesh-mon-off")), cells.get((mode, "kmesh-mon-on"))
        if off and on:
            r = med([x["rps"] for x in on]) / med([x["rps"] for x in off])
            target = mode == "newconn"
            body.append(f"| monitoring on ÷ off req/s{' ≥ 0.97' if target else ''}, {mode} | {r:.3f} | "
                        f"{('yes' if r >= 0.97 else '**no**') if target else '–'} |")
            c = med([x["cpu_machine_us_per_req"] for x in on]) / med([x["cpu_machine_us_per_req"] for x in off])
            body.append(f"| monitoring on ÷ off machine CPU per request, {mode} | {c:.3f} | – |")
    text = "\n".join(body)
    print(text)
    if a.docs:
        md = os.path.join(a.docs, "benchmarks.md")
        begin, end = "<!-- results:telemetry:begin -->", "<!-- results:telemetry:end -->"
        doc = open(md).read() if os.path.exists(md) else ""
        block = f"{begin}\n{text}\n{end}"
        if begin in doc:
            doc = doc[:doc.index(begin)] + block + doc[doc.index(end) + len(end):]
        else:
            doc += "\n" + block + "\n"
        open(md, "w").write(doc)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("parse-wrk")
    s = sub.add_parser("parse-sockperf")
    for p in (w, s):
        p.add_argument("--scenario", required=True)
        p.add_argument("--services", type=int, required=True)
        p.add_argument("--rep", type=int, required=True)
        p.add_argument("--redirected", type=int, help="sends redirected by sk_msg_accel during the run")
    s.add_argument("--cpu-path-us", type=int)
    s.add_argument("--cpu-machine-us", type=int)
    s.add_argument("--pressure", type=float)
    w.add_argument("--mode", required=True)
    w.add_argument("--cpu-path-us", type=int, required=True)
    w.add_argument("--cpu-machine-us", type=int, required=True)
    w.add_argument("--prog-stats", default="")
    w.add_argument("--authz-stats", default="", help="sk_lookup_authz 'ns0 cnt0 ns1 cnt1' (bpf_stats)")
    w.add_argument("--pressure", type=float, help="/proc/pressure/cpu some avg10 after the run")
    w.add_argument("--agent-cpu-us", type=int, help="the agent process's CPU time during the run")
    w.add_argument("--tracked", type=int, help="connections telemetry counted during the run")
    sm = sub.add_parser("sockmap-report")
    sm.add_argument("--results", required=True)
    sm.add_argument("--duration", required=True)
    sm.add_argument("--reps", required=True)
    sm.add_argument("--docs")
    tr = sub.add_parser("telemetry-report")
    tr.add_argument("--results", required=True)
    tr.add_argument("--duration", required=True)
    tr.add_argument("--reps", required=True)
    tr.add_argument("--docs")
    ar = sub.add_parser("authz-report")
    ar.add_argument("--results", required=True)
    ar.add_argument("--duration", required=True)
    ar.add_argument("--reps", required=True)
    ar.add_argument("--docs")
    sub.add_parser("brief")
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    r.add_argument("--mode", required=True)
    r.add_argument("--duration", required=True)
    r.add_argument("--reps", required=True)
    r.add_argument("--docs")
    a = ap.parse_args()
    if a.cmd == "parse-wrk":
        print(json.dumps(parse_wrk(a, sys.stdin.read())))
    elif a.cmd == "parse-sockperf":
        print(json.dumps(parse_sockperf(a, sys.stdin.read())))
    elif a.cmd == "authz-report":
        authz_report(a)
    elif a.cmd == "sockmap-report":
        sockmap_report(a)
    elif a.cmd == "telemetry-report":
        telemetry_report(a)
    elif a.cmd == "brief":
        parts = []
        for line in sys.stdin:
            r = json.loads(line)
            extra = f" {r['rps']:,.0f} req/s" if "rps" in r else ""
            parts.append(f"{r['mode']} p50 {r['p50']:.0f}us p99 {r['p99']:.0f}us{extra}")
        print("; ".join(parts))
    else:
        report(a)


if __name__ == "__main__":
    main()
