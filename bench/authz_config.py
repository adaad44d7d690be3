#!/usr/bin/env python3
"""Writes a kmesh-daemon config for the authz@N cells: the measured service (VIP 10.96.0.10, ports
80 and 11111) backed by the server pod, the client pod as a workload with its own identity, and N
policies that apply to the server, every one evaluated on the allowed path:

  - N/2 DENY policies of 10 rules each, each rule one clause of three match groups (a principal,
    a source CIDR, a port; none the client's): the kernel has to rule every one out;
  - N/2 ALLOW policies of 10 rules each for other identities; the last one also allows the client
    by its principal, so the connection is allowed by the last policy evaluated.

N = 0 writes no policy (the kmesh cell with an enrolled server). The policies are WORKLOAD_SELECTOR
ones the server names, as `istioctl` users write them for one workload.

usage: authz_config.py N SERVER_IP CLIENT_IP
"""
import sys


def policy(i, action, last):
    rules = []
    for r in range(10):
        other = f"cluster.local/ns/team-{i}/sa/client-{r}"
        # Three match groups OR-ed: an identity, a source CIDR and a port, none the client's, so
        # each is looked at (no group is decided by the identity alone).
        m = (f'{{principals: [{{exact: "{other}"}}]}}, '
             f'{{source_ips: ["10.{200 + r}.{i // 256 % 256}.0/24"]}}, '
             f'{{destination_ports: [{8000 + r}]}}')
        rules.append(f"{{clauses: [{{matches: [{m}]}}]}}")
    if last:
        rules[-1] = '{clauses: [{matches: [{principals: [{exact: "cluster.local/ns/bench/sa/client"}]}]}]}'
    return (f"- {{name: p{i:05d}, namespace: bench, scope: WORKLOAD_SELECTOR, action: {action}, "
            f"rules: [{', '.join(rules)}]}}")


def main():
    n, server, client = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    names = [f"p{i:05d}" for i in range(n)]
    out = ["services:",
           '- {name: bench, namespace: bench, hostname: bench.bench.svc.cluster.local, '
           'addresses: ["10.96.0.10"], ports: [{service_port: 80, target_port: 80}, '
           '{service_port: 11111, target_port: 11111}]}',
           "workloads:",
           f'- {{uid: Kubernetes//Pod/bench/server, name: server, namespace: bench, service_account: server, '
           f'addresses: ["{server}"], services: {{bench/bench.bench.svc.cluster.local: }}, '
           f'authorization_policies: [{", ".join("bench/" + x for x in names)}]}}',
           f'- {{uid: Kubernetes//Pod/bench/client, name: client, namespace: bench, service_account: client, '
           f'addresses: ["{client}"]}}']
    if n:
        out.append("policies:")
        deny = n // 2
        for i in range(n):
            out.append(policy(i, "DENY" if i < deny else "ALLOW", i == n - 1))
    print("\n".join(out))


if __name__ == "__main__":
    main()
