#include "agent/src/sources/xds/convert.hpp"

#include <fmt/format.h>

#include "agent/src/model/model_validate.hpp"

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

// ztunnel refuses a gateway address that names no destination, or an address of bad length.
std::string gateway(const istio::workload::GatewayAddress& in, const std::string& what, Waypoint* out) {
    Waypoint w;
    if (in.has_address()) {
        IpAddr a;
        if (auto e = ip(in.address().address(), what + " address", &a); !e.empty()) return e;
        w.address = a;
    } else if (in.has_hostname()) {
        w.hostname = in.hostname().namespace_() + "/" + in.hostname().hostname();
    } else {
        return fmt::format("{} has neither an address nor a hostname", what);
    }
    if (auto e = port(in.hbone_mtls_port(), true, what + " hbone_mtls_port", &w.port); !e.empty()) return e;
    *out = w;
    return {};
}

// ztunnel converts enums with try_from: a value it does not know refuses the resource. (The
// fields it reads through prost's lenient getter, such as workload_type, are only recorded.)
template <typename IsValid>
std::string check_enum(int value, IsValid is_valid, const char* field) {
    return is_valid(value) ? std::string() : unknown_enum(field, std::to_string(value));
}

std::string first_problem(const std::vector<std::string>& problems) {
    std::string out;
    for (const auto& p : problems) out += (out.empty() ? "" : "; ") + p;
    return out;
}

}  // namespace

std::string convert_service(const istio::workload::Service& in, Service* out) {
    Service s;
    s.name = in.name();
    s.namespace_ = in.namespace_();
    s.hostname = in.hostname();
    // Field problems are reported bare: the NACK puts the resource name in front.
    auto fail = [](const std::string& e) { return e; };
    for (const auto& a : in.addresses()) {
        IpAddr vip;
        if (auto e = ip(a.address(), "service address", &vip); !e.empty()) return fail(e);
        s.addresses.push_back(vip);
    }
    if (auto e = ports(in.ports(), "service port", &s.ports); !e.empty()) return fail(e);
    if (auto e = check_enum(in.ip_families(), istio::workload::IPFamilies_IsValid, "ip_families"); !e.empty())
        return fail(e);
    if (in.has_load_balancing()) {
        const auto& l = in.load_balancing();
        LoadBalancing lb;
        for (int scope : l.routing_preference()) {
            // UNSPECIFIED_SCOPE is refused too ("invalid target" in ztunnel).
            if (scope < 1 || scope > 6)
                return fail(unknown_enum("load_balancing.routing_preference", std::to_string(scope)));
            lb.routing_preference.push_back(static_cast<LbScope>(scope));
        }
        if (auto e = check_enum(l.mode(), istio::workload::LoadBalancing_Mode_IsValid, "load_balancing.mode");
            !e.empty())
            return fail(e);
        lb.mode = static_cast<LbMode>(l.mode());
        if (auto e = check_enum(l.health_policy(), istio::workload::LoadBalancing_HealthPolicy_IsValid,
                                "load_balancing.health_policy");
            !e.empty())
            return fail(e);
        lb.allow_unhealthy = l.health_policy() == istio::workload::LoadBalancing::ALLOW_ALL;
        s.load_balancing = lb;
    }
    if (in.has_waypoint()) {
        Waypoint w;
        if (auto e = gateway(in.waypoint(), "waypoint", &w); !e.empty()) return fail(e);
        s.waypoint = w;
    }
    if (auto e = first_problem(validate_service(s)); !e.empty()) return e;
    *out = std::move(s);
    return {};
}

