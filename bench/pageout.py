#!/usr/bin/env python3
"""Ask the kernel to reclaim a process's file-backed pages now (process_madvise MADV_PAGEOUT).

What a memory cgroup does to a container near its limit, on demand: clean file pages (the
binary's and the shared libraries' code and read-only data) are dropped and come back one by
one as the process touches them. RSS measured a few seconds later is the working set at rest,
against VmRSS, which still holds every page start-up ever touched.

usage: bench/pageout.py PID    (root; kernel >= 5.10)
"""
import ctypes, os, sys

SYS_pidfd_open, SYS_process_madvise, MADV_PAGEOUT = 434, 440, 21
libc = ctypes.CDLL(None, use_errno=True)


class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def main():
    pid = int(sys.argv[1])
    pidfd = libc.syscall(SYS_pidfd_open, pid, 0)
    if pidfd < 0:
        sys.exit(f"pidfd_open({pid}): {os.strerror(ctypes.get_errno())}")
    ranges = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            f = line.split()
            # File-backed mappings only (a path, not [heap]/[stack]/anon_inode: the BPF maps'
            # mmaps and anonymous memory are not reclaimable without swap).
            if len(f) >= 6 and f[5].startswith("/"):
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                ranges.append((lo, hi - lo))
    done = 0
    for lo, n in ranges:
        iov = iovec(lo, n)
        r = libc.syscall(SYS_process_madvise, pidfd, ctypes.byref(iov), 1, MADV_PAGEOUT, 0)
        if r < 0:
            err = ctypes.get_errno()
            sys.exit(f"process_madvise(MADV_PAGEOUT): {os.strerror(err)}")
        done += r
    os.close(pidfd)
    print(f"paged out {len(ranges)} file mappings, {done >> 20} MB advised")


main()
