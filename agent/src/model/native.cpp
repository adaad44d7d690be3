#include "agent/src/model/native.hpp"

#include <fmt/format.h>

namespace kmesh::native {

std::string_view unsupported_name(Unsupported u) {
    switch (u) {
        case Unsupported::kServerNames:
            return "server_names";
        case Unsupported::kTransportProtocol:
            return "transport_protocol";
        case Unsupported::kApplicationProtocols:
            return "application_protocols";
        case Unsupported::kSourceMatch:
            return "source_match";
        case Unsupported::kWidePrefix:
            return "wide_prefix";
        case Unsupported::kAddressSuffix:
            return "address_suffix";
        case Unsupported::kTransportSocket:
            return "transport_socket";
        case Unsupported::kFilter:
            return "filter";
        case Unsupported::kNoTerminal:
            return "no_terminal_filter";
        case Unsupported::kRateLimitCount:
            return "rate_limit_count";
        case Unsupported::kScopedRoutes:
            return "scoped_routes";
        case Unsupported::kPassthroughCluster:
            return "passthrough_cluster";
        case Unsupported::kRouteAction:
            return "route_action";
        case Unsupported::kClusterHeader:
            return "cluster_header";
        case Unsupported::kListenerAddress:
            return "listener_address";
        case Unsupported::kOriginalDst:
            return "original_dst";
        case Unsupported::kInbound:
            return "inbound";
        case Unsupported::kFilterChainMatcher:
            return "filter_chain_matcher";
        case Unsupported::kDnsCluster:
            return "dns_cluster";
        case Unsupported::kCustomCluster:
            return "custom_cluster";
        case Unsupported::kLbPolicy:
            return "lb_policy";
        case Unsupported::kEndpointName:
            return "endpoint_name";
    }
    return "unknown";
}

namespace {

void check_target(const Target& t, const std::string& where, std::vector<std::string>& out) {
    if (t.clusters.empty()) out.push_back(fmt::format("{} names no cluster", where));
    for (size_t i = 0; i < t.clusters.size(); ++i) {
        const auto& c = t.clusters[i];
        if (c.cluster.empty()) out.push_back(fmt::format("{} cluster {} has an empty name", where, i));
        // Envoy's tcp_proxy ClusterWeight.weight is "gte: 1"; a zero share could never be picked
        // and would make a split of only zeros divide by zero.
        if (c.weight == 0) out.push_back(fmt::format("{} cluster '{}' has weight 0", where, c.cluster));
    }
}

void check_chain(const FilterChain& c, const std::string& where, std::vector<std::string>& out) {
    if (c.destination_port && *c.destination_port == 0)
        out.push_back(fmt::format("{} destination_port is 0", where));
    for (const auto& p : c.prefixes)
        if (p.prefix_len > (p.addr.is_v4() ? 32 : 128))
            out.push_back(
                fmt::format("{} prefix {}/{} is longer than the address", where, p.addr.str(), p.prefix_len));
    if (c.rate_limit) {
        const auto& b = *c.rate_limit;
        if (b.max_tokens == 0) out.push_back(fmt::format("{} local_ratelimit max_tokens is 0", where));
        if (b.tokens_per_fill == 0)
            out.push_back(fmt::format("{} local_ratelimit tokens_per_fill is 0", where));
        if (b.fill_interval_ns == 0)
            out.push_back(fmt::format("{} local_ratelimit fill_interval is 0", where));
    }
    if (const auto* tcp = std::get_if<TcpProxy>(&c.terminal))
        check_target(tcp->target, where + " tcp_proxy", out);
    if (const auto* hcm = std::get_if<Hcm>(&c.terminal)) {
        if (hcm->rds.empty() && !hcm->inline_route)
            out.push_back(fmt::format("{} http_connection_manager has neither rds nor route_config", where));
        if (hcm->inline_route)
            for (auto& e : validate(*hcm->inline_route)) out.push_back(where + ": " + e);
    }
}

}  // namespace

std::vector<std::string> validate(const NativeListener& l) {
    std::vector<std::string> out;
    if (l.name.empty()) out.push_back("listener has an empty name");
    std::string who = fmt::format("listener '{}'", l.name);
    if (!l.unsupported && l.port == 0) out.push_back(who + " has port 0");
    for (size_t i = 0; i < l.chains.size(); ++i)
        // Named as the converter names it: by name, else by position (positions among the kept
        // chains; unnamed chains are rare outside hand-written configs).
        check_chain(l.chains[i],
                    l.chains[i].name.empty() ? fmt::format("{} filter chain {}", who, i)
                                             : fmt::format("{} filter chain '{}'", who, l.chains[i].name),
                    out);
    if (l.default_chain) check_chain(*l.default_chain, who + " default_filter_chain", out);
    return out;
}

std::vector<std::string> validate(const NativeRoute& r) {
    std::vector<std::string> out;
    if (r.name.empty()) out.push_back("route configuration has an empty name");
    for (const auto& vh : r.vhosts) {
        std::string who = fmt::format("route '{}' virtual host '{}'", r.name, vh.name);
        if (vh.domains.empty()) out.push_back(who + " has no domains");
        for (size_t i = 0; i < vh.routes.size(); ++i)
            if (vh.routes[i].target)
                check_target(*vh.routes[i].target, fmt::format("{} route {}", who, i), out);
    }
    return out;
}

std::vector<std::string> validate(const NativeCla& c) {
    std::vector<std::string> out;
    std::string who = fmt::format("cluster load assignment '{}'", c.cluster_name);
    for (const auto& loc : c.localities) {
        // endpoint_components.proto: priority "lte: 128", locality load_balancing_weight "gte: 1".
        if (loc.priority > 128) out.push_back(fmt::format("{} priority {} is over 128", who, loc.priority));
        for (const auto& e : loc.endpoints) {
            std::string ep = fmt::format("{} endpoint {}", who, e.address.str());
            if (e.port == 0) out.push_back(ep + " has port 0");
            if (e.weight == 0) out.push_back(ep + " has load_balancing_weight 0");
        }
    }
    return out;
}

std::vector<std::string> validate(const NativeCluster& c) {
    std::vector<std::string> out;
    if (c.name.empty()) out.push_back("cluster has an empty name");
    std::string who = fmt::format("cluster '{}'", c.name);
    if (c.outlier) {
        const auto& o = *c.outlier;
        // outlier_detection.proto: percentages are "lte: 100".
        for (auto [field, v] :
             {std::pair{"max_ejection_percent", o.max_ejection_percent},
              {"enforcing_consecutive_5xx", o.enforcing_consecutive_5xx},
              {"enforcing_consecutive_local_origin_failure", o.enforcing_consecutive_local_origin_failure}})
            if (v > 100) out.push_back(fmt::format("{} outlier_detection {} is {}, over 100", who, field, v));
        if (o.base_ejection_time_ns == 0) out.push_back(who + " outlier_detection base_ejection_time is 0");
        if (o.interval_ns == 0) out.push_back(who + " outlier_detection interval is 0");
    }
    if (c.load_assignment)
        for (auto& e : validate(*c.load_assignment)) out.push_back(who + " load_assignment: " + e);
    return out;
}

}  // namespace kmesh::native
