#include "agent/src/model/model_validate.hpp"

#include <fmt/format.h>

#include "bpf/kmesh_abi.h"

namespace kmesh {

std::string describe(const Service& s) {
    if (s.namespace_.empty() && s.hostname.empty()) return fmt::format("service '{}'", s.name);
    return fmt::format("service '{}/{}'", s.namespace_, s.hostname);
}

std::string describe(const Workload& w) {
    if (!w.uid.empty()) return fmt::format("workload '{}'", w.uid);
    return fmt::format("workload '{}/{}'", w.namespace_, w.name);
}

std::string unknown_enum(const std::string& field, const std::string& value) {
    return fmt::format("{} has the unknown value {}", field, value);
}

std::vector<std::string> validate_service(const Service& s) {
    std::vector<std::string> out;
    // The resource name is "namespace/hostname": without both it cannot be told apart.
    if (s.namespace_.empty()) out.push_back(fmt::format("{} has an empty namespace", describe(s)));
    if (s.hostname.empty()) out.push_back(fmt::format("{} has an empty hostname", describe(s)));
    for (const auto& p : s.ports)
        if (p.service_port == 0) out.push_back(fmt::format("{} has service port 0", describe(s)));
    // Kubernetes' bounds for sessionAffinityConfig.clientIP.timeoutSeconds.
    if (s.affinity_timeout > KMESH_MAX_AFFINITY_TIMEOUT)
        out.push_back(fmt::format("{}: session affinity timeout {} s is over the maximum of {} s",
                                  describe(s), s.affinity_timeout, KMESH_MAX_AFFINITY_TIMEOUT));
    return out;
}

std::vector<std::string> validate_workload(const Workload& w) {
    std::vector<std::string> out;
    if (w.uid.empty()) out.push_back(fmt::format("{} has an empty uid", describe(w)));
    for (const auto& [key, ports] : w.services) {
        auto slash = key.find('/');
        if (slash == std::string::npos)
            out.push_back(
                fmt::format("{}: service key '{}' is not \"namespace/hostname\"", describe(w), key));
        for (const auto& p : ports)
            if (p.service_port == 0)
                out.push_back(fmt::format("{}: service port 0 for '{}'", describe(w), key));
    }
    return out;
}

}  // namespace kmesh
