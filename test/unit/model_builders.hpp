// Terse constructors of model objects for tests.
#pragma once

#include <string>
#include <vector>

#include "agent/src/model/model.hpp"

namespace kmesh::test {

inline Service service(const std::string& host, const std::vector<std::string>& vips,
                       std::vector<ServicePort> ports = {{80, 8080}}) {
    Service s;
    s.name = host;
    s.namespace_ = "default";
    s.hostname = host + ".default.svc.cluster.local";
    for (const auto& v : vips) s.addresses.push_back(*IpAddr::parse(v));
    s.ports = std::move(ports);
    return s;
}

inline Workload workload(const std::string& name, const std::vector<std::string>& addrs,
                         const std::vector<std::string>& hosts) {
    Workload w;
    w.uid = "Kubernetes//Pod/default/" + name;
    w.name = name;
    w.namespace_ = "default";
    for (const auto& a : addrs) w.addresses.push_back(*IpAddr::parse(a));
    for (const auto& h : hosts) w.services["default/" + h + ".default.svc.cluster.local"] = {};
    return w;
}

inline void add(Model& m, const Service& s) { m.services[s.key()] = s; }
inline void add(Model& m, const Workload& w) { m.workloads[w.uid] = w; }

}  // namespace kmesh::test
