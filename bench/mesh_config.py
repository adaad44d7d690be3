#!/usr/bin/env python3
"""Writes a kmesh-daemon config with N services, the same shape as kube_proxy_rules.py: the
measured service (VIP 10.96.0.10, ports 80 and 11111) backed by the given pods, and N-1 filler
services with two workloads each. --json writes the same config as JSON (the agent reads either).

usage: mesh_config.py [--json] N BACKEND_IP [BACKEND_IP2]
"""
import json
import sys


def main():
    args = sys.argv[1:]
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    n = int(args[0])
    backends = args[1:]
    if as_json:
        services = [{"name": "bench", "namespace": "default", "hostname": "bench.default.svc.cluster.local",
                     "addresses": ["10.96.0.10"],
                     "ports": [{"service_port": 80, "target_port": 80},
                               {"service_port": 11111, "target_port": 11111}]}]
        workloads = [{"uid": f"Kubernetes//Pod/default/bench-{i}", "addresses": [ip],
                      "services": {"default/bench.default.svc.cluster.local": None}}
                     for i, ip in enumerate(backends)]
        for i in range(n - 1):
            host = f"svc-{i}.fill.svc.cluster.local"
            services.append({"name": f"svc-{i}", "namespace": "fill", "hostname": host,
                             "addresses": [f"10.{97 + i // 65536}.{(i // 256) % 256}.{i % 256}"],
                             "ports": [{"service_port": 80, "target_port": 8080}]})
            for side, net in (("a", 250), ("b", 251)):
                workloads.append({"uid": f"Kubernetes//Pod/fill/svc-{i}-{side}",
                                  "addresses": [f"10.{net}.{(i // 256) % 256}.{i % 256}"],
                                  "services": {f"fill/{host}": None}})
        json.dump({"services": services, "workloads": workloads}, sys.stdout, separators=(",", ":"))
        print()
        return
    out = ["services:",
           '- {name: bench, namespace: default, hostname: bench.default.svc.cluster.local, '
           'addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 80}, '
           '{service_port: 11111, target_port: 11111}]}']
    workloads = ["workloads:"]
    for i, ip in enumerate(backends):
        workloads.append(f'- {{uid: Kubernetes//Pod/default/bench-{i}, addresses: ["{ip}"], '
                         f'services: {{default/bench.default.svc.cluster.local: }}}}')
    for i in range(n - 1):
        vip = f"10.{97 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        host = f"svc-{i}.fill.svc.cluster.local"
        out.append(f'- {{name: svc-{i}, namespace: fill, hostname: {host}, addresses: ["{vip}"], '
                   f'ports: [{{service_port: 80, target_port: 8080}}]}}')
        for side, net in (("a", 250), ("b", 251)):
            workloads.append(f'- {{uid: Kubernetes//Pod/fill/svc-{i}-{side}, '
                             f'addresses: ["10.{net}.{(i // 256) % 256}.{i % 256}"], '
                             f'services: {{fill/{host}: }}}}')
    print("\n".join(out + workloads))


if __name__ == "__main__":
    main()
