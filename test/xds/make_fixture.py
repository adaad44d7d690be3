#!/usr/bin/env python3
"""Build fixture JSON for fake_istiod (python3 stdlib only).

Output: {"addresses": [istio.workload.Address as proto3 JSON...], "authorizations": [...]}.
IPs are given as text; this script does the base64 of the raw 4/16 bytes.

  --service NS/HOST=ITEM[,ITEM...]   ITEM: VIP | VIP:PORT[:TARGET] | [V6]:PORT[:TARGET] | PORT[:TARGET]
        e.g. default/echo.default.svc.cluster.local=10.96.0.10:80:8080,443
  --workload KEY=VALUE[,KEY=VALUE...]   keys: uid (required), name, namespace, ip (+ separated),
        services (+ separated NS/HOST, optionally NS/HOST:SP:TP[:SP:TP...]; without ports the
        service's own ports are used), node, sa, trust_domain, network, cluster_id, status
        (healthy|unhealthy), tunnel (none|hbone), canonical_name, canonical_revision,
        workload_name, workload_type (deployment|cronjob|pod|job), policies (+ separated NS/NAME),
        hostname, network_mode (standard|host_network)
  --malformed-workload KEY=VALUE,...   a workload as above plus addrbytes=N: its address is N bytes
  --raw NAME=BASE64[@TYPE_URL]   an Address-stream resource sent verbatim (Any.value = BASE64)
  --garbage NAME                 an Address-stream resource whose bytes do not parse
  --authorization-json JSON      an istio.security.Authorization (proto3 JSON), repeatable
  --address-json JSON            any istio.workload.Address entry (proto3 JSON), repeatable
  --allow NS/NAME=PRINCIPAL[+...]   convenience ALLOW policy (namespace scope) on principals
  --scale N,M                    N services x M workloads each (namespace "bench")
  -o FILE                        write atomically (temp file + rename) instead of stdout
"""

import argparse
import base64
import ipaddress
import json
import os
import sys
import tempfile

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"


def ip_b64(text):
    return base64.b64encode(ipaddress.ip_address(text).packed).decode()


def _ports(pairs):
    return [{"servicePort": sp, "targetPort": tp} for sp, tp in pairs]


def service(namespace, hostname, vips=(), ports=(), name=None, network=""):
    """ports: iterable of (service_port, target_port); target 0 = same as service port."""
    svc = {
        "name": name or hostname.split(".")[0],
        "namespace": namespace,
        "hostname": hostname,
        "addresses": [{"network": network, "address": ip_b64(v)} for v in vips],
        "ports": _ports(ports),
    }
    return {"service": svc}


def workload(uid, ips=(), services=None, name=None, namespace=None, **extra):
    """services: {"ns/host": [(sp, tp), ...]}; extra: any Workload field in proto3 JSON naming."""
    parts = uid.split("/")
    if namespace is None:
        namespace = parts[-2] if len(parts) >= 2 else "default"
    wl = {
        "uid": uid,
        "name": name or parts[-1],
        "namespace": namespace,
        "addresses": [ip_b64(ip) for ip in ips],
    }
    if services:
        wl["services"] = {k: {"ports": _ports(v)} for k, v in services.items()}
    wl.update(extra)
    return {"workload": wl}


def raw(name, data, type_url=ADDRESS_TYPE):
    return {"raw_name": name, "raw_type_url": type_url, "raw_base64": base64.b64encode(data).decode()}


def allow_principals(namespace, name, principals):
    return {
        "name": name,
        "namespace": namespace,
        "scope": "NAMESPACE",
        "action": "ALLOW",
        "rules": [{"clauses": [{"matches": [{"principals": [{"exact": p} for p in principals]}]}]}],
    }


def fixture(addresses=(), authorizations=()):
    return {"addresses": list(addresses), "authorizations": list(authorizations)}


def scale(n_services, m_workloads):
    """N services (VIPs from 10.96.0.0 up) x M workloads each (pod IPs from 10.128.0.0 up), fast."""
    out = []
    vip_base = int(ipaddress.IPv4Address("10.96.0.0"))
    pod_base = int(ipaddress.IPv4Address("10.128.0.0"))
    b64 = base64.b64encode
    for i in range(n_services):
        host = f"svc-{i}.bench.svc.cluster.local"
        key = "bench/" + host
        ports = [{"servicePort": 80, "targetPort": 8080}]
        out.append({"service": {
            "name": f"svc-{i}", "namespace": "bench", "hostname": host,
            "addresses": [{"network": "", "address": b64((vip_base + i + 1).to_bytes(4, "big")).decode()}],
            "ports": ports,
        }})
        for j in range(m_workloads):
            ip = pod_base + i * m_workloads + j + 1
            out.append({"workload": {
                "uid": f"Kubernetes//Pod/bench/svc-{i}-{j}",
                "name": f"svc-{i}-{j}", "namespace": "bench",
                "addresses": [b64(ip.to_bytes(4, "big")).decode()],
                "serviceAccount": "default", "node": f"node-{j % 4}",
                "services": {key: {"ports": ports}},
            }})
    return out


# ---- CLI parsing -----------------------------------------------------------------------------

def _split_hostport(item):
    """'10.0.0.1:80:8080' / '[fd00::1]:80' / '10.0.0.1' / '80:8080' -> (ip or None, [ints])."""
    if item.startswith("["):
        end = item.index("]")
        ip, rest = item[1:end], item[end + 1:].lstrip(":")
        return ip, [int(x) for x in rest.split(":") if x]
    try:
        return str(ipaddress.ip_address(item)), []
    except ValueError:
        pass
    head, *rest = item.split(":")
    try:
        return str(ipaddress.IPv4Address(head)), [int(x) for x in rest]
    except ValueError:
        return None, [int(x) for x in [head] + rest]


