// Kernel-native conversion (agent/src/sources/ads/convert.cpp) on istiod-shaped fixtures
// (test/native/fixtures, written by hand after docs/design/kernel-native.md §1; the
// envoy_api_subset test parses each strictly with the upstream Envoy schema). Each expected model
// below is written out by hand from the fixture, not derived from the converter.
#include <doctest/doctest.h>
#include <google/protobuf/util/json_util.h>

#include <fstream>
#include <set>
#include <sstream>

#include "agent/src/sources/ads/bundle.hpp"
#include "agent/src/sources/ads/convert.hpp"
#include "envoy/extensions/filters/network/local_ratelimit/v3/local_rate_limit.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "envoy/service/discovery/v3/discovery.pb.h"
#include "udpa/type/v1/typed_struct.pb.h"

using namespace kmesh;
using namespace kmesh::native;
namespace pb = google::protobuf;

namespace {

envoy::service::discovery::v3::DiscoveryResponse fixture(const std::string& name) {
    std::ifstream in(std::string(KMESH_TEST_DATA_DIR) + "/native/fixtures/" + name);
    REQUIRE(in);
    std::stringstream ss;
    ss << in.rdbuf();
    envoy::service::discovery::v3::DiscoveryResponse r;
    pb::util::JsonParseOptions opts;
    // Fields our subset does not declare (http_filters, retry_policy, transport_socket_matches,
    // ...) are upstream fields the converter does not read; envoy_api_subset rules out typos.
    opts.ignore_unknown_fields = true;
    auto st = pb::util::JsonStringToMessage(ss.str(), &r, opts);
    REQUIRE_MESSAGE(st.ok(), name << ": " << st.ToString());
    return r;
}

std::vector<ads::ResourceResult> convert(const std::string& name) {
    auto r = fixture(name);
    auto out = ads::convert_resources(r.type_url(), r.resources());
    REQUIRE(out.is_ok());
    return std::move(out).value();
}

template <class T>
const T& ok(const ads::ResourceResult& r) {
    REQUIRE_MESSAGE(r.value.is_ok(), r.name << ": " << r.value.status().to_string());
    REQUIRE(std::holds_alternative<T>(*r.value));
    return std::get<T>(*r.value);
}

IpAddr ip(const char* s) { return *IpAddr::parse(s); }

Target one(const std::string& cluster) { return Target{{{cluster, 1}}}; }

FilterChain tcp_chain(std::string name, Target t, std::string stat_prefix) {
    FilterChain c;
    c.name = std::move(name);
    c.terminal = TcpProxy{std::move(t), std::move(stat_prefix)};
    return c;
}

FilterChain http_chain(std::string name, std::string rds) {
    FilterChain c;
    c.name = std::move(name);
    c.application_protocols = {"http/1.1", "h2c"};
    c.terminal = Hcm{std::move(rds), std::nullopt};
    return c;
}

RouteEntry route(std::string name, bool catch_all, std::string match, std::optional<Target> t) {
    RouteEntry e;
    e.name = std::move(name);
    e.catch_all = catch_all;
    e.match = std::move(match);
    e.target = std::move(t);
    return e;
}

NativeListener listener(std::string name, const char* addr, uint16_t port, std::vector<FilterChain> chains) {
    NativeListener l;
    l.name = std::move(name);
    l.address = ip(addr);
    l.port = port;
    l.chains = std::move(chains);
    return l;
}

}  // namespace

TEST_CASE("native: 0.0.0.0_80 HTTP listener with HCM rds \"80\"; PassthroughFilterChain ignored") {
    auto rs = convert("lds_http_80.json");
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].name == "0.0.0.0_80");
    CHECK(ok<NativeListener>(rs[0]) ==
          listener("0.0.0.0_80", "0.0.0.0", 80, {http_chain("0.0.0.0_80", "80")}));
}

TEST_CASE(
    "native: RDS \"80\": service vhost with a catch-all route; allow_any to PassthroughCluster is skipped") {
    auto rs = convert("rds_80.json");
    REQUIRE(rs.size() == 1);
    NativeRoute want;
    want.name = "80";
    want.vhosts.push_back(VirtualHost{
        "echo.default.svc.cluster.local:80",
        {"echo.default.svc.cluster.local", "echo", "echo.default.svc", "echo.default", "10.96.0.20"},
        {route("default", true, "prefix /", one("outbound|80||echo.default.svc.cluster.local"))}});
    auto any = route("allow_any", true, "prefix /", std::nullopt);
    any.unsupported = Skipped{Unsupported::kPassthroughCluster,
                              "route '80' virtual host 'allow_any' route 0 to PassthroughCluster"};
    want.vhosts.push_back(VirtualHost{"allow_any", {"*"}, {any}});
    CHECK(ok<NativeRoute>(rs[0]) == want);
}

