#!/usr/bin/env python3
"""Where one kmesh-cni ADD's time goes, from `strace -f -ttt -T` traces (bench/cni_start.sh --trace).

usage: cni_trace_summary.py LABEL=TRACE...

For each label (e.g. "after", "before") prints the median over its traces of: the wall time from
the plugin's execve to its exit, the time inside syscalls by kind (each BPF command separately, and
BPF_LINK_CREATE per attach type), and the rest ("user space + strace"). strace stops the process at
every syscall, so absolute figures are inflated (more so for a process making many syscalls);
the split, and the comparison between labels traced the same way, is what this is for.
"""
import collections
import re
import statistics
import sys

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+) (\w+)\((.*)\) += (-?\w+).*<(\d+\.\d+)>$")
EXIT = re.compile(r"^(\d+)\s+(\d+\.\d+) \+\+\+ exited with (\d+) \+\+\+$")


def kind(name, args):
    if name == "bpf":
        cmd = args.split(",", 1)[0]
        if cmd == "BPF_LINK_CREATE":
            m = re.search(r"attach_type=(\w+)", args)
            return f"bpf {cmd} {m.group(1) if m else '?'}"
        return f"bpf {cmd}"
    if name in ("mmap", "munmap", "mprotect", "brk", "arch_prctl", "set_tid_address", "set_robust_list",
                "rseq", "prlimit64", "getrandom", "execve", "access", "pread64", "newfstatat", "fstat",
                "uname", "readlink"):
        return f"start: {name}"
    return name


def parse(path):
    """(wall seconds from the plugin's execve to its exit, {kind: seconds}, {kind: calls})."""
    execs = 0
    start = end = None
    times = collections.Counter()
    calls = collections.Counter()
    for line in open(path):
        line = line.rstrip("\n")
        if (m := EXIT.match(line)):
            end = float(m.group(2))
            continue
        if " exit_group(" in line:  # strace -qq prints no "exited" line: the exit call ends the run
            end = float(line.split()[1])
            continue
        m = LINE.match(line)
        if not m:
            continue
        _, ts, name, args, _, dur = m.groups()
        if name == "execve":
            execs += 1
            if execs == 2:  # the first is bench/cni_exec, the second the plugin
                start = float(ts)
                times.clear()
                calls.clear()
        k = kind(name, args)
        times[k] += float(dur)
        calls[k] += 1
    if start is None or end is None:
        raise SystemExit(f"{path}: no plugin execve or exit found")
    return end - start, times, calls


def main():
    by_label = collections.defaultdict(list)
    for arg in sys.argv[1:]:
        label, path = arg.split("=", 1)
        by_label[label].append(parse(path))
    for label, runs in by_label.items():
        walls = [r[0] for r in runs]
        kinds = sorted({k for r in runs for k in r[1]}, key=lambda k: -statistics.median(r[1][k] for r in runs))
        print(f"## {label}: {len(runs)} traced ADDs, wall (execve to exit) median {statistics.median(walls) * 1000:.2f} ms "
              f"(min {min(walls) * 1000:.2f}, max {max(walls) * 1000:.2f})")
        print(f"{'syscall kind':<52} {'calls':>6} {'median ms':>10}")
        total = []
        for k in kinds:
            t = statistics.median(r[1][k] for r in runs) * 1000
            c = statistics.median(r[2][k] for r in runs)
            print(f"{k:<52} {c:>6g} {t:>10.3f}")
        for r in runs:
            total.append(r[0] - sum(r[1].values()))
        print(f"{'user space + strace overhead (wall - syscalls)':<52} {'':>6} {statistics.median(total) * 1000:>10.3f}")
        print()


if __name__ == "__main__":
    main()
