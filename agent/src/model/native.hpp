// Kernel-native mode's model (docs/design/kernel-native.md §4.5): the Envoy resources a sidecar
// gets from istiod (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment), reduced to what
// a connect()-time decision can use. Plain structs, no protobuf: sources/ads/convert.cpp fills
// them, the desired-state mapping reads them. Parts a connect() cannot decide (filter chains that
// need bytes, DNS clusters, ...) are kept as a Skipped reason, so they can be counted and
// logged, instead of failing the resource. docs/kernel-native.md lists the fields used.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/src/model/ip_addr.hpp"
#include "agent/src/model/model.hpp"

namespace kmesh::native {

// Why a part of a resource is not programmed (pass-through for its traffic). One value per
// metrics label (unsupported_name), the detail names the resource and field.
enum class Unsupported : uint8_t {
    kServerNames,           // filter chain matches SNI: needs the TLS ClientHello
    kTransportProtocol,     // filter chain matches transport_protocol "tls" (or another non-raw one)
    kApplicationProtocols,  // ALPN other than HTTP sniffing (http/1.0, http/1.1, h2c)
    kSourceMatch,           // source_type / source or direct-source prefix ranges / source_ports
    kWidePrefix,            // destination prefix range wider than one address (CIDR service)
    kAddressSuffix,         // address_suffix / suffix_len
    kTransportSocket,       // a downstream transport socket (TLS termination) on the chain
    kFilter,                // a network filter we neither enforce nor may ignore
    kNoTerminal,            // the last filter is not tcp_proxy or http_connection_manager
    kRateLimitCount,        // more than one local_ratelimit filter on one chain
    kScopedRoutes,          // HCM scoped_routes (needs the request)
    kPassthroughCluster,    // tcp_proxy to PassthroughCluster / BlackHoleCluster
    kRouteAction,           // route without a cluster action (redirect, direct_response, ...)
    kClusterHeader,         // cluster picked from a request header or a plugin
    kListenerAddress,       // not an IP socket address, UDP, named port or resolver
    kOriginalDst,           // listener use_original_dst (virtualOutbound), or cluster ORIGINAL_DST
    kInbound,               // traffic_direction INBOUND (the pod's own inbound listeners)
    kFilterChainMatcher,    // Listener.filter_chain_matcher (the matcher tree API)
    kDnsCluster,            // STRICT_DNS / LOGICAL_DNS: needs resolution the kernel does not do
    kCustomCluster,         // Cluster.cluster_type (aggregate and other extensions)
    kLbPolicy,              // RING_HASH, MAGLEV, CLUSTER_PROVIDED, load_balancing_policy
    kEndpointName,          // LbEndpoint.endpoint_name (named endpoints)
};
std::string_view unsupported_name(Unsupported u);

struct Skipped {
    Unsupported reason;
    std::string detail;  // "listener '0.0.0.0_80' filter chain 2: server_names [a.example]"
    bool operator==(const Skipped&) const = default;
};

// One cluster of a tcp_proxy or route action, with its weight. A single cluster is one entry of
// weight 1.
struct WeightedCluster {
    std::string cluster;
    uint32_t weight = 1;
    bool operator==(const WeightedCluster&) const = default;
};
// Where a connection goes without reading it: one cluster, or a weighted split (gray release).
struct Target {
    std::vector<WeightedCluster> clusters;  // never empty; weights >= 1
    bool operator==(const Target&) const = default;
};

// envoy.filters.network.local_ratelimit's token bucket: one token per connection.
struct TokenBucket {
    uint32_t max_tokens = 0;        // >= 1
    uint32_t tokens_per_fill = 1;   // >= 1
    uint64_t fill_interval_ns = 0;  // > 0
    std::string stat_prefix;
    bool operator==(const TokenBucket&) const = default;
};

// RDS: what a virtual host's routes do, as far as connect() can tell.
struct RouteEntry {
    std::string name;
    // Matches every request (prefix "/" or "", nothing else): the decision needs no request bytes.
    bool catch_all = false;
    std::string match;  // what it matches, for logs: "prefix /api, headers [x-user]"
    // The cluster or split; empty when the action is not one (then `unsupported` says why).
    std::optional<Target> target;
    std::optional<Skipped> unsupported;
    bool operator==(const RouteEntry&) const = default;
};
struct VirtualHost {
    std::string name;
    std::vector<std::string> domains;  // as sent: hostnames, short names, VIPs, "*"
    std::vector<RouteEntry> routes;    // in order: the first match wins
    bool operator==(const VirtualHost&) const = default;
};
struct NativeRoute {
    std::string name;  // RouteConfiguration.name: "80" or "<host>:<port>"
    std::vector<VirtualHost> vhosts;
    bool operator==(const NativeRoute&) const = default;
};

// A filter chain's terminal filter.
struct TcpProxy {
    Target target;
    std::string stat_prefix;
    bool operator==(const TcpProxy&) const = default;
};
struct Hcm {
    std::string rds;                          // route_config_name; empty when inline
    std::optional<NativeRoute> inline_route;  // HCM route_config
    bool operator==(const Hcm&) const = default;
};

struct FilterChain {
    std::string name;
    // Match: every set field must hold. Empty prefixes = any destination address.
    // kmesh::Cidr (model/authz.hpp): prefix_len as written, 0-32 for IPv4, 0-128 for IPv6.
    std::vector<Cidr> prefixes;  // single addresses only (/32, /128); wider ones are Skipped
    std::optional<uint16_t> destination_port;
    // application_protocols of HTTP sniffing (http/1.1, h2c, ...): the chain applies only to
    // connections whose first bytes are HTTP. Empty: any.
    std::vector<std::string> application_protocols;
    std::optional<TokenBucket> rate_limit;
    std::variant<TcpProxy, Hcm> terminal;
    bool operator==(const FilterChain&) const = default;
};

struct NativeListener {
    std::string name;  // "0.0.0.0_80", "10.96.0.10_9000"
    IpAddr address;    // unspecified (0.0.0.0 / ::) = every destination address of the port
    uint16_t port = 0;
    std::vector<FilterChain> chains;  // usable chains, in the listener's order
    // A default_filter_chain other than istiod's PassthroughFilterChain (whose traffic is left
    // alone anyway).
    std::optional<FilterChain> default_chain;
    // Set: nothing of this listener is programmed (chains is then empty).
    std::optional<Skipped> unsupported;
    std::vector<Skipped> skipped_chains;  // chains left out, each with why
    bool operator==(const NativeListener&) const = default;
};

enum class ClusterType : uint8_t { kStatic, kEds };
enum class LbPolicy : uint8_t { kRoundRobin, kLeastRequest, kRandom };
// Envoy's core.v3.HealthStatus.
enum class Health : uint8_t { kUnknown, kHealthy, kUnhealthy, kDraining, kTimeout, kDegraded };

// outlier_detection with Envoy's defaults filled in (outlier_detection.proto).
struct OutlierDetection {
    uint32_t consecutive_5xx = 5;  // for TCP: consecutive connection failures
    uint32_t enforcing_consecutive_5xx = 100;
    bool split_external_local_origin_errors = false;
    uint32_t consecutive_local_origin_failure = 5;
    uint32_t enforcing_consecutive_local_origin_failure = 100;
    uint64_t interval_ns = 10'000'000'000ULL;
    uint64_t base_ejection_time_ns = 30'000'000'000ULL;
    uint64_t max_ejection_time_ns = 300'000'000'000ULL;
    uint32_t max_ejection_percent = 10;
    bool operator==(const OutlierDetection&) const = default;
};

struct NativeEndpoint {
    IpAddr address;
    uint16_t port = 0;
    uint32_t weight = 1;  // LbEndpoint.load_balancing_weight, default 1
    Health health = Health::kUnknown;
    bool operator==(const NativeEndpoint&) const = default;
};
struct NativeLocality {
    Locality locality;
    uint32_t weight = 0;    // load_balancing_weight; 0 = not set
    uint32_t priority = 0;  // 0 (highest) .. 128
    std::vector<NativeEndpoint> endpoints;
    bool operator==(const NativeLocality&) const = default;
};
struct NativeCla {
    std::string cluster_name;
    std::vector<NativeLocality> localities;
    std::vector<Skipped> skipped_endpoints;
    bool operator==(const NativeCla&) const = default;
};

struct NativeCluster {
    std::string name;  // "outbound|80||echo.default.svc.cluster.local"
    ClusterType type = ClusterType::kEds;
    std::string eds_name;  // EDS: the CLA to ask for (service_name, else name)
    LbPolicy lb = LbPolicy::kRoundRobin;
    std::optional<uint32_t> max_connections;  // unset: no limit (istiod's UINT32_MAX)
    std::optional<OutlierDetection> outlier;
    bool locality_weighted = false;            // common_lb_config.locality_weighted_lb_config
    std::optional<NativeCla> load_assignment;  // STATIC: the inline endpoints
    // Set: the cluster is not programmed; frontends that lead to it pass traffic through.
    std::optional<Skipped> unsupported;
    bool operator==(const NativeCluster&) const = default;
};

// The rules every native resource meets whichever source it came from (the converter runs them
// after filling the struct): names set, ports 1-65535, weights >= 1, priorities <= 128, bucket
// sizes >= 1. Each problem is one sentence naming the resource and field; empty when valid.
std::vector<std::string> validate(const NativeListener& l);
std::vector<std::string> validate(const NativeRoute& r);
std::vector<std::string> validate(const NativeCluster& c);
std::vector<std::string> validate(const NativeCla& c);

}  // namespace kmesh::native