TEST_CASE("native: <vip>_<port> tcp_proxy listener; istio.stats in a TypedStruct is ignored") {
    auto rs = convert("lds_tcp_vip.json");
    REQUIRE(rs.size() == 1);
    CHECK(ok<NativeListener>(rs[0]) ==
          listener("10.96.0.10_9000", "10.96.0.10", 9000,
                   {tcp_chain("", one("outbound|9000||tcp-echo.default.svc.cluster.local"),
                              "outbound|9000||tcp-echo.default.svc.cluster.local")}));
}

TEST_CASE("native: sniffed VIP listener keeps its HTTP and TCP chains and skips the SNI chain") {
    auto rs = convert("lds_sniffed.json");
    REQUIRE(rs.size() == 1);
    auto want =
        listener("10.96.0.30_8080", "10.96.0.30", 8080,
                 {http_chain("10.96.0.30_8080-http", "web.default.svc.cluster.local:8080"),
                  tcp_chain("10.96.0.30_8080-tcp", one("outbound|8080||web.default.svc.cluster.local"),
                            "outbound|8080||web.default.svc.cluster.local")});
    want.skipped_chains = {
        {Unsupported::kServerNames,
         "listener '10.96.0.30_8080' filter chain '10.96.0.30_8080-tls' server_names [web.example.com]"}};
    CHECK(ok<NativeListener>(rs[0]) == want);

    auto routes = convert("rds_sniffed.json");
    REQUIRE(routes.size() == 1);
    NativeRoute r{"web.default.svc.cluster.local:8080",
                  {VirtualHost{"web.default.svc.cluster.local:8080",
                               {"*"},
                               {route("default", true, "prefix /",
                                      one("outbound|8080||web.default.svc.cluster.local"))}}}};
    CHECK(ok<NativeRoute>(routes[0]) == r);
}

TEST_CASE("native: weighted tcp_proxy 90/10") {
    auto rs = convert("lds_weighted_tcp.json");
    REQUIRE(rs.size() == 1);
    Target split{{{"outbound|3306|v1|db.default.svc.cluster.local", 90},
                  {"outbound|3306|v2|db.default.svc.cluster.local", 10}}};
    CHECK(ok<NativeListener>(rs[0]) == listener("10.96.0.40_3306", "10.96.0.40", 3306,
                                                {tcp_chain("", split, "db.default.svc.cluster.local")}));
}

TEST_CASE("native: weighted route; a zero-weight cluster is never picked and left out") {
    auto rs = convert("rds_weighted.json");
    REQUIRE(rs.size() == 1);
    Target split{{{"outbound|9080|v1|reviews.default.svc.cluster.local", 90},
                  {"outbound|9080|v2|reviews.default.svc.cluster.local", 10}}};
    NativeRoute want{"9080",
                     {VirtualHost{"reviews.default.svc.cluster.local:9080",
                                  {"reviews.default.svc.cluster.local", "reviews", "reviews.default.svc",
                                   "reviews.default", "10.96.0.21"},
                                  {route("reviews-split", true, "prefix /", split)}}}};
    CHECK(ok<NativeRoute>(rs[0]) == want);
}

TEST_CASE("native: header, path and redirect routes before the default are not catch-alls") {
    auto rs = convert("rds_header_route.json");
    REQUIRE(rs.size() == 1);
    const std::string vh = "ratings.default.svc.cluster.local:9081";
    auto legacy = route("legacy", false, "prefix /legacy", std::nullopt);
    legacy.unsupported =
        Skipped{Unsupported::kRouteAction,
                "route '9081' virtual host '" + vh +
                    "' route 2 has no cluster action (redirect, direct_response or filter action)"};
    NativeRoute want{
        "9081",
        {VirtualHost{vh,
                     {"ratings.default.svc.cluster.local", "ratings", "10.96.0.22", "fd00:10:96::22"},
                     {route("jason", false, "prefix /, headers [end-user]",
                            one("outbound|9081|v2|ratings.default.svc.cluster.local")),
                      route("api", false, "path /api/v1/ratings",
                            one("outbound|9081|v3|ratings.default.svc.cluster.local")),
                      legacy,
                      route("default", true, "prefix /",
                            one("outbound|9081|v1|ratings.default.svc.cluster.local"))}}}};
    CHECK(ok<NativeRoute>(rs[0]) == want);
}

