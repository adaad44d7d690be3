#!/usr/bin/env python3
"""Checks the agent's /debug/conn_events (a JSON file) against what a test did (e2e_telemetry_kernel.sh).

  conn_events_check.py pair FILE CLIENT CPORT BACKEND BPORT VIP VPORT SENT RECV
      One connection CLIENT:CPORT -> VIP:VPORT, translated to BACKEND:BPORT, where the client wrote
      SENT bytes and the server RECV: OPEN and CLOSE for both roles, the VIP as orig of the source,
      the backend as its remote, and bytes (UPDATEs and CLOSE added) equal to what was written,
      allowing the one the FIN counts.
  conn_events_check.py update FILE CPORT SENT RECV
      The source end with local port CPORT reported SENT / RECV bytes in UPDATEs, and has no CLOSE.
  conn_events_check.py denied FILE CLIENT BACKEND BPORT
      A DENIED event (destination role) for CLIENT -> BACKEND:BPORT.
Exit 0 when the check holds; otherwise prints what was found and exits 1.
"""
import ipaddress
import json
import sys


def norm(a):
    return str(ipaddress.ip_address(a))


def load(path):
    with open(path) as f:
        return json.load(f)["events"]


def fail(msg, evs):
    print("FAIL:", msg)
    for e in evs:
        print("  ", json.dumps(e, sort_keys=True))
    sys.exit(1)


def within(got, want):
    return want <= got <= want + 1  # a FIN counts one in the kernel's byte counters


def pair(path, client, cport, backend, bport, vip, vport, sent, recv):
    client, backend, vip = norm(client), norm(backend), norm(vip)
    cport, bport, vport, sent, recv = int(cport), int(bport), int(vport), int(sent), int(recv)
    evs = load(path)
    src = [e for e in evs if e["role"] == "source" and norm(e["local"]) == client and e["local_port"] == cport]
    dst = [e for e in evs if e["role"] == "destination" and norm(e["remote"]) == client
           and e["remote_port"] == cport]
    problems = []
    for name, side in (("source", src), ("destination", dst)):
        types = [e["type"] for e in side]
        if types.count("open") != 1 or types.count("close") != 1:
            problems.append("%s: want one open and one close, got %s" % (name, types))
        if len({e["cookie"] for e in side}) > 1:
            problems.append("%s: events of more than one socket" % name)
    for e in src:
        if norm(e["remote"]) != backend or e["remote_port"] != bport:
            problems.append("source remote %s:%d, want the backend %s:%d" % (e["remote"], e["remote_port"],
                                                                              backend, bport))
        if not e["translated"] or norm(e.get("orig", "::")) != vip or e.get("orig_port") != vport:
            problems.append("source orig %s:%s translated=%s, want the VIP %s:%d" % (
                e.get("orig"), e.get("orig_port"), e["translated"], vip, vport))
    for e in dst:
        if norm(e["local"]) != backend or e["local_port"] != bport:
            problems.append("destination local %s:%d, want %s:%d" % (e["local"], e["local_port"], backend, bport))
        if e["translated"]:
            problems.append("destination marked translated")
    s_sent = sum(e["sent_bytes"] for e in src)
    s_recv = sum(e["recv_bytes"] for e in src)
    d_sent = sum(e["sent_bytes"] for e in dst)
    d_recv = sum(e["recv_bytes"] for e in dst)
    if not within(s_sent, sent) or not within(s_recv, recv):
        problems.append("source bytes sent/recv %d/%d, the test wrote %d/%d" % (s_sent, s_recv, sent, recv))
    if not within(d_sent, recv) or not within(d_recv, sent):
        problems.append("destination bytes sent/recv %d/%d, the test wrote %d/%d" % (d_sent, d_recv, recv, sent))
    for e in src + dst:
        if e["type"] == "close" and e["duration_ns"] <= 0:
            problems.append("close without a duration")
        if e["type"] == "open" and (e["sent_bytes"] or e["recv_bytes"]):
            problems.append("open carries bytes")
    if problems:
        fail("; ".join(problems), src + dst)
    print("ok: source %d/%d, destination %d/%d bytes" % (s_sent, s_recv, d_sent, d_recv))


def update(path, cport, sent, recv):
    cport, sent, recv = int(cport), int(sent), int(recv)
    evs = [e for e in load(path) if e["role"] == "source" and e["local_port"] == int(cport)]
    ups = [e for e in evs if e["type"] == "update"]
    u_sent = sum(e["sent_bytes"] for e in ups)
    u_recv = sum(e["recv_bytes"] for e in ups)
    if not ups or any(e["type"] == "close" for e in evs) or u_sent != sent or u_recv != recv:
        fail("want updates of %d/%d bytes before any close, got %d/%d" % (sent, recv, u_sent, u_recv), evs)
    print("ok: %d updates, %d/%d bytes" % (len(ups), u_sent, u_recv))


def denied(path, client, backend, bport):
    client, backend, bport = norm(client), norm(backend), int(bport)
    evs = load(path)
    hits = [e for e in evs if e["type"] == "denied" and e["role"] == "destination"
            and norm(e["remote"]) == client and norm(e["local"]) == backend and e["local_port"] == bport]
    if not hits:
        fail("no denied event for %s -> %s:%d" % (client, backend, bport),
             [e for e in evs if e["type"] == "denied"])
    print("ok: %d denied events" % len(hits))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"pair": pair, "update": update, "denied": denied}[cmd](*args)
