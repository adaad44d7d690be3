// The mesh as the config sources describe it, shaped like the Istio ambient workload API
// (istio.workload.Service / Workload). Both the file source and the xDS source produce this.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agent/src/ip_addr.hpp"

namespace kmesh {

struct ServicePort {
    uint16_t service_port = 0;
    uint16_t target_port = 0;  // 0: same as service_port
    auto operator<=>(const ServicePort&) const = default;
};

struct Service {
    std::string name;
    std::string namespace_;
    std::string hostname;
    std::vector<IpAddr> addresses;  // VIPs
    std::vector<ServicePort> ports;

    // Resource name in the workload API: "namespace/hostname".
    std::string key() const { return namespace_ + "/" + hostname; }
    bool operator==(const Service&) const = default;
};

enum class WorkloadStatus { kHealthy = 0, kUnhealthy = 1 };
enum class NetworkMode { kStandard = 0, kHostNetwork = 1 };

struct Workload {
    std::string uid;
    std::string name;
    std::string namespace_;
    std::vector<IpAddr> addresses;
    // "namespace/hostname" -> ports of that service this workload serves.
    std::map<std::string, std::vector<ServicePort>> services;
    WorkloadStatus status = WorkloadStatus::kHealthy;
    NetworkMode network_mode = NetworkMode::kStandard;
    std::string node;
    bool operator==(const Workload&) const = default;
};

struct Model {
    std::map<std::string, Service> services;    // by Service::key()
    std::map<std::string, Workload> workloads;  // by uid
    bool operator==(const Model&) const = default;
};

}  // namespace kmesh