namespace {

// `take`, when given, is `in` itself, and its strings may be moved out instead of copied (the
// caller is done with the message): one allocation and copy fewer per string of 100k workloads.
std::string convert_workload_from(const istio::workload::Workload& in, istio::workload::Workload* take,
                                  Workload* out) {
    auto str = [take](const std::string& value,
                      std::string* (istio::workload::Workload::*field)()) -> std::string {
        if (take) return std::move(*(take->*field)());
        return value;
    };
    using W = istio::workload::Workload;
    Workload w;
    w.uid = str(in.uid(), &W::mutable_uid);
    w.name = str(in.name(), &W::mutable_name);
    w.namespace_ = in.namespace_();
    auto fail = [](const std::string& e) { return e; };
    for (const auto& raw : in.addresses()) {
        IpAddr a;
        if (auto e = ip(raw, "workload address", &a); !e.empty()) return fail(e);
        w.addresses.push_back(a);
    }
    for (const auto& [key, list] : in.services())
        if (auto e = ports(list.ports(), "workload port", &w.services[key]); !e.empty()) return fail(e);
    w.services.shrink_to_fit();
    if (auto e = check_enum(in.status(), istio::workload::WorkloadStatus_IsValid, "status"); !e.empty())
        return fail(e);
    if (auto e = check_enum(in.network_mode(), istio::workload::NetworkMode_IsValid, "network_mode");
        !e.empty())
        return fail(e);
    if (auto e = check_enum(in.tunnel_protocol(), istio::workload::TunnelProtocol_IsValid, "tunnel_protocol");
        !e.empty())
        return fail(e);
    w.status =
        in.status() == istio::workload::UNHEALTHY ? WorkloadStatus::kUnhealthy : WorkloadStatus::kHealthy;
    w.network_mode = in.network_mode() == istio::workload::HOST_NETWORK ? NetworkMode::kHostNetwork
                                                                        : NetworkMode::kStandard;
    w.placement =
        Placement::intern({in.node(), in.network(), in.cluster_id(),
                           Locality{in.locality().region(), in.locality().zone(), in.locality().subzone()}});
    if (in.has_waypoint()) {
        Waypoint wp;
        if (auto e = gateway(in.waypoint(), "waypoint", &wp); !e.empty()) return fail(e);
        w.waypoint = Waypoint::intern(wp);
    }
    if (in.has_network_gateway()) {  // not used yet, but refused as ztunnel refuses it
        Waypoint gw;
        if (auto e = gateway(in.network_gateway(), "network_gateway", &gw); !e.empty()) return fail(e);
    }
    // Workload.capacity (UInt32Value): unset means 1, like ztunnel; 0 drains the workload.
    w.capacity = in.has_capacity() ? in.capacity().value() : 1;
    if (take) {
        w.authorization_policies.reserve(static_cast<size_t>(in.authorization_policies_size()));
        for (auto& p : *take->mutable_authorization_policies())
            w.authorization_policies.push_back(std::move(p));
    } else {
        w.authorization_policies.assign(in.authorization_policies().begin(),
                                        in.authorization_policies().end());
    }
    w.trust_domain = in.trust_domain();
    w.service_account = in.service_account();
    w.naming = WorkloadNaming::intern({in.workload_name(), in.canonical_name(), in.canonical_revision()});
    if (auto e = first_problem(validate_workload(w)); !e.empty()) return e;
    *out = std::move(w);
    return {};
}

}  // namespace

std::string convert_workload(const istio::workload::Workload& in, Workload* out) {
    return convert_workload_from(in, nullptr, out);
}

std::string convert_workload(istio::workload::Workload&& in, Workload* out) {
    return convert_workload_from(in, &in, out);
}

