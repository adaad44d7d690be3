#!/usr/bin/env bash
# Writes the seed corpora from text-format protos with protoc --encode (no Python protobuf needed).
# Usage: fuzz/make_corpus.sh   (from anywhere; rewrites fuzz/corpus/xds_address and xds_authz)
set -euo pipefail
cd "$(dirname "$0")"
PROTO=../proto
enc() { # <message type> <out file> <text proto>
    printf '%s\n' "$3" | protoc -I"$PROTO" --encode="$1" istio/workload/workload.proto istio/security/authorization.proto >"$2"
}
A=corpus/xds_address
P=corpus/xds_authz
mkdir -p "$A" "$P"
rm -f "$A"/* "$P"/*

enc istio.workload.Address $A/service 'service { name: "echo" namespace: "default" hostname: "echo.default.svc.cluster.local"
  addresses { address: "\x0a\x60\x00\x0a" } addresses { address: "\xfd\x00\x00\x96\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10" }
  ports { service_port: 80 target_port: 8080 } ports { service_port: 443 } }'
enc istio.workload.Address $A/service_named_port_lb 'service { name: "echo" namespace: "default" hostname: "echo.default.svc.cluster.local"
  addresses { address: "\x0a\x60\x00\x0a" } ports { service_port: 80 target_port: 0 }
  load_balancing { routing_preference: REGION routing_preference: ZONE mode: FAILOVER health_policy: ALLOW_ALL }
  waypoint { address { address: "\x0a\xf4\x00\x09" } hbone_mtls_port: 15008 } }'
enc istio.workload.Address $A/service_passthrough 'service { name: "ext" namespace: "default" hostname: "ext.example.com"
  addresses { address: "\x0a\x60\x00\x0b" } ports { service_port: 443 target_port: 443 } load_balancing { mode: PASSTHROUGH } }'
enc istio.workload.Address $A/service_loopback_vip 'service { namespace: "x" hostname: "a" addresses { address: "\x7f\x00\x00\x01" } ports { service_port: 53 } ports { service_port: 53 } }'
enc istio.workload.Address $A/workload 'workload { uid: "Kubernetes//Pod/default/echo-1" name: "echo-1" namespace: "default"
  addresses: "\x0a\xf4\x00\x03" addresses: "\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03"
  services { key: "default/echo.default.svc.cluster.local" value { ports { service_port: 80 target_port: 8080 } } }
  node: "node-1" locality { region: "eu" zone: "eu-1a" } status: HEALTHY network_mode: STANDARD tunnel_protocol: HBONE
  workload_type: POD authorization_policies: "default/allow" cluster_id: "Kubernetes" capacity { value: 2 } }'
enc istio.workload.Address $A/workload_unhealthy_waypoint 'workload { uid: "Kubernetes//Pod/default/echo-2" namespace: "default"
  addresses: "\x0a\xf4\x00\x04" services { key: "default/echo.default.svc.cluster.local" value { } }
  status: UNHEALTHY network_mode: HOST_NETWORK waypoint { hostname { namespace: "default" hostname: "wp.default.svc.cluster.local" } hbone_mtls_port: 15008 }
  network_gateway { address { network: "n2" address: "\x0a\x00\x00\x01" } hbone_mtls_port: 15008 } }'
enc istio.workload.Address $A/workload_bad_address 'workload { uid: "Kubernetes//Pod/default/bad" addresses: "\x01\x02\x03\x04\x05" }'
# Several resources in one input, separated by 0xff 0xfe (see xds_address_fuzz.cpp).
{ cat $A/service; printf '\xff\xfe'; cat $A/workload; printf '\xff\xfe'; cat $A/workload_unhealthy_waypoint; printf '\xff\xfe'; cat $A/service_named_port_lb; } >$A/sequence

enc istio.security.Authorization $P/allow 'name: "allow" namespace: "default" scope: NAMESPACE action: ALLOW
  rules { clauses { matches { principals { exact: "cluster.local/ns/default/sa/sleep" } namespaces { prefix: "def" } } }
          clauses { matches { destination_ports: 80 not_destination_ports: 8080 } } }'
enc istio.security.Authorization $P/deny_ips 'name: "deny" namespace: "default" scope: WORKLOAD_SELECTOR action: DENY dry_run: true
  rules { clauses { matches { source_ips { address: "\x0a\x00\x00\x00" length: 8 }
    not_destination_ips { address: "\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" length: 64 }
    service_accounts { namespace: "default" service_account: "sleep" } not_principals { suffix: "/sa/evil" } } } }'
enc istio.security.Authorization $P/global_empty 'name: "g" scope: GLOBAL'
enc istio.security.Authorization $P/bad_prefix 'name: "b" namespace: "x" rules { clauses { matches { source_ips { address: "\x0a\x00\x00\x00" length: 40 } } } }'
ls -l $A $P
