// The standalone config source: a YAML file shaped like the Istio workload API.
//
//   services:
//   - name: echo
//     namespace: default
//     hostname: echo.default.svc.cluster.local
//     addresses: ["10.96.0.10", "fd00:10:96::10"]    # or {network: "", address: ...}
//     ports: [{service_port: 80, target_port: 8080}]   # target_port omitted: the service port;
//                                                     # 0: a named port, each workload maps it
//     load_balancing: {routing_preference: [REGION, ZONE], mode: FAILOVER}   # or PASSTHROUGH, ...
//   workloads:
//   - uid: Kubernetes//Pod/default/echo-1
//     name: echo-1
//     namespace: default
//     addresses: ["10.244.0.11"]
//     services: {"default/echo.default.svc.cluster.local": {ports: [{service_port: 80, target_port: 8080}]}}
//     status: HEALTHY                                 # or UNHEALTHY
//
// Field names follow the proto (snake_case); protojson's lowerCamelCase spellings are accepted too.
// Each service and workload meets the same rules as one from istiod (model_validate.hpp).
#pragma once

#include <string>
#include <variant>
#include <vector>

#include "agent/src/model.hpp"

namespace kmesh {

struct ConfigError {
    std::vector<std::string> problems;  // each names the offending field and line
    std::string summary() const;
};

std::variant<Model, ConfigError> parse_config_yaml(const std::string& text);
std::variant<Model, ConfigError> load_config_file(const std::string& path);

}  // namespace kmesh