def parse_service(spec):
    key, _, value = spec.partition("=")
    namespace, _, hostname = key.partition("/")
    if not namespace or not hostname:
        raise SystemExit(f"--service {spec!r}: expected NS/HOST=...")
    vips, ports = [], []
    for item in filter(None, value.split(",")):
        ip, nums = _split_hostport(item)
        if ip:
            vips.append(ip)
        if nums:
            if len(nums) > 2:
                raise SystemExit(f"--service {spec!r}: bad port spec {item!r}")
            ports.append((nums[0], nums[1] if len(nums) == 2 else 0))
    return service(namespace, hostname, vips, ports)


ENUMS = {
    "status": ("status", {"healthy": "HEALTHY", "unhealthy": "UNHEALTHY"}),
    "tunnel": ("tunnelProtocol", {"none": "NONE", "hbone": "HBONE"}),
    "workload_type": ("workloadType", {"deployment": "DEPLOYMENT", "cronjob": "CRONJOB", "pod": "POD", "job": "JOB"}),
    "network_mode": ("networkMode", {"standard": "STANDARD", "host_network": "HOST_NETWORK"}),
}
STRINGS = {"node": "node", "sa": "serviceAccount", "trust_domain": "trustDomain", "network": "network",
           "cluster_id": "clusterId", "canonical_name": "canonicalName", "canonical_revision": "canonicalRevision",
           "workload_name": "workloadName", "hostname": "hostname"}


def parse_workload(spec, service_ports, malformed=False):
    kv = {}
    for part in filter(None, spec.split(",")):
        k, sep, v = part.partition("=")
        if not sep:
            raise SystemExit(f"workload {spec!r}: {part!r} is not KEY=VALUE")
        kv[k] = v
    if "uid" not in kv:
        raise SystemExit(f"workload {spec!r}: uid= is required")
    services = {}
    for s in filter(None, kv.pop("services", "").split("+")):
        key, *nums = s.split(":")
        if nums:
            if len(nums) % 2:
                raise SystemExit(f"workload {spec!r}: service {s!r} needs SP:TP pairs")
            services[key] = [(int(nums[i]), int(nums[i + 1])) for i in range(0, len(nums), 2)]
        else:
            services[key] = service_ports.get(key, [])
    extra = {}
    for k, (field, values) in ENUMS.items():
        if k in kv:
            extra[field] = values[kv.pop(k).lower()]
    for k, field in STRINGS.items():
        if k in kv:
            extra[field] = kv.pop(k)
    if "policies" in kv:
        extra["authorizationPolicies"] = kv.pop("policies").split("+")
    addrbytes = kv.pop("addrbytes", None)
    uid, name, namespace = kv.pop("uid"), kv.pop("name", None), kv.pop("namespace", None)
    ips = [x for x in kv.pop("ip", "").split("+") if x]
    if kv:
        raise SystemExit(f"workload {spec!r}: unknown keys {sorted(kv)}")
    w = workload(uid, ips, services, name=name, namespace=namespace, **extra)
    if malformed:
        n = int(addrbytes if addrbytes is not None else 5)
        w["workload"]["addresses"] = [base64.b64encode(bytes(range(1, n + 1))).decode()]
    return w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--service", action="append", default=[])
    p.add_argument("--workload", action="append", default=[])
    p.add_argument("--malformed-workload", action="append", default=[])
    p.add_argument("--raw", action="append", default=[])
    p.add_argument("--garbage", action="append", default=[])
    p.add_argument("--address-json", action="append", default=[])
    p.add_argument("--authorization-json", action="append", default=[])
    p.add_argument("--allow", action="append", default=[])
    p.add_argument("--scale")
    p.add_argument("-o", "--output")
    a = p.parse_args(argv)

    addresses, authorizations = [], []
    service_ports = {}
    for spec in a.service:
        s = parse_service(spec)["service"]
        service_ports[f"{s['namespace']}/{s['hostname']}"] = [(x["servicePort"], x["targetPort"]) for x in s["ports"]]
        addresses.append({"service": s})
    addresses += [parse_workload(s, service_ports) for s in a.workload]
    addresses += [parse_workload(s, service_ports, malformed=True) for s in a.malformed_workload]
    for spec in a.raw:
        name, _, rest = spec.partition("=")
        b64, _, type_url = rest.partition("@")
        addresses.append({"raw_name": name, "raw_type_url": type_url or ADDRESS_TYPE, "raw_base64": b64})
    # 0xff... is an invalid tag/wire type: the bytes cannot parse as any message.
    addresses += [raw(name, b"\xff\xff\xff\xff\xff\x0f\x07garbage") for name in a.garbage]
    addresses += [json.loads(x) for x in a.address_json]
    authorizations += [json.loads(x) for x in a.authorization_json]
    for spec in a.allow:
        key, _, principals = spec.partition("=")
        ns, _, name = key.partition("/")
        authorizations.append(allow_principals(ns, name, principals.split("+")))
    if a.scale:
        n, m = (int(x) for x in a.scale.split(","))
        addresses += scale(n, m)

    text = json.dumps(fixture(addresses, authorizations), separators=(",", ":")) + "\n"
    if not a.output:
        sys.stdout.write(text)
        return
    directory = os.path.dirname(os.path.abspath(a.output))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fixture-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, a.output)


if __name__ == "__main__":
    main()
