#include "agent/src/sources/ads/convert.hpp"

#include <absl/container/flat_hash_map.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/duration.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>

#include "agent/src/model/model_validate.hpp"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/extensions/filters/network/local_ratelimit/v3/local_rate_limit.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "udpa/type/v1/typed_struct.pb.h"
#include "xds/type/v3/typed_struct.pb.h"

namespace kmesh::ads {

namespace pb = google::protobuf;
namespace core = envoy::config::core::v3;
namespace lis = envoy::config::listener::v3;
namespace rt = envoy::config::route::v3;
namespace cl = envoy::config::cluster::v3;
namespace ep = envoy::config::endpoint::v3;
using envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
using envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit;
using envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
using native::Skipped;
using native::Unsupported;

std::optional<ResourceType> resource_type(std::string_view url) {
    if (url == kListenerType) return ResourceType::kListener;
    if (url == kRouteType) return ResourceType::kRoute;
    if (url == kClusterType) return ResourceType::kCluster;
    if (url == kEndpointType) return ResourceType::kCla;
    return std::nullopt;
}

std::string_view type_url(ResourceType t) {
    switch (t) {
        case ResourceType::kListener:
            return kListenerType;
        case ResourceType::kRoute:
            return kRouteType;
        case ResourceType::kCluster:
            return kClusterType;
        case ResourceType::kCla:
            return kEndpointType;
    }
    return {};
}

namespace {

// Inside a conversion a problem is thrown and caught at the resource boundary: the converters
// are deep and every level would otherwise have to pass a Status up.
struct Refused {
    Status status;
};
[[noreturn]] void refuse(Errc code, std::string msg) { throw Refused{Status(code, std::move(msg))}; }
[[noreturn]] void invalid(std::string msg) { refuse(Errc::kInvalidArgument, std::move(msg)); }

// A chain, listener or cluster that is not programmed: not an error, a counted reason.
struct Skip {
    Skipped why;
};
[[noreturn]] void skip(Unsupported reason, std::string detail) {
    throw Skip{Skipped{reason, std::move(detail)}};
}

// Fields our proto subset does not declare arrive as unknown fields (binary xDS keeps them). The
// converter looks for a few that change the meaning of what it reads (a matcher tree instead of
// filter_chains, a custom cluster type, ...) instead of ignoring them.
bool has_unknown_field(const pb::Message& m, int number) {
    const auto& u = m.GetReflection()->GetUnknownFields(m);
    for (int i = 0; i < u.field_count(); ++i)
        if (u.field(i).number() == number) return true;
    return false;
}
bool has_unknown_fields(const pb::Message& m) { return !m.GetReflection()->GetUnknownFields(m).empty(); }

std::string type_name_of(std::string_view url) {
    auto slash = url.rfind('/');
    return std::string(slash == std::string_view::npos ? url : url.substr(slash + 1));
}

// The type a typed_config holds: its own, or the one a TypedStruct (udpa.type.v1 or
// xds.type.v3) wraps. Users who write an EnvoyFilter in YAML often get the wrapped form.
struct Typed {
    std::string type;      // full message name
    const pb::Any* any;    // the Any itself
    const pb::Struct* st;  // the TypedStruct's value, when wrapped
    udpa::type::v1::TypedStruct udpa;
    ::xds::type::v3::TypedStruct xds;
};

void open_typed(const pb::Any& any, const std::string& where, Typed* out) {
    out->any = &any;
    out->st = nullptr;
    out->type = type_name_of(any.type_url());
    if (out->type == udpa::type::v1::TypedStruct::descriptor()->full_name()) {
        if (!any.UnpackTo(&out->udpa))
            refuse(Errc::kDataLoss, where + ": udpa.type.v1.TypedStruct does not decode");
        out->type = type_name_of(out->udpa.type_url());
        out->st = &out->udpa.value();
    } else if (out->type == ::xds::type::v3::TypedStruct::descriptor()->full_name()) {
        if (!any.UnpackTo(&out->xds))
            refuse(Errc::kDataLoss, where + ": xds.type.v3.TypedStruct does not decode");
        out->type = type_name_of(out->xds.type_url());
        out->st = &out->xds.value();
    }
}

template <class T>
bool is(const Typed& t) {
    return t.type == T::descriptor()->full_name();
}

// The message inside: bytes of the Any, or the TypedStruct's Struct read as proto3 JSON (fields we
// do not declare are skipped, as in binary).
template <class T>
void unpack(const Typed& t, T* out, const std::string& where) {
    if (t.st == nullptr) {
        if (!out->ParseFromString(t.any->value()))
            refuse(Errc::kDataLoss, fmt::format("{}: {} does not decode", where, t.type));
        return;
    }
    std::string json;
    auto st = pb::util::MessageToJsonString(*t.st, &json);
    pb::util::JsonParseOptions opts;
    opts.ignore_unknown_fields = true;
    if (st.ok()) st = pb::util::JsonStringToMessage(json, out, opts);
    if (!st.ok())
        refuse(Errc::kDataLoss, fmt::format("{}: TypedStruct value is not a {}: {}", where, t.type,
                                            std::string(st.message())));
}

uint64_t duration_ns(const pb::Duration& d, const std::string& where) {
    if (d.seconds() < 0 || d.nanos() < 0) invalid(where + " is negative");
    // Beyond ~584 years: saturate rather than wrap.
    if (d.seconds() > 18'000'000'000LL) return UINT64_MAX;
    return static_cast<uint64_t>(d.seconds()) * 1'000'000'000ULL + static_cast<uint64_t>(d.nanos());
}

uint16_t port_of(uint32_t v, const std::string& where) {
    if (v > 65535) invalid(fmt::format("{} port {} is not a valid port", where, v));
    return static_cast<uint16_t>(v);
}

IpAddr ip_of(const std::string& text, const std::string& where) {
    auto a = IpAddr::parse(text);
    if (!a) invalid(fmt::format("{} address '{}' is not an IP address", where, text));
    return *a;
}

std::string join(const pb::RepeatedPtrField<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

bool is_passthrough(const std::string& cluster) {
    // istiod's catch-alls for traffic to unknown destinations (ALLOW_ANY / REGISTRY_ONLY).
    return cluster == "PassthroughCluster" || cluster == "BlackHoleCluster" ||
           cluster == "InboundPassthroughCluster";
}

// Non-terminal filters istiod puts before tcp_proxy for telemetry; they do not change where a
// connection goes or whether it is accepted, so leaving them out changes nothing we enforce.
bool is_ignorable_filter(const lis::Filter& f, const Typed& t) {
    return f.name() == "istio.metadata_exchange" || f.name() == "istio.stats" ||
           t.type == "envoy.tcp.metadataexchange.config.MetadataExchange" || t.type == "stats.PluginConfig";
}

// ---- RDS ----------------------------------------------------------------------------------------

native::Target route_target(const rt::RouteAction& a, const std::string& where) {
    native::Target t;
    switch (a.cluster_specifier_case()) {
        case rt::RouteAction::kCluster:
            if (a.cluster().empty()) invalid(where + " route.cluster is empty");
            t.clusters.push_back({a.cluster(), 1});
            break;
        case rt::RouteAction::kWeightedClusters:
            for (const auto& c : a.weighted_clusters().clusters()) {
                if (!c.cluster_header().empty())
                    skip(Unsupported::kClusterHeader,
                         fmt::format("{} weighted cluster from header '{}'", where, c.cluster_header()));
                // A route's ClusterWeight may be 0 (Envoy never picks it); only the sum must be > 0.
                uint32_t w = c.has_weight() ? c.weight().value() : 0;
                if (w == 0) continue;
                if (c.name().empty()) invalid(where + " weighted cluster with an empty name");
                t.clusters.push_back({c.name(), w});
            }
            if (t.clusters.empty()) invalid(where + " weighted_clusters has no cluster of weight > 0");
            break;
        case rt::RouteAction::kClusterHeader:
            skip(Unsupported::kClusterHeader,
                 fmt::format("{} cluster_header '{}'", where, a.cluster_header()));
        case rt::RouteAction::kClusterSpecifierPlugin:
            skip(Unsupported::kClusterHeader,
                 fmt::format("{} cluster_specifier_plugin '{}'", where, a.cluster_specifier_plugin()));
        default:
            skip(Unsupported::kClusterHeader, where + " names its cluster by a means we do not read");
    }
    // istiod's allow_any virtual host routes to PassthroughCluster: traffic we leave alone.
    for (const auto& c : t.clusters)
        if (is_passthrough(c.cluster))
            skip(Unsupported::kPassthroughCluster, fmt::format("{} to {}", where, c.cluster));
    return t;
}

native::RouteEntry convert_route_entry(const rt::Route& r, const std::string& where) {
    native::RouteEntry e;
    e.name = r.name();
    if (!r.has_match()) invalid(where + " has no match");
    const auto& m = r.match();
    std::vector<std::string> parts;
    switch (m.path_specifier_case()) {
        case rt::RouteMatch::kPrefix:
            parts.push_back("prefix " + (m.prefix().empty() ? std::string("\"\"") : m.prefix()));
            break;
        case rt::RouteMatch::kPath:
            parts.push_back("path " + m.path());
            break;
        default:
            // safe_regex, connect_matcher, path_separated_prefix, path_match_policy: undeclared.
            parts.push_back("a path matcher we do not read");
            break;
    }
    std::vector<std::string> headers, params;
    for (const auto& h : m.headers()) headers.push_back(h.name());
    for (const auto& q : m.query_parameters()) params.push_back(q.name());
    if (!headers.empty()) parts.push_back(fmt::format("headers [{}]", fmt::join(headers, ", ")));
    if (!params.empty()) parts.push_back(fmt::format("query parameters [{}]", fmt::join(params, ", ")));
    if (m.has_grpc()) parts.push_back("grpc");
    if (has_unknown_fields(m)) parts.push_back("runtime fraction, TLS context or metadata");
    e.match = fmt::format("{}", fmt::join(parts, ", "));
    // Only a match of every request can be decided at connect(): prefix "/" (or "") and nothing else.
    e.catch_all = m.path_specifier_case() == rt::RouteMatch::kPrefix &&
                  (m.prefix().empty() || m.prefix() == "/") && parts.size() == 1;
    if (!r.has_route()) {
        e.unsupported =
            Skipped{Unsupported::kRouteAction,
                    where + " has no cluster action (redirect, direct_response or filter action)"};
        return e;
    }
    try {
        e.target = route_target(r.route(), where);
    } catch (const Skip& s) {
        e.unsupported = s.why;
    }
    return e;
}

native::NativeRoute convert_route_impl(const rt::RouteConfiguration& in, const std::string& who) {
    native::NativeRoute out;
    out.name = in.name();
    for (int i = 0; i < in.virtual_hosts_size(); ++i) {
        const auto& vh = in.virtual_hosts(i);
        native::VirtualHost v;
        v.name = vh.name();
        v.domains.assign(vh.domains().begin(), vh.domains().end());
        for (int j = 0; j < vh.routes_size(); ++j)
            v.routes.push_back(convert_route_entry(
                vh.routes(j), fmt::format("{} virtual host '{}' route {}", who, vh.name(), j)));
        out.vhosts.push_back(std::move(v));
    }
    return out;
}

// ---- LDS ----------------------------------------------------------------------------------------

native::TokenBucket convert_rate_limit(const Typed& t, const std::string& where) {
    LocalRateLimit rl;
    unpack(t, &rl, where);
    if (!rl.has_token_bucket()) invalid(where + " local_ratelimit has no token_bucket");
    const auto& b = rl.token_bucket();
    native::TokenBucket out;
    out.stat_prefix = rl.stat_prefix();
    out.max_tokens = b.max_tokens();
    out.tokens_per_fill = b.has_tokens_per_fill() ? b.tokens_per_fill().value() : 1;
    out.fill_interval_ns =
        b.has_fill_interval() ? duration_ns(b.fill_interval(), where + " fill_interval") : 0;
    return out;
}

native::TcpProxy convert_tcp_proxy(const Typed& t, const std::string& where) {
    TcpProxy tp;
    unpack(t, &tp, where);
    native::TcpProxy out;
    out.stat_prefix = tp.stat_prefix();
    switch (tp.cluster_specifier_case()) {
        case TcpProxy::kCluster:
            out.target.clusters.push_back({tp.cluster(), 1});
            break;
        case TcpProxy::kWeightedClusters:
            for (const auto& c : tp.weighted_clusters().clusters())
                out.target.clusters.push_back({c.name(), c.weight()});
            break;
        default:
            invalid(where + " tcp_proxy sets neither cluster nor weighted_clusters");
    }
    for (const auto& c : out.target.clusters)
        if (is_passthrough(c.cluster))
            skip(Unsupported::kPassthroughCluster, fmt::format("{} tcp_proxy to {}", where, c.cluster));
    return out;
}

native::Hcm convert_hcm(const Typed& t, const std::string& where) {
    HttpConnectionManager hcm;
    unpack(t, &hcm, where);
    native::Hcm out;
    if (has_unknown_field(hcm, 31))
        skip(Unsupported::kScopedRoutes, where + " http_connection_manager uses scoped_routes");
    switch (hcm.route_specifier_case()) {
        case HttpConnectionManager::kRds:
            if (hcm.rds().route_config_name().empty())
                invalid(where + " http_connection_manager rds has no route_config_name");
            out.rds = hcm.rds().route_config_name();
            break;
        case HttpConnectionManager::kRouteConfig:
            out.inline_route = convert_route_impl(hcm.route_config(), where + " inline route_config");
            break;
        default:
            invalid(where + " http_connection_manager has neither rds nor route_config");
    }
    return out;
}

// HTTP sniffing (http_inspector) sets these; anything else needs TLS ALPN bytes.
bool is_sniffed_http(const std::string& p) { return p == "http/1.0" || p == "http/1.1" || p == "h2c"; }

native::FilterChain convert_chain(const lis::FilterChain& c, const std::string& where) {
    native::FilterChain out;
    out.name = c.name();
    const auto& m = c.filter_chain_match();
    if (!lis::FilterChainMatch::ConnectionSourceType_IsValid(m.source_type()))
        invalid(where + " " +
                unknown_enum("filter_chain_match.source_type", std::to_string(m.source_type())));
    if (m.server_names_size() > 0)
        skip(Unsupported::kServerNames, fmt::format("{} server_names [{}]", where, join(m.server_names())));
    if (!m.transport_protocol().empty() && m.transport_protocol() != "raw_buffer")
        skip(Unsupported::kTransportProtocol,
             fmt::format("{} transport_protocol '{}'", where, m.transport_protocol()));
    for (const auto& p : m.application_protocols())
        if (!is_sniffed_http(p))
            skip(Unsupported::kApplicationProtocols,
                 fmt::format("{} application_protocols [{}]", where, join(m.application_protocols())));
    out.application_protocols.assign(m.application_protocols().begin(), m.application_protocols().end());
    if (m.source_type() != lis::FilterChainMatch::ANY || m.source_prefix_ranges_size() > 0 ||
        m.direct_source_prefix_ranges_size() > 0 || m.source_ports_size() > 0)
        skip(Unsupported::kSourceMatch, where + " matches on the connection's source");
    if (!m.address_suffix().empty() || m.has_suffix_len())
        skip(Unsupported::kAddressSuffix, where + " matches on address_suffix");
    if (m.has_destination_port())
        out.destination_port = port_of(m.destination_port().value(), where + " destination_port");
    for (const auto& r : m.prefix_ranges()) {
        Cidr cidr{ip_of(r.address_prefix(), where + " prefix_ranges"), 0};
        uint32_t len = r.has_prefix_len() ? r.prefix_len().value() : 0;
        uint32_t full = cidr.addr.is_v4() ? 32 : 128;
        if (len > full)
            invalid(fmt::format("{} prefix_ranges {}/{} is longer than the address", where,
                                r.address_prefix(), len));
        // A connect() goes to one address; a range would need a longest-prefix map the frontend
        // lookup does not have (design §4.1).
        if (len < full)
            skip(Unsupported::kWidePrefix,
                 fmt::format("{} prefix_ranges {}/{}", where, r.address_prefix(), len));
        cidr.prefix_len = static_cast<uint8_t>(len);
        out.prefixes.push_back(cidr);
    }
    if (c.has_transport_socket())
        skip(Unsupported::kTransportSocket,
             fmt::format("{} transport_socket '{}'", where, c.transport_socket().name()));

    if (c.filters_size() == 0) skip(Unsupported::kNoTerminal, where + " has no filters");
    bool terminal = false;
    for (int i = 0; i < c.filters_size(); ++i) {
        const auto& f = c.filters(i);
        std::string fw = fmt::format("{} filter '{}'", where, f.name());
        bool last = i == c.filters_size() - 1;
        if (!f.has_typed_config()) skip(Unsupported::kFilter, fw + " has no typed_config (config_discovery)");
        Typed t;
        open_typed(f.typed_config(), fw, &t);
        if (is<TcpProxy>(t) || is<HttpConnectionManager>(t)) {
            // Envoy refuses a chain whose terminal filter is not the last one.
            if (!last) invalid(fw + " is a terminal filter but not the last of the chain");
            if (is<TcpProxy>(t))
                out.terminal = convert_tcp_proxy(t, fw);
            else
                out.terminal = convert_hcm(t, fw);
            terminal = true;
        } else if (is<LocalRateLimit>(t)) {
            if (out.rate_limit) skip(Unsupported::kRateLimitCount, fw + " is a second local_ratelimit");
            out.rate_limit = convert_rate_limit(t, fw);
        } else if (!is_ignorable_filter(f, t)) {
            skip(Unsupported::kFilter, fmt::format("{} ({}) is not enforced", fw, t.type));
        }
    }
    if (!terminal)
        skip(Unsupported::kNoTerminal, where + " does not end in tcp_proxy or http_connection_manager");
    return out;
}

std::string chain_where(const std::string& who, const lis::FilterChain& c, int i) {
    return c.name().empty() ? fmt::format("{} filter chain {}", who, i)
                            : fmt::format("{} filter chain '{}'", who, c.name());
}

void check_listener_level(const lis::Listener& in, const std::string& who, native::NativeListener& out) {
    // Listener.filter_chain_matcher (32) replaces filter_chain_match with a matcher tree.
    if (has_unknown_field(in, 32)) skip(Unsupported::kFilterChainMatcher, who + " uses filter_chain_matcher");
    if (!core::TrafficDirection_IsValid(in.traffic_direction()))
        invalid(who + " " + unknown_enum("traffic_direction", std::to_string(in.traffic_direction())));
    if (in.traffic_direction() == core::INBOUND) skip(Unsupported::kInbound, who + " is an inbound listener");
    if (in.has_use_original_dst() && in.use_original_dst().value())
        skip(Unsupported::kOriginalDst, who + " has use_original_dst (the capture listener)");
    if (!in.address().has_socket_address())
        skip(Unsupported::kListenerAddress, who + " has no socket address");
    const auto& sa = in.address().socket_address();
    if (!core::SocketAddress::Protocol_IsValid(sa.protocol()))
        invalid(who + " " + unknown_enum("address.protocol", std::to_string(sa.protocol())));
    if (sa.protocol() != core::SocketAddress::TCP)
        skip(Unsupported::kListenerAddress, who + " is a UDP listener");
    if (sa.port_specifier_case() == core::SocketAddress::kNamedPort || !sa.resolver_name().empty())
        skip(Unsupported::kListenerAddress, who + " uses a named port or a resolver");
    out.address = ip_of(sa.address(), who);
    out.port = port_of(sa.port_value(), who);
}

native::NativeListener convert_listener_impl(const lis::Listener& in) {
    native::NativeListener out;
    out.name = in.name();
    std::string who = fmt::format("listener '{}'", in.name());
    try {
        check_listener_level(in, who, out);
    } catch (const Skip& s) {
        out.unsupported = s.why;
        return out;
    }
    for (int i = 0; i < in.filter_chains_size(); ++i) {
        try {
            out.chains.push_back(
                convert_chain(in.filter_chains(i), chain_where(who, in.filter_chains(i), i)));
        } catch (const Skip& s) {
            out.skipped_chains.push_back(s.why);
        }
    }
    if (in.has_default_filter_chain()) {
        try {
            out.default_chain = convert_chain(in.default_filter_chain(), who + " default_filter_chain");
        } catch (const Skip& s) {
            // istiod's PassthroughFilterChain (tcp_proxy to PassthroughCluster/BlackHoleCluster) is
            // on nearly every listener: its traffic is left alone, which is what pass-through means.
            if (s.why.reason != Unsupported::kPassthroughCluster) out.skipped_chains.push_back(s.why);
        }
    }
    return out;
}

// ---- CDS / EDS ----------------------------------------------------------------------------------

native::NativeCla convert_cla_impl(const ep::ClusterLoadAssignment& in, const std::string& who) {
    native::NativeCla out;
    out.cluster_name = in.cluster_name();
    for (int i = 0; i < in.endpoints_size(); ++i) {
        const auto& l = in.endpoints(i);
        native::NativeLocality loc;
        loc.locality = Locality{l.locality().region(), l.locality().zone(), l.locality().sub_zone()};
        if (l.has_load_balancing_weight()) {
            loc.weight = l.load_balancing_weight().value();
            if (loc.weight == 0) invalid(fmt::format("{} locality {} has load_balancing_weight 0", who, i));
        }
        loc.priority = l.priority();
        for (int j = 0; j < l.lb_endpoints_size(); ++j) {
            const auto& e = l.lb_endpoints(j);
            std::string ew = fmt::format("{} locality {} endpoint {}", who, i, j);
            if (!e.has_endpoint()) {
                out.skipped_endpoints.push_back(
                    {Unsupported::kEndpointName, ew + " is named (endpoint_name), not given"});
                continue;
            }
            if (!e.endpoint().address().has_socket_address()) invalid(ew + " has no socket address");
            const auto& sa = e.endpoint().address().socket_address();
            if (sa.port_specifier_case() == core::SocketAddress::kNamedPort)
                invalid(ew + " has a named port");
            native::NativeEndpoint n;
            n.address = ip_of(sa.address(), ew);
            n.port = port_of(sa.port_value(), ew);
            if (!core::HealthStatus_IsValid(e.health_status()))
                invalid(ew + " " + unknown_enum("health_status", std::to_string(e.health_status())));
            n.health = static_cast<native::Health>(e.health_status());
            if (e.has_load_balancing_weight()) n.weight = e.load_balancing_weight().value();
            loc.endpoints.push_back(n);
        }
        out.localities.push_back(std::move(loc));
    }
    return out;
}

native::OutlierDetection convert_outlier(const cl::OutlierDetection& in, const std::string& who) {
    native::OutlierDetection o;  // Envoy's defaults
    auto u32 = [](const pb::UInt32Value& v, bool has, uint32_t& out) {
        if (has) out = v.value();
    };
    u32(in.consecutive_5xx(), in.has_consecutive_5xx(), o.consecutive_5xx);
    u32(in.enforcing_consecutive_5xx(), in.has_enforcing_consecutive_5xx(), o.enforcing_consecutive_5xx);
    u32(in.consecutive_local_origin_failure(), in.has_consecutive_local_origin_failure(),
        o.consecutive_local_origin_failure);
    u32(in.enforcing_consecutive_local_origin_failure(), in.has_enforcing_consecutive_local_origin_failure(),
        o.enforcing_consecutive_local_origin_failure);
    u32(in.max_ejection_percent(), in.has_max_ejection_percent(), o.max_ejection_percent);
    o.split_external_local_origin_errors = in.split_external_local_origin_errors();
    if (in.has_interval()) o.interval_ns = duration_ns(in.interval(), who + " outlier_detection.interval");
    if (in.has_base_ejection_time())
        o.base_ejection_time_ns =
            duration_ns(in.base_ejection_time(), who + " outlier_detection.base_ejection_time");
    if (in.has_max_ejection_time())
        o.max_ejection_time_ns =
            duration_ns(in.max_ejection_time(), who + " outlier_detection.max_ejection_time");
    return o;
}

void check_cluster_level(const cl::Cluster& in, const std::string& who, native::NativeCluster& out,
                         const ConvertOptions& opts) {
    if (!cl::Cluster::DiscoveryType_IsValid(in.type()))
        invalid(who + " " + unknown_enum("type", std::to_string(in.type())));
    if (!cl::Cluster::LbPolicy_IsValid(in.lb_policy()))
        invalid(who + " " + unknown_enum("lb_policy", std::to_string(in.lb_policy())));
    // Cluster.cluster_type (38): a custom cluster (aggregate, ...) that replaces `type`.
    if (has_unknown_field(in, 38)) skip(Unsupported::kCustomCluster, who + " has a custom cluster_type");
    switch (in.type()) {
        case cl::Cluster::STATIC:
            out.type = native::ClusterType::kStatic;
            break;
        case cl::Cluster::EDS:
            out.type = native::ClusterType::kEds;
            out.eds_name = in.eds_cluster_config().service_name().empty()
                               ? in.name()
                               : in.eds_cluster_config().service_name();
            break;
        case cl::Cluster::STRICT_DNS:
        case cl::Cluster::LOGICAL_DNS:
            skip(Unsupported::kDnsCluster,
                 fmt::format("{} is of type {}", who, cl::Cluster::DiscoveryType_Name(in.type())));
        case cl::Cluster::ORIGINAL_DST:
            skip(Unsupported::kOriginalDst, who + " is of type ORIGINAL_DST");
        default:
            break;
    }
    // load_balancing_policy (41) overrides lb_policy in Envoy: we cannot tell what it picks.
    if (has_unknown_field(in, 41)) skip(Unsupported::kLbPolicy, who + " uses load_balancing_policy");
    switch (in.lb_policy()) {
        case cl::Cluster::ROUND_ROBIN:
            out.lb = native::LbPolicy::kRoundRobin;
            break;
        case cl::Cluster::LEAST_REQUEST:
            out.lb = native::LbPolicy::kLeastRequest;
            break;
        case cl::Cluster::RANDOM:
            out.lb = native::LbPolicy::kRandom;
            break;
        default:
            skip(Unsupported::kLbPolicy,
                 fmt::format("{} lb_policy {}", who, cl::Cluster::LbPolicy_Name(in.lb_policy())));
    }
    out.max_connections = opts.absent_max_connections;
    if (in.has_circuit_breakers()) {
        // The DEFAULT-priority thresholds; HIGH applies only to routes marked high priority, which
        // tcp_proxy and sidecar routes are not. The first one wins, as in Envoy.
        for (const auto& t : in.circuit_breakers().thresholds()) {
            if (!core::RoutingPriority_IsValid(t.priority()))
                invalid(who + " " +
                        unknown_enum("circuit_breakers.thresholds.priority", std::to_string(t.priority())));
            if (t.priority() != core::DEFAULT) continue;
            if (t.has_max_connections()) out.max_connections = t.max_connections().value();
            break;
        }
    }
    // istiod writes UINT32_MAX when nothing limits connections: no limit, nothing to count.
    if (out.max_connections == UINT32_MAX) out.max_connections.reset();
    if (in.has_outlier_detection()) out.outlier = convert_outlier(in.outlier_detection(), who);
    out.locality_weighted = in.common_lb_config().has_locality_weighted_lb_config();
    if (out.type == native::ClusterType::kStatic && in.has_load_assignment())
        out.load_assignment = convert_cla_impl(in.load_assignment(), who + " load_assignment");
}

native::NativeCluster convert_cluster_impl(const cl::Cluster& in, const ConvertOptions& opts) {
    native::NativeCluster out;
    out.name = in.name();
    std::string who = fmt::format("cluster '{}'", in.name());
    try {
        check_cluster_level(in, who, out, opts);
    } catch (const Skip& s) {
        // Keep only what names the cluster: nothing else of it is used.
        native::NativeCluster u;
        u.name = out.name;
        u.unsupported = s.why;
        return u;
    }
    return out;
}

template <class T>
Result<T> finish(T value) {
    auto problems = native::validate(value);
    if (problems.empty()) return value;
    return Status(Errc::kInvalidArgument, fmt::format("{}", fmt::join(problems, "; ")));
}

template <class F>
auto guarded(F&& f) -> Result<decltype(f())> {
    try {
        return finish(f());
    } catch (const Refused& r) {
        return r.status;
    } catch (const Skip& s) {
        // Every Skip is caught at the level it belongs to; one escaping is a bug here.
        return Status(Errc::kInternal, "unexpected skip: " + s.why.detail);
    }
}

}  // namespace

Result<native::NativeListener> convert_listener(const lis::Listener& in) {
    return guarded([&] { return convert_listener_impl(in); });
}

Result<native::NativeRoute> convert_route(const rt::RouteConfiguration& in) {
    return guarded([&] { return convert_route_impl(in, fmt::format("route '{}'", in.name())); });
}

Result<native::NativeCluster> convert_cluster(const cl::Cluster& in, const ConvertOptions& opts) {
    return guarded([&] { return convert_cluster_impl(in, opts); });
}

Result<native::NativeCla> convert_cla(const ep::ClusterLoadAssignment& in) {
    return guarded([&] {
        auto out = convert_cla_impl(in, fmt::format("cluster load assignment '{}'", in.cluster_name()));
        // A CLA sent over EDS is found by this name; the one inside a STATIC cluster needs none.
        if (out.cluster_name.empty()) invalid("cluster load assignment has an empty cluster_name");
        return out;
    });
}

namespace {

template <class Msg, class Conv>
ResourceResult decode(const pb::Any& any, size_t index, Conv&& conv) {
    Msg m;
    if (!m.ParseFromString(any.value()))
        return {fmt::format("#{}", index),
                Status(Errc::kDataLoss, fmt::format("{} does not decode", Msg::descriptor()->full_name()))};
    std::string name;
    if constexpr (std::is_same_v<Msg, ep::ClusterLoadAssignment>)
        name = m.cluster_name();
    else
        name = m.name();
    auto r = conv(m);
    if (!r) return {name, r.status()};
    return {name, NativeResource(std::move(r).value())};
}

}  // namespace

Result<std::vector<ResourceResult>> convert_resources(std::string_view url,
                                                      const pb::RepeatedPtrField<pb::Any>& resources,
                                                      const ConvertOptions& opts) {
    auto type = resource_type(url);
    if (!type)
        return Status(Errc::kInvalidArgument,
                      fmt::format("type URL '{}' is not one of LDS, RDS, CDS, EDS", url));
    std::vector<ResourceResult> out;
    out.reserve(resources.size());
    absl::flat_hash_map<std::string, int> seen;
    for (int i = 0; i < resources.size(); ++i) {
        const auto& any = resources[i];
        if (any.type_url() != url) {
            out.push_back(
                {fmt::format("#{}", i),
                 Status(Errc::kInvalidArgument,
                        fmt::format("resource of type '{}' in a response of '{}'", any.type_url(), url))});
            continue;
        }
        switch (*type) {
            case ResourceType::kListener:
                out.push_back(
                    decode<lis::Listener>(any, i, [](const auto& m) { return convert_listener(m); }));
                break;
            case ResourceType::kRoute:
                out.push_back(
                    decode<rt::RouteConfiguration>(any, i, [](const auto& m) { return convert_route(m); }));
                break;
            case ResourceType::kCluster:
                out.push_back(
                    decode<cl::Cluster>(any, i, [&](const auto& m) { return convert_cluster(m, opts); }));
                break;
            case ResourceType::kCla:
                out.push_back(
                    decode<ep::ClusterLoadAssignment>(any, i, [](const auto& m) { return convert_cla(m); }));
                break;
        }
        ++seen[out.back().name];
    }
    for (auto& r : out)
        if (seen[r.name] > 1)
            r.value = Status(Errc::kAlreadyExists,
                             fmt::format("'{}' occurs {} times in one response", r.name, seen[r.name]));
    return out;
}

std::string error_detail(const std::vector<ResourceResult>& results) {
    std::string out;
    for (const auto& r : results)
        if (!r.value) out += (out.empty() ? "" : "; ") + r.name + ": " + r.value.status().to_string();
    return out;
}

}  // namespace kmesh::ads