namespace {

std::string string_matches(const google::protobuf::RepeatedPtrField<istio::security::StringMatch>& in,
                           const char* field, std::vector<StringMatch>* out) {
    for (const auto& m : in) {
        StringMatch sm;
        switch (m.match_type_case()) {
            case istio::security::StringMatch::kExact:
                sm = {StringMatch::Kind::kExact, m.exact()};
                break;
            case istio::security::StringMatch::kPrefix:
                sm = {StringMatch::Kind::kPrefix, m.prefix()};
                break;
            case istio::security::StringMatch::kSuffix:
                sm = {StringMatch::Kind::kSuffix, m.suffix()};
                break;
            case istio::security::StringMatch::kPresence:
                sm = {StringMatch::Kind::kPresence, {}};
                break;
            default:
                return fmt::format("{}: a string match with none of exact, prefix, suffix, presence", field);
        }
        out->push_back(std::move(sm));
    }
    return {};
}

std::string cidrs(const google::protobuf::RepeatedPtrField<istio::security::Address>& in, const char* field,
                  std::vector<Cidr>* out) {
    for (const auto& a : in) {
        auto ip = IpAddr::from_raw(a.address());
        if (!ip) return fmt::format("{}: address of {} bytes", field, a.address().size());
        size_t bits = a.address().size() * 8;
        if (a.length() > bits)
            return fmt::format("{}: prefix length {} longer than the address", field, a.length());
        uint32_t len = a.length();
        // 16 bytes of IPv4-mapped IPv6 are IPv4 in the model (as a v4 peer on a v6 socket is): the
        // prefix then counts the last 32 bits. One reaching into the ::ffff:0:0/96 part is refused.
        if (a.address().size() == 16 && ip->is_v4()) {
            if (len < 96)
                return fmt::format("{}: IPv4-mapped address {} with prefix length {} (below 96)", field,
                                   ip->str(), len);
            len -= 96;
        }
        out->push_back(Cidr{*ip, static_cast<uint8_t>(len)});
    }
    return {};
}

std::string dst_ports(const google::protobuf::RepeatedField<uint32_t>& in, const char* field,
                      std::vector<uint16_t>* out) {
    for (uint32_t p : in) {
        if (p > 65535) return fmt::format("{}: destination port {} out of range", field, p);
        out->push_back(static_cast<uint16_t>(p));
    }
    return {};
}

void service_accounts(const google::protobuf::RepeatedPtrField<istio::security::ServiceAccountMatch>& in,
                      std::vector<ServiceAccountMatch>* out) {
    for (const auto& m : in) out->push_back({m.namespace_(), m.service_account()});
}

std::string match(const istio::security::Match& in, AuthzMatch* m) {
    for (auto e : {string_matches(in.namespaces(), "namespaces", &m->namespaces),
                   string_matches(in.not_namespaces(), "not_namespaces", &m->not_namespaces),
                   string_matches(in.principals(), "principals", &m->principals),
                   string_matches(in.not_principals(), "not_principals", &m->not_principals),
                   cidrs(in.source_ips(), "source_ips", &m->source_ips),
                   cidrs(in.not_source_ips(), "not_source_ips", &m->not_source_ips),
                   cidrs(in.destination_ips(), "destination_ips", &m->destination_ips),
                   cidrs(in.not_destination_ips(), "not_destination_ips", &m->not_destination_ips),
                   dst_ports(in.destination_ports(), "destination_ports", &m->destination_ports),
                   dst_ports(in.not_destination_ports(), "not_destination_ports", &m->not_destination_ports)})
        if (!e.empty()) return e;
    service_accounts(in.service_accounts(), &m->service_accounts);
    service_accounts(in.not_service_accounts(), &m->not_service_accounts);
    return {};
}

}  // namespace

std::string convert_authorization(const istio::security::Authorization& in, AuthzPolicy* out) {
    if (in.name().empty())
        return fmt::format("authorization policy in namespace '{}' has an empty name", in.namespace_());
    if (auto e = check_enum(in.scope(), istio::security::Scope_IsValid, "scope"); !e.empty()) return e;
    if (auto e = check_enum(in.action(), istio::security::Action_IsValid, "action"); !e.empty()) return e;
    AuthzPolicy p;
    p.name = in.name();
    p.namespace_ = in.namespace_();
    p.scope = static_cast<AuthzScope>(in.scope());
    p.action = static_cast<AuthzAction>(in.action());
    p.dry_run = in.dry_run();
    for (const auto& rule : in.rules()) {
        AuthzRule& r = p.rules.emplace_back();
        for (const auto& clause : rule.clauses()) {
            AuthzClause& c = r.clauses.emplace_back();
            for (const auto& m : clause.matches())
                if (auto e = match(m, &c.matches.emplace_back()); !e.empty()) return e;
        }
    }
    *out = std::move(p);
    return {};
}

std::string validate_authorization(const istio::security::Authorization& in) {
    AuthzPolicy unused;
    return convert_authorization(in, &unused);
}

std::string resource_name(const istio::workload::Address& a) {
    if (a.has_workload()) return a.workload().uid();
    if (a.has_service()) return a.service().namespace_() + "/" + a.service().hostname();
    return {};
}

std::string resource_name(const istio::security::Authorization& p) { return p.namespace_() + "/" + p.name(); }

}  // namespace kmesh::xds
