#!/usr/bin/env python3
"""UDP (and TCP getpeername) probes for e2e_udp.sh; the kernel's own socket calls are the oracle.

  serve NAME PORT               dual-stack UDP server: answers each datagram with "NAME"
                                (a datagram "delay S" is answered after S seconds)
  query ADDR PORT N [--mapped] [--connect] [--same-socket] [--delay S] [--mark FILE]
                                N queries; one line each: "NAME FROM_ADDR FROM_PORT [PEER_ADDR PEER_PORT]"
                                or "error ERRNO_NAME". --mapped: AF_INET6 socket to ::ffff:ADDR.
                                --connect: connect() first (PEER: getpeername()), then send().
                                --same-socket: one socket for all N (else one per query).
                                --mark FILE: append "sent" to FILE once the first query is sent.
  tcppeer ADDR PORT [--mapped]  TCP connect; prints getpeername() as "ADDR PORT"
  churn ADDR PORT N [--hold]    N sockets each send one query and read the reply; closed at once,
                                or (--hold) all kept open until stdin closes; prints "done K" (replies)
  bench ADDR PORT N [--new-socket]
                                N query/reply round trips (bench/udp.sh); prints "qps Q us_per_query U"
"""
import errno
import os
import socket
import sys
import time


def family_and_addr(addr, mapped):
    if mapped:
        return socket.AF_INET6, "::ffff:" + addr
    return (socket.AF_INET6 if ":" in addr else socket.AF_INET), addr


def new_socket(fam, kind=socket.SOCK_DGRAM):
    s = socket.socket(fam, kind)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return s


def err_line(e):
    return "error " + errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "error " + type(e).__name__


def serve(name, port):
    s = new_socket(socket.AF_INET6)
    s.bind(("::", port))
    while True:
        data, peer = s.recvfrom(2048)
        if data.startswith(b"delay "):
            if os.fork() == 0:  # answer later from the same socket, keep serving meanwhile
                time.sleep(float(data.split()[1]))
                s.sendto(name.encode(), peer)
                os._exit(0)
            continue
        s.sendto(name.encode(), peer)


def show(addr):
    a = addr[0]
    return f"{a} {addr[1]}"


def query(addr, port, n, mapped, connect, same, delay, mark):
    fam, dst = family_and_addr(addr, mapped)
    s = None
    for i in range(n):
        if s is None or not same:
            if s is not None:
                s.close()
            s = new_socket(fam)
            s.settimeout(2.0 + delay)
            if connect:
                try:
                    s.connect((dst, port))
                except OSError as e:
                    print(err_line(e), flush=True)
                    s.close()
                    s = None
                    continue
        payload = f"delay {delay}".encode() if delay else b"q"
        try:
            if connect:
                s.send(payload)
            else:
                s.sendto(payload, (dst, port))
            if mark and i == 0:
                with open(mark, "a") as f:
                    f.write("sent\n")
            data, frm = s.recvfrom(2048)
            line = f"{data.decode()} {show(frm)}"
            if connect:
                line += " " + show(s.getpeername())
            print(line, flush=True)
        except OSError as e:
            print(err_line(e), flush=True)
            if not same:
                s.close()
                s = None
    if s is not None:
        s.close()


def tcppeer(addr, port, mapped):
    fam, dst = family_and_addr(addr, mapped)
    s = new_socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((dst, port))
        print(show(s.getpeername()), flush=True)
    except OSError as e:
        print(err_line(e), flush=True)
    s.close()


def churn(addr, port, n, hold):
    fam, dst = family_and_addr(addr, False)
    socks, replies = [], 0
    for _ in range(n):
        s = new_socket(fam)
        s.settimeout(2)
        try:
            s.sendto(b"q", (dst, port))
            s.recvfrom(2048)
            replies += 1
        except OSError:
            pass
        if hold:
            socks.append(s)
        else:
            s.close()
    print(f"done {replies}", flush=True)
    if hold:
        sys.stdin.read()
        for s in socks:
            s.close()


def bench(addr, port, n, fresh):
    fam, dst = family_and_addr(addr, False)
    s = None
    start = time.perf_counter()
    for _ in range(n):
        if s is None:
            s = new_socket(fam)
            s.settimeout(2)
        s.sendto(b"q", (dst, port))
        s.recvfrom(2048)
        if fresh:
            s.close()
            s = None
    elapsed = time.perf_counter() - start
    print(f"qps {n / elapsed:.0f} us_per_query {elapsed / n * 1e6:.1f}", flush=True)


def main(argv):
    args, flags, values = [], set(), {}
    it = iter(argv)
    for a in it:
        if a in ("--delay", "--mark"):
            values[a] = next(it)
        elif a.startswith("--"):
            flags.add(a)
        else:
            args.append(a)
    delay = float(values.get("--delay", "0"))
    mark = values.get("--mark", "")
    cmd = args[0] if args else ""
    if cmd == "serve":
        serve(args[1], int(args[2]))
    elif cmd == "query":
        query(args[1], int(args[2]), int(args[3]), "--mapped" in flags, "--connect" in flags,
              "--same-socket" in flags, delay, mark)
    elif cmd == "tcppeer":
        tcppeer(args[1], int(args[2]), "--mapped" in flags)
    elif cmd == "bench":
        bench(args[1], int(args[2]), int(args[3]), "--new-socket" in flags)
    elif cmd == "churn":
        churn(args[1], int(args[2]), int(args[3]), "--hold" in flags)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
