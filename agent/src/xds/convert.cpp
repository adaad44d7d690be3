#include "agent/src/xds/convert.hpp"

#include <fmt/format.h>

namespace kmesh::xds {

namespace {

std::string ip(const std::string& raw, const std::string& what, IpAddr* out) {
    auto a = IpAddr::from_raw(raw);
    if (!a) return fmt::format("{} is {} bytes; an IP address is 4 or 16", what, raw.size());
    *out = *a;
    return {};
}

std::string port(uint32_t value, bool allow_zero, const std::string& what, uint16_t* out) {
    if (value > 65535 || (!allow_zero && value == 0))
        return fmt::format("{} {} is not a valid port", what, value);
    *out = static_cast<uint16_t>(value);
    return {};
}

std::string ports(const google::protobuf::RepeatedPtrField<istio::workload::Port>& in,
                  const std::string& what, std::vector<ServicePort>* out) {
    for (const auto& p : in) {
        ServicePort sp;
        if (auto e = port(p.service_port(), false, what + " service_port", &sp.service_port); !e.empty())
            return e;
        if (auto e = port(p.target_port(), true, what + " target_port", &sp.target_port); !e.empty())
            return e;
        out->push_back(sp);
    }
    return {};
}

std::string waypoint(const istio::workload::GatewayAddress& in, std::optional<Waypoint>* out) {
    Waypoint w;
    if (in.has_address()) {
        IpAddr a;
        if (auto e = ip(in.address().address(), "waypoint address", &a); !e.empty()) return e;
        w.address = a;
    } else if (in.has_hostname()) {
        w.hostname = in.hostname().namespace_() + "/" + in.hostname().hostname();
    }
    if (auto e = port(in.hbone_mtls_port(), true, "waypoint port", &w.port); !e.empty()) return e;
    *out = w;
    return {};
}

}  // namespace

std::string convert_service(const istio::workload::Service& in, Service* out) {
    Service s;
    s.name = in.name();
    s.namespace_ = in.namespace_();
    s.hostname = in.hostname();
    if (s.hostname.empty() || s.namespace_.empty()) return "service without namespace or hostname";
    for (const auto& a : in.addresses()) {
        IpAddr vip;
        if (auto e = ip(a.address(), "service address", &vip); !e.empty()) return e;
        s.addresses.push_back(vip);
    }
    if (auto e = ports(in.ports(), "service port", &s.ports); !e.empty()) return e;
    if (in.has_load_balancing()) {
        LoadBalancing lb;
        for (int scope : in.load_balancing().routing_preference()) {
            if (scope < 1 || scope > 6) return fmt::format("unknown routing_preference scope {}", scope);
            lb.routing_preference.push_back(static_cast<LbScope>(scope));
        }
        lb.mode = static_cast<LbMode>(in.load_balancing().mode());
        lb.allow_unhealthy = in.load_balancing().health_policy() == istio::workload::LoadBalancing::ALLOW_ALL;
        s.load_balancing = lb;
    }
    if (in.has_waypoint())
        if (auto e = waypoint(in.waypoint(), &s.waypoint); !e.empty()) return e;
    *out = std::move(s);
    return {};
}

std::string convert_workload(const istio::workload::Workload& in, Workload* out) {
    Workload w;
    w.uid = in.uid();
    if (w.uid.empty()) return "workload without uid";
    w.name = in.name();
    w.namespace_ = in.namespace_();
    for (const auto& raw : in.addresses()) {
        IpAddr a;
        if (auto e = ip(raw, "workload address", &a); !e.empty()) return e;
        w.addresses.push_back(a);
    }
    for (const auto& [key, list] : in.services()) {
        if (key.find('/') == std::string::npos)
            return fmt::format("service key '{}' is not namespace/hostname", key);
        if (auto e = ports(list.ports(), "workload port", &w.services[key]); !e.empty()) return e;
    }
    w.status =
        in.status() == istio::workload::UNHEALTHY ? WorkloadStatus::kUnhealthy : WorkloadStatus::kHealthy;
    w.network_mode = in.network_mode() == istio::workload::HOST_NETWORK ? NetworkMode::kHostNetwork
                                                                        : NetworkMode::kStandard;
    w.placement =
        Placement::intern({in.node(), in.network(), in.cluster_id(),
                           Locality{in.locality().region(), in.locality().zone(), in.locality().subzone()}});
    if (in.has_waypoint()) {
        std::optional<Waypoint> wp;
        if (auto e = waypoint(in.waypoint(), &wp); !e.empty()) return e;
        w.waypoint = Waypoint::intern(*wp);
    }
    w.authorization_policies.assign(in.authorization_policies().begin(), in.authorization_policies().end());
    *out = std::move(w);
    return {};
}

std::string validate_authorization(const istio::security::Authorization& in) {
    if (in.name().empty()) return "authorization without name";
    auto addresses = [](const auto& list) -> std::string {
        for (const auto& a : list) {
            size_t bits = a.address().size() * 8;
            if (bits != 32 && bits != 128) return fmt::format("address of {} bytes", a.address().size());
            if (a.length() > bits) return fmt::format("prefix length {} longer than the address", a.length());
        }
        return {};
    };
    for (const auto& rule : in.rules())
        for (const auto& clause : rule.clauses())
            for (const auto& m : clause.matches()) {
                for (const auto* list :
                     {&m.source_ips(), &m.not_source_ips(), &m.destination_ips(), &m.not_destination_ips()})
                    if (auto e = addresses(*list); !e.empty()) return e;
                for (const auto* list : {&m.destination_ports(), &m.not_destination_ports()})
                    for (uint32_t p : *list)
                        if (p > 65535) return fmt::format("destination port {} out of range", p);
            }
    return {};
}

std::string resource_name(const istio::workload::Address& a) {
    if (a.has_workload()) return a.workload().uid();
    if (a.has_service()) return a.service().namespace_() + "/" + a.service().hostname();
    return {};
}

std::string resource_name(const istio::security::Authorization& p) { return p.namespace_() + "/" + p.name(); }

}  // namespace kmesh::xds
