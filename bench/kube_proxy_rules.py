#!/usr/bin/env python3
"""Writes an iptables-restore file with the nat rules kube-proxy (iptables mode) programs for N
services, each with two endpoints: KUBE-SERVICES -> KUBE-SVC-* (statistic random) -> KUBE-SEP-*
(masquerade mark for hairpin, DNAT). The measured services (VIP 10.96.0.10, ports 80 and 11111)
sit in the middle of KUBE-SERVICES, where an average service of a real cluster sits.

usage: kube_proxy_rules.py N BACKEND_IP [BACKEND_IP2]
"""
import hashlib
import sys


def chain(prefix, name):
    # kube-proxy names chains with a base32 hash of the service/endpoint; any stable 16 chars do.
    return prefix + hashlib.sha256(name.encode()).hexdigest()[:16].upper()


def service_rules(out, name, vip, port, endpoints):
    svc = chain("KUBE-SVC-", name)
    out.append(f":{svc} - [0:0]")
    seps = []
    for i, (ip, target) in enumerate(endpoints):
        sep = chain("KUBE-SEP-", f"{name}/{ip}:{target}")
        out.append(f":{sep} - [0:0]")
        seps.append((sep, ip, target))
    rules = [f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" "
             f"-m tcp --dport {port} -j {svc}"]
    for i, (sep, ip, target) in enumerate(seps):
        left = len(seps) - i
        stat = f"-m statistic --mode random --probability {1.0 / left:.11f} " if left > 1 else ""
        rules.append(f"-A {svc} -m comment --comment \"{name}\" {stat}-j {sep}")
        rules.append(f"-A {sep} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ")
        rules.append(f"-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ip}:{target}")
    return rules


def main():
    n = int(sys.argv[1])
    backends = sys.argv[2:]
    out = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
           ":KUBE-POSTROUTING - [0:0]"]
    rules = []
    middle = n // 2
    for i in range(n):
        if i == middle:
            for port, target in ((80, 80), (11111, 11111)):
                rules += service_rules(out, f"default/bench:{port}", "10.96.0.10", port,
                                       [(b, target) for b in backends])
            continue
        # Filler services: VIPs in 10.97.0.0/16+, endpoints in an unused range (never hit).
        vip = f"10.{97 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        rules += service_rules(out, f"fill/svc-{i}:80", vip, 80,
                               [(f"10.250.{(i // 256) % 256}.{i % 256}", 8080), (f"10.251.{(i // 256) % 256}.{i % 256}", 8080)])
    out += ["-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"]
    out += rules
    out.append("COMMIT")
    print("\n".join(out))


if __name__ == "__main__":
    main()