TEST_CASE("native: local_ratelimit before tcp_proxy, direct and wrapped in either TypedStruct") {
    auto rs = convert("lds_ratelimit.json");
    REQUIRE(rs.size() == 3);
    struct Want {
        const char* name;
        const char* addr;
        uint16_t port;
        const char* cluster;
        TokenBucket bucket;
    };
    const Want wants[] = {
        {"10.96.0.50_6379",
         "10.96.0.50",
         6379,
         "outbound|6379||redis.default.svc.cluster.local",
         {10, 5, 1'000'000'000ULL, "redis_rl"}},
        // tokens_per_fill absent: Envoy's default 1.
        {"10.96.0.51_5432",
         "10.96.0.51",
         5432,
         "outbound|5432||pg.default.svc.cluster.local",
         {3, 1, 500'000'000ULL, "pg_rl"}},
        {"10.96.0.52_27017",
         "10.96.0.52",
         27017,
         "outbound|27017||mongo.default.svc.cluster.local",
         {100, 100, 60'000'000'000ULL, "mongo_rl"}},
    };
    for (size_t i = 0; i < 3; ++i) {
        auto chain = tcp_chain("", one(wants[i].cluster), wants[i].cluster);
        chain.rate_limit = wants[i].bucket;
        CHECK(ok<NativeListener>(rs[i]) == listener(wants[i].name, wants[i].addr, wants[i].port, {chain}));
    }
}

TEST_CASE(
    "native: CDS: EDS with Istio defaults, DR connectionPool + outlierDetection, STATIC; DNS, ORIGINAL_DST, "
    "RING_HASH skipped") {
    auto rs = convert("cds.json");
    REQUIRE(rs.size() == 6);

    NativeCluster echo;
    echo.name = "outbound|80||echo.default.svc.cluster.local";
    echo.type = ClusterType::kEds;
    echo.eds_name = echo.name;
    echo.lb = LbPolicy::kLeastRequest;  // UINT32_MAX max_connections: no limit
    CHECK(ok<NativeCluster>(rs[0]) == echo);

    NativeCluster reviews;
    reviews.name = "outbound|9080|v1|reviews.default.svc.cluster.local";
    reviews.type = ClusterType::kEds;
    reviews.eds_name = reviews.name;
    reviews.lb = LbPolicy::kRoundRobin;
    reviews.max_connections = 100;  // the DEFAULT thresholds; HIGH's 7 does not apply
    OutlierDetection od;
    od.consecutive_5xx = 3;
    od.interval_ns = 5'000'000'000ULL;
    od.base_ejection_time_ns = 15'000'000'000ULL;
    od.max_ejection_percent = 50;
    reviews.outlier = od;
    reviews.locality_weighted = true;
    CHECK(ok<NativeCluster>(rs[1]) == reviews);

    NativeCluster api;
    api.name = "outbound|443||api.partner.example";
    api.type = ClusterType::kStatic;
    api.lb = LbPolicy::kRandom;
    NativeCla cla;
    cla.cluster_name = api.name;
    cla.localities.push_back(NativeLocality{
        {},
        4,
        0,
        {{ip("192.0.2.10"), 443, 3, Health::kUnknown}, {ip("2001:db8::10"), 8443, 1, Health::kUnknown}}});
    api.load_assignment = cla;
    CHECK(ok<NativeCluster>(rs[2]) == api);

    auto skipped = [](std::string name, Unsupported why, std::string detail) {
        NativeCluster c;
        c.name = std::move(name);
        c.unsupported = Skipped{why, std::move(detail)};
        return c;
    };
    CHECK(ok<NativeCluster>(rs[3]) ==
          skipped("outbound|80||www.external.example", Unsupported::kDnsCluster,
                  "cluster 'outbound|80||www.external.example' is of type STRICT_DNS"));
    CHECK(ok<NativeCluster>(rs[4]) == skipped("PassthroughCluster", Unsupported::kOriginalDst,
                                              "cluster 'PassthroughCluster' is of type ORIGINAL_DST"));
    CHECK(ok<NativeCluster>(rs[5]) ==
          skipped("outbound|6379||redis.default.svc.cluster.local", Unsupported::kLbPolicy,
                  "cluster 'outbound|6379||redis.default.svc.cluster.local' lb_policy RING_HASH"));
}

TEST_CASE("native: EDS with two priorities, locality weights and UNHEALTHY/DRAINING endpoints") {
    auto rs = convert("eds_priorities.json");
    REQUIRE(rs.size() == 2);
    NativeCla reviews;
    reviews.cluster_name = "outbound|9080|v1|reviews.default.svc.cluster.local";
    reviews.localities = {NativeLocality{{"eu-west1", "eu-west1-a", ""},
                                         2,
                                         0,
                                         {{ip("10.244.1.5"), 9080, 1, Health::kHealthy},
                                          {ip("10.244.1.6"), 9080, 1, Health::kUnhealthy}}},
                          NativeLocality{{"eu-west1", "eu-west1-b", ""},
                                         2,
                                         1,
                                         {{ip("10.244.2.7"), 9080, 1, Health::kDraining},
                                          {ip("10.244.2.8"), 9080, 1, Health::kHealthy}}}};
    CHECK(ok<NativeCla>(rs[0]) == reviews);
    NativeCla echo;
    echo.cluster_name = "outbound|80||echo.default.svc.cluster.local";
    echo.localities = {NativeLocality{{}, 1, 0, {{ip("fd00:10:244::9"), 8080, 1, Health::kHealthy}}}};
    CHECK(ok<NativeCla>(rs[1]) == echo);
    CHECK(ads::error_detail(rs).empty());
}

// ---- errors and edge cases, built from the fixtures with our subset (field-for-field upstream's,
// as envoy_api_subset checks) ---------------------------------------------------------------------

namespace {

namespace lis = envoy::config::listener::v3;
namespace cl = envoy::config::cluster::v3;
namespace ep = envoy::config::endpoint::v3;

template <class T>
T first(const std::string& file) {
    auto r = fixture(file);
    T m;
    REQUIRE(r.resources(0).UnpackTo(&m));
    return m;
}

template <class T>
void check_error(const Result<T>& r, Errc code, const std::string& message) {
    REQUIRE_FALSE(r.is_ok());
    CHECK(r.status().code() == code);
    CHECK(r.status().message() == message);
}

envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy tcp_proxy_of(const lis::Filter& f) {
    envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy tp;
    REQUIRE(f.typed_config().UnpackTo(&tp));
    return tp;
}

}  // namespace

TEST_CASE("native errors: bad ports") {
    auto l = first<lis::Listener>("lds_tcp_vip.json");
    l.mutable_address()->mutable_socket_address()->set_port_value(70000);
    check_error(ads::convert_listener(l), Errc::kInvalidArgument,
                "listener '10.96.0.10_9000' port 70000 is not a valid port");
    l.mutable_address()->mutable_socket_address()->set_port_value(0);
    check_error(ads::convert_listener(l), Errc::kInvalidArgument, "listener '10.96.0.10_9000' has port 0");

    auto cla = first<ep::ClusterLoadAssignment>("eds_priorities.json");
    cla.mutable_endpoints(1)
        ->mutable_lb_endpoints(0)
        ->mutable_endpoint()
        ->mutable_address()
        ->mutable_socket_address()
        ->set_port_value(0);
    check_error(ads::convert_cla(cla), Errc::kInvalidArgument,
                "cluster load assignment 'outbound|9080|v1|reviews.default.svc.cluster.local' endpoint "
                "10.244.2.7 has port 0");
    cla = first<ep::ClusterLoadAssignment>("eds_priorities.json");
    cla.mutable_endpoints(0)
        ->mutable_lb_endpoints(1)
        ->mutable_endpoint()
        ->mutable_address()
        ->mutable_socket_address()
        ->set_port_value(65536);
    check_error(ads::convert_cla(cla), Errc::kInvalidArgument,
                "cluster load assignment 'outbound|9080|v1|reviews.default.svc.cluster.local' locality 0 "
                "endpoint 1 port "
                "65536 is not a valid port");
}

TEST_CASE("native errors: zero weights") {
    auto l = first<lis::Listener>("lds_weighted_tcp.json");
    auto* f = l.mutable_filter_chains(0)->mutable_filters(0);
    auto tp = tcp_proxy_of(*f);
    tp.mutable_weighted_clusters()->mutable_clusters(1)->set_weight(0);
    f->mutable_typed_config()->PackFrom(tp);
    check_error(ads::convert_listener(l), Errc::kInvalidArgument,
                "listener '10.96.0.40_3306' filter chain 0 tcp_proxy cluster "
                "'outbound|3306|v2|db.default.svc.cluster.local' "
                "has weight 0");

    auto cla = first<ep::ClusterLoadAssignment>("eds_priorities.json");
    cla.mutable_endpoints(0)->mutable_lb_endpoints(0)->mutable_load_balancing_weight()->set_value(0);
    check_error(ads::convert_cla(cla), Errc::kInvalidArgument,
                "cluster load assignment 'outbound|9080|v1|reviews.default.svc.cluster.local' endpoint "
                "10.244.1.5 has "
                "load_balancing_weight 0");
    cla = first<ep::ClusterLoadAssignment>("eds_priorities.json");
    cla.mutable_endpoints(1)->mutable_load_balancing_weight()->set_value(0);
    check_error(ads::convert_cla(cla), Errc::kInvalidArgument,
                "cluster load assignment 'outbound|9080|v1|reviews.default.svc.cluster.local' locality 1 has "
                "load_balancing_weight 0");
}

TEST_CASE("native errors: unknown enum values") {
    auto c = first<cl::Cluster>("cds.json");
    c.set_lb_policy(static_cast<cl::Cluster::LbPolicy>(4));  // reserved upstream (ORIGINAL_DST_LB)
    check_error(ads::convert_cluster(c), Errc::kInvalidArgument,
                "cluster 'outbound|80||echo.default.svc.cluster.local' lb_policy has the unknown value 4");
    c = first<cl::Cluster>("cds.json");
    c.set_type(static_cast<cl::Cluster::DiscoveryType>(9));
    check_error(ads::convert_cluster(c), Errc::kInvalidArgument,
                "cluster 'outbound|80||echo.default.svc.cluster.local' type has the unknown value 9");
    auto cla = first<ep::ClusterLoadAssignment>("eds_priorities.json");
    cla.mutable_endpoints(0)->mutable_lb_endpoints(0)->set_health_status(
        static_cast<envoy::config::core::v3::HealthStatus>(42));
    check_error(
        ads::convert_cla(cla), Errc::kInvalidArgument,
        "cluster load assignment 'outbound|9080|v1|reviews.default.svc.cluster.local' locality 0 endpoint 0 "
        "health_status has the unknown value 42");
}

TEST_CASE("native errors: duplicate names NACK every copy, the other resources convert") {
    auto r = fixture("lds_ratelimit.json");
    *r.add_resources() = r.resources(0);
    auto out = ads::convert_resources(r.type_url(), r.resources());
    REQUIRE(out.is_ok());
    REQUIRE(out->size() == 4);
    for (size_t i : {size_t{0}, size_t{3}}) {
        CHECK((*out)[i].name == "10.96.0.50_6379");
        check_error((*out)[i].value, Errc::kAlreadyExists,
                    "'10.96.0.50_6379' occurs 2 times in one response");
    }
    CHECK((*out)[1].value.is_ok());
    CHECK((*out)[2].value.is_ok());
    CHECK(ads::error_detail(*out) ==
          "10.96.0.50_6379: already exists: '10.96.0.50_6379' occurs 2 times in one response; "
          "10.96.0.50_6379: already exists: '10.96.0.50_6379' occurs 2 times in one response");
}

TEST_CASE("native errors: wrong resource type, undecodable bytes, wrong response type") {
    auto r = fixture("lds_tcp_vip.json");
    auto* bad = r.add_resources();
    bad->set_type_url(std::string(ads::kListenerType));
    bad->set_value("\x0a\xff");  // field 1 (name), length 255, no bytes: truncated
    *r.add_resources() = fixture("cds.json").resources(0);
    auto out = ads::convert_resources(r.type_url(), r.resources());
    REQUIRE(out->size() == 3);
    CHECK((*out)[0].value.is_ok());
    check_error((*out)[1].value, Errc::kDataLoss, "envoy.config.listener.v3.Listener does not decode");
    CHECK((*out)[1].name == "#1");
    check_error((*out)[2].value, Errc::kInvalidArgument,
                "resource of type 'type.googleapis.com/envoy.config.cluster.v3.Cluster' in a response of "
                "'type.googleapis.com/envoy.config.listener.v3.Listener'");
    auto whole = ads::convert_resources("type.googleapis.com/envoy.config.core.v3.Node", r.resources());
    CHECK(whole.status().code() == Errc::kInvalidArgument);
}

TEST_CASE("native errors: non-IP endpoint address, terminal filter not last, broken TypedStruct") {
    auto cla = first<ep::ClusterLoadAssignment>("eds_priorities.json");
    cla.mutable_endpoints(0)
        ->mutable_lb_endpoints(0)
        ->mutable_endpoint()
        ->mutable_address()
        ->mutable_socket_address()
        ->set_address("reviews-v1.local");
    check_error(
        ads::convert_cla(cla), Errc::kInvalidArgument,
        "cluster load assignment 'outbound|9080|v1|reviews.default.svc.cluster.local' locality 0 endpoint 0 "
        "address 'reviews-v1.local' is not an IP address");

    auto l = first<lis::Listener>("lds_ratelimit.json");
    auto* chain = l.mutable_filter_chains(0);
    chain->mutable_filters()->SwapElements(0, 1);
    check_error(ads::convert_listener(l), Errc::kInvalidArgument,
                "listener '10.96.0.50_6379' filter chain 0 filter 'envoy.filters.network.tcp_proxy' is a "
                "terminal filter but "
                "not the last of the chain");

    auto wrapped = fixture("lds_ratelimit.json");
    lis::Listener pg;
    REQUIRE(wrapped.resources(1).UnpackTo(&pg));
    udpa::type::v1::TypedStruct ts;
    REQUIRE(pg.filter_chains(0).filters(0).typed_config().UnpackTo(&ts));
    (*ts.mutable_value()->mutable_fields())["token_bucket"].set_string_value("ten");
    pg.mutable_filter_chains(0)->mutable_filters(0)->mutable_typed_config()->PackFrom(ts);
    auto r = ads::convert_listener(pg);
    REQUIRE_FALSE(r.is_ok());
    CHECK(r.status().code() == Errc::kDataLoss);
    CHECK(r.status().message().find(
              "listener '10.96.0.51_5432' filter chain 0 filter 'envoy.filters.network.local_ratelimit': "
              "TypedStruct value is not a "
              "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit") == 0);

    // A bucket of 0 tokens could never admit a connection: Envoy requires max_tokens > 0.
    envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit rl;
    REQUIRE(
        first<lis::Listener>("lds_ratelimit.json").filter_chains(0).filters(0).typed_config().UnpackTo(&rl));
    rl.mutable_token_bucket()->set_max_tokens(0);
    auto zero = first<lis::Listener>("lds_ratelimit.json");
    zero.mutable_filter_chains(0)->mutable_filters(0)->mutable_typed_config()->PackFrom(rl);
    check_error(ads::convert_listener(zero), Errc::kInvalidArgument,
                "listener '10.96.0.50_6379' filter chain 0 local_ratelimit max_tokens is 0");
}

TEST_CASE("native unsupported: listener-wide reasons") {
    auto l = first<lis::Listener>("lds_http_80.json");
    l.set_name("virtualOutbound");
    l.mutable_use_original_dst()->set_value(true);
    auto r = ads::convert_listener(l);
    REQUIRE(r.is_ok());
    CHECK(r->unsupported ==
          Skipped{Unsupported::kOriginalDst,
                  "listener 'virtualOutbound' has use_original_dst (the capture listener)"});
    CHECK(r->chains.empty());

    l = first<lis::Listener>("lds_http_80.json");
    l.set_traffic_direction(envoy::config::core::v3::INBOUND);
    CHECK(ads::convert_listener(l)->unsupported->reason == Unsupported::kInbound);

    l = first<lis::Listener>("lds_http_80.json");
    l.mutable_address()->mutable_socket_address()->set_protocol(envoy::config::core::v3::SocketAddress::UDP);
    CHECK(ads::convert_listener(l)->unsupported->reason == Unsupported::kListenerAddress);

    // Listener.filter_chain_matcher (32) is not in our subset: it arrives as an unknown field.
    l = first<lis::Listener>("lds_http_80.json");
    l.GetReflection()->MutableUnknownFields(&l)->AddLengthDelimited(32, "");
    CHECK(ads::convert_listener(l)->unsupported ==
          Skipped{Unsupported::kFilterChainMatcher, "listener '0.0.0.0_80' uses filter_chain_matcher"});
}

TEST_CASE("native unsupported: filter chains that need bytes or ranges are skipped, the rest kept") {
    auto base = first<lis::Listener>("lds_tcp_vip.json");
    auto with = [&](auto mutate) {
        auto l = base;
        mutate(*l.mutable_filter_chains(0));
        auto r = ads::convert_listener(l);
        REQUIRE(r.is_ok());
        CHECK(r->chains.empty());
        REQUIRE(r->skipped_chains.size() == 1);
        return r->skipped_chains[0];
    };
    const std::string where = "listener '10.96.0.10_9000' filter chain 0";
    CHECK(with([](auto& c) { c.mutable_filter_chain_match()->set_transport_protocol("tls"); }) ==
          Skipped{Unsupported::kTransportProtocol, where + " transport_protocol 'tls'"});
    CHECK(with([](auto& c) {
              c.mutable_filter_chain_match()->add_application_protocols("istio-peer-exchange");
          }) == Skipped{Unsupported::kApplicationProtocols,
                        where + " application_protocols [istio-peer-exchange]"});
    CHECK(with([](auto& c) { c.mutable_filter_chain_match()->add_source_ports(5000); }).reason ==
          Unsupported::kSourceMatch);
    CHECK(with([](auto& c) { c.mutable_transport_socket()->set_name("envoy.transport_sockets.tls"); }) ==
          Skipped{Unsupported::kTransportSocket, where + " transport_socket 'envoy.transport_sockets.tls'"});
    CHECK(with([](auto& c) {
              auto* p = c.mutable_filter_chain_match()->add_prefix_ranges();
              p->set_address_prefix("10.96.0.0");
              p->mutable_prefix_len()->set_value(16);
          }) == Skipped{Unsupported::kWidePrefix, where + " prefix_ranges 10.96.0.0/16"});
    CHECK(with([](auto& c) {
              // [istio.stats, tcp_proxy] -> [istio.stats, rbac, tcp_proxy]
              udpa::type::v1::TypedStruct ts;
              ts.set_type_url("type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC");
              auto* f = c.mutable_filters()->Add();
              f->set_name("envoy.filters.network.rbac");
              f->mutable_typed_config()->PackFrom(ts);
              c.mutable_filters()->SwapElements(1, 2);
          }) == Skipped{Unsupported::kFilter,
                        where + " filter 'envoy.filters.network.rbac' "
                                "(envoy.extensions.filters.network.rbac.v3.RBAC) is not enforced"});

    // A /32 prefix and a destination port are exact: kept.
    auto l = base;
    auto* m = l.mutable_filter_chains(0)->mutable_filter_chain_match();
    auto* p = m->add_prefix_ranges();
    p->set_address_prefix("10.96.0.10");
    p->mutable_prefix_len()->set_value(32);
    m->mutable_destination_port()->set_value(9000);
    auto r = ads::convert_listener(l);
    REQUIRE(r.is_ok());
    REQUIRE(r->chains.size() == 1);
    const std::vector<kmesh::Cidr> exact{{ip("10.96.0.10"), 32}};
    CHECK(r->chains[0].prefixes == exact);
    CHECK(r->chains[0].destination_port == uint16_t{9000});
}

TEST_CASE("native unsupported: custom cluster types and load_balancing_policy; absent max_connections") {
    auto c = first<cl::Cluster>("cds.json");
    c.GetReflection()->MutableUnknownFields(&c)->AddLengthDelimited(38, "");
    CHECK(ads::convert_cluster(c)->unsupported->reason == Unsupported::kCustomCluster);
    c = first<cl::Cluster>("cds.json");
    c.GetReflection()->MutableUnknownFields(&c)->AddLengthDelimited(41, "");
    CHECK(ads::convert_cluster(c)->unsupported->reason == Unsupported::kLbPolicy);

    // DEFAULT thresholds without max_connections: no limit for istiod, Envoy's 1024 when asked.
    c = first<cl::Cluster>("cds.json");
    c.mutable_circuit_breakers()->mutable_thresholds(0)->clear_max_connections();
    CHECK(ads::convert_cluster(c)->max_connections == std::nullopt);
    CHECK(ads::convert_cluster(c, {.absent_max_connections = 1024})->max_connections == uint32_t{1024});
    // An explicit limit wins over the default.
    c.mutable_circuit_breakers()->mutable_thresholds(0)->mutable_max_connections()->set_value(3);
    CHECK(ads::convert_cluster(c, {.absent_max_connections = 1024})->max_connections == uint32_t{3});
}

TEST_CASE("native: unsupported_name gives every reason a distinct metrics label") {
    std::set<std::string_view> names;
    for (int i = 0; i <= static_cast<int>(Unsupported::kEndpointName); ++i) {
        auto n = unsupported_name(static_cast<Unsupported>(i));
        CHECK(n != "unknown");
        names.insert(n);
    }
    CHECK(names.size() == static_cast<size_t>(Unsupported::kEndpointName) + 1);
}

// ---- the bundle file source (sources/ads/bundle.cpp) -------------------------------------------

TEST_CASE("native bundle: a YAML file of mixed resources converts as ADS would, with Envoy's 1024 default") {
    const char* yaml = R"(resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: db
  type: STATIC
  lb_policy: ROUND_ROBIN
  circuit_breakers:
    thresholds:
    - max_pending_requests: 10
  load_assignment:
    cluster_name: db
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {socket_address: {address: 10.0.0.7, port_value: 5432}}}
        health_status: HEALTHY
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: db-listener
  address: {socket_address: {address: 10.96.0.60, port_value: 5432}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.local_ratelimit
      typed_config:
        "@type": type.googleapis.com/xds.type.v3.TypedStruct
        type_url: type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
        value: {stat_prefix: db, token_bucket: {max_tokens: 2, fill_interval: 10s}}
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: db
        cluster: db
)";
    auto b = ads::parse_bundle(yaml);
    REQUIRE_MESSAGE(b.is_ok(), b.status().to_string());
    REQUIRE(b->clusters.size() == 1);
    REQUIRE(b->listeners.size() == 1);
    CHECK(b->routes.empty());
    CHECK(b->clas.empty());
    NativeCluster db;
    db.name = "db";
    db.type = ClusterType::kStatic;
    db.lb = LbPolicy::kRoundRobin;
    db.max_connections = 1024;  // thresholds without max_connections: Envoy's default for a file
    db.load_assignment =
        NativeCla{"db", {NativeLocality{{}, 0, 0, {{ip("10.0.0.7"), 5432, 1, Health::kHealthy}}}}, {}};
    CHECK(ok<NativeCluster>(b->clusters[0]) == db);
    auto chain = tcp_chain("", one("db"), "db");
    chain.rate_limit = TokenBucket{2, 1, 10'000'000'000ULL, "db"};
    CHECK(ok<NativeListener>(b->listeners[0]) == listener("db-listener", "10.96.0.60", 5432, {chain}));
}

TEST_CASE("native bundle: a JSON file converts like the same resources over ADS; bad files are refused") {
    auto path = std::string(KMESH_TEST_DATA_DIR) + "/native/fixtures/cds.json";
    auto b = ads::read_bundle(path, {});  // istiod's options: the same result as ADS
    REQUIRE(b.is_ok());
    auto ads_results = convert("cds.json");
    REQUIRE(b->clusters.size() == ads_results.size());
    for (size_t i = 0; i < ads_results.size(); ++i)
        CHECK(ok<NativeCluster>(b->clusters[i]) == ok<NativeCluster>(ads_results[i]));

    CHECK(ads::read_bundle("/nonexistent/bundle.yaml").status().code() == Errc::kNotFound);
    CHECK(ads::parse_bundle("resources: [\n").status().code() == Errc::kDataLoss);
    auto other = ads::parse_bundle(
        R"({"resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.Node", "id": "x"}]})");
    CHECK(other.status().code() == Errc::kInvalidArgument);
}

TEST_CASE("native: a route match with fields our subset does not declare is not a catch-all") {
    auto rc = first<envoy::config::route::v3::RouteConfiguration>("rds_80.json");
    // RouteMatch.runtime_fraction (9): on the wire it arrives as an unknown field.
    auto* m = rc.mutable_virtual_hosts(0)->mutable_routes(0)->mutable_match();
    m->GetReflection()->MutableUnknownFields(m)->AddLengthDelimited(9, "");
    auto r = ads::convert_route(rc);
    REQUIRE(r.is_ok());
    const auto& e = r->vhosts[0].routes[0];
    CHECK_FALSE(e.catch_all);
    CHECK(e.match == "prefix /, runtime fraction, TLS context or metadata");
    // A match without a path specifier we read (safe_regex arrives as unknown field 10): the same.
    m->clear_prefix();
    m->GetReflection()->MutableUnknownFields(m)->Clear();
    m->GetReflection()->MutableUnknownFields(m)->AddLengthDelimited(10, "");
    r = ads::convert_route(rc);
    REQUIRE(r.is_ok());
    CHECK_FALSE(r->vhosts[0].routes[0].catch_all);
}
