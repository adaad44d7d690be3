// Kernel-native mode's mapping (dataplane/native_state) and its istiod source (sources/ads/source):
// Envoy resources -> the map entries connect() will read. Every expected entry below is written
// out by hand from the resources of the case (hashes of the names the ABI documents, ports in
// network order), not derived from the mapping.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <google/protobuf/util/json_util.h>

#include <cstring>
#include <mutex>

#include "agent/src/dataplane/native_state.hpp"
#include "agent/src/sources/ads/source.hpp"

using namespace kmesh;
using namespace kmesh::native;

namespace {

IpAddr ip(const char* s) { return *IpAddr::parse(s); }

kmesh_frontend_key fkey(const char* addr, uint16_t port) {
    kmesh_frontend_key k{};
    std::memcpy(k.addr, ip(addr).bytes.data(), 16);
    k.port = htons(port);
    return k;
}

Target one(const std::string& c) { return Target{{WeightedCluster{c, 1}}}; }

FilterChain tcp_chain(const std::string& name, Target t) {
    FilterChain fc;
    fc.name = name;
    fc.terminal = TcpProxy{std::move(t), "stat"};
    return fc;
}

NativeListener vip_listener(const std::string& vip, uint16_t port, std::vector<FilterChain> chains) {
    NativeListener l;
    l.name = vip + "_" + std::to_string(port);
    l.address = ip(vip.c_str());
    l.port = port;
    l.chains = std::move(chains);
    return l;
}

NativeCluster eds_cluster(const std::string& name, LbPolicy lb = LbPolicy::kRoundRobin) {
    NativeCluster c;
    c.name = name;
    c.type = ClusterType::kEds;
    c.eds_name = name;
    c.lb = lb;
    return c;
}

NativeEndpoint ep(const char* addr, uint16_t port, uint32_t weight = 1, Health h = Health::kHealthy) {
    return NativeEndpoint{ip(addr), port, weight, h};
}

NativeCla cla(const std::string& name, std::vector<NativeLocality> locs) {
    return NativeCla{name, std::move(locs), {}};
}

DesiredBackend v4_backend(const char* addr, uint16_t port) {
    DesiredBackend b;
    b.addr4 = ip(addr).bytes;
    b.flags = KMESH_BACKEND_HAS_V4 | KMESH_BACKEND_HAS_PORT;
    b.port = htons(port);
    return b;
}

uint64_t backend_hash(const char* text) { return name_hash(text); }

}  // namespace

TEST_CASE(
    "native state: a VIP tcp_proxy listener to an EDS cluster with priorities, health and max_connections") {
    NativeState st;
    NativeCluster a = eds_cluster("outbound|9000||a.default.svc.cluster.local");
    a.max_connections = 2;
    st.upsert(a);
    st.upsert(
        cla(a.name, {NativeLocality{{},
                                    0,
                                    0,
                                    {ep("10.0.0.1", 8080, 1), ep("10.0.0.2", 8080, 1, Health::kUnhealthy),
                                     ep("10.0.0.4", 8080, 2, Health::kDraining)}},
                     NativeLocality{{}, 0, 1, {ep("10.0.0.3", 9090, 3, Health::kUnknown)}}}));
    st.upsert(vip_listener("10.96.0.10", 9000, {tcp_chain("c", one(a.name))}));
    const DesiredState& d = st.desired();

    uint64_t ha = name_hash("outbound|9000||a.default.svc.cluster.local");
    uint64_t b1 = backend_hash("endpoint/10.0.0.1:8080"), b3 = backend_hash("endpoint/10.0.0.3:9090");
    REQUIRE(d.services.size() == 1);
    const DesiredService& s = d.services.at(ha);
    CHECK(s.lb_mode == KMESH_LB_FAILOVER);  // a second priority
    CHECK(s.flags == (KMESH_SERVICE_ROUND_ROBIN | KMESH_SERVICE_MAX_CONN));
    CHECK(s.max_connections == 2);
    // UNHEALTHY and DRAINING are not endpoints; UNKNOWN (no health checking) is.
    CHECK(s.members == DesiredMembers{{b1, DesiredMember{1, 0, 1u << KMESH_FAMILY_V4}},
                                      {b3, DesiredMember{3, 1, 1u << KMESH_FAMILY_V4}}});
    CHECK(d.backends.size() == 2);
    CHECK(d.backends.at(b1) == v4_backend("10.0.0.1", 8080));
    CHECK(d.backends.at(b3) == v4_backend("10.0.0.3", 9090));
    FrontendTarget want{ha, htons(9000), KMESH_FRONTEND_BACKEND_PORT, 0};
    CHECK(d.frontends == std::map<kmesh_frontend_key, FrontendTarget>{{fkey("10.96.0.10", 9000), want}});
    CHECK(s.frontends == d.frontends);
    CHECK(d.splits.empty());
    CHECK(d.limits.empty());
    CHECK(st.eds_names() == std::vector<std::string>{a.name});
}

TEST_CASE("native state: warming holds a frontend back until its cluster's endpoints arrive") {
    NativeState st;
    st.upsert(eds_cluster("b"));
    st.upsert(vip_listener("10.96.0.11", 80, {tcp_chain("", one("b"))}));
    CHECK(st.desired().frontends.empty());
    CHECK(st.stats().warming == 1);
    Dirty d1 = st.take_dirty();
    CHECK(d1.all);
    CHECK(d1.native);
    CHECK(st.take_dirty().empty());  // nothing changed since
    st.upsert(cla("b", {NativeLocality{{}, 0, 0, {ep("10.0.0.9", 80)}}}));
    CHECK(st.desired().frontends.size() == 1);
    CHECK(st.stats().warming == 0);
    CHECK(!st.take_dirty().empty());

    // A cluster the listener names that CDS has not sent (yet): warming too, not an error.
    st.upsert(vip_listener("10.96.0.12", 80, {tcp_chain("", one("not-yet"))}));
    CHECK(st.desired().frontends.count(fkey("10.96.0.12", 80)) == 0);
    CHECK(st.stats().warming == 1);
}

TEST_CASE(
    "native state: a listener moved to a cluster still warming keeps its old target (make before break)") {
    NativeState st;
    st.upsert(eds_cluster("old"));
    st.upsert(cla("old", {NativeLocality{{}, 0, 0, {ep("10.0.1.1", 80)}}}));
    st.upsert(vip_listener("10.96.0.13", 80, {tcp_chain("", one("old"))}));
    uint64_t hold = name_hash("old"), hnew = name_hash("new");
    REQUIRE(st.desired().frontends.at(fkey("10.96.0.13", 80)).service == hold);
    // CDS replaces "old" by "new" and LDS points at it before EDS has sent new's endpoints.
    st.remove_cluster("old");
    st.remove_cla("old");
    st.upsert(eds_cluster("new"));
    st.upsert(vip_listener("10.96.0.13", 80, {tcp_chain("", one("new"))}));
    const DesiredState& d = st.desired();
    CHECK(d.frontends.at(fkey("10.96.0.13", 80)).service == hold);
    REQUIRE(d.services.count(hold));  // carried over, with its endpoint
    CHECK(d.services.at(hold).members.count(backend_hash("endpoint/10.0.1.1:80")));
    CHECK(d.backends.count(backend_hash("endpoint/10.0.1.1:80")));
    st.upsert(cla("new", {NativeLocality{{}, 0, 0, {ep("10.0.2.1", 80)}}}));
    CHECK(st.desired().frontends.at(fkey("10.96.0.13", 80)).service == hnew);
    CHECK(st.desired().services.count(hold) == 0);
}

TEST_CASE("native state: weighted tcp_proxy becomes a split; the same split is shared") {
    NativeState st;
    for (const char* c : {"v1", "v2"}) {
        st.upsert(eds_cluster(c));
        st.upsert(
            cla(c, {NativeLocality{{}, 0, 0, {ep(c == std::string("v1") ? "10.0.3.1" : "10.0.3.2", 3306)}}}));
    }
    Target w{{WeightedCluster{"v1", 90}, WeightedCluster{"v2", 10}}};
    st.upsert(vip_listener("10.96.0.40", 3306, {tcp_chain("", w)}));
    st.upsert(vip_listener("10.96.0.41", 3306, {tcp_chain("", w)}));
    const DesiredState& d = st.desired();
    DesiredSplit split{{{name_hash("v1"), 90}, {name_hash("v2"), 10}}};
    char text[128];
    std::snprintf(text, sizeof text, "split/%016llx*90,%016llx*10", (unsigned long long)name_hash("v1"),
                  (unsigned long long)name_hash("v2"));
    uint64_t hsplit = name_hash(text);
    CHECK(d.splits == std::map<uint64_t, DesiredSplit>{{hsplit, split}});
    FrontendTarget want{hsplit, htons(3306), KMESH_FRONTEND_BACKEND_PORT | KMESH_FRONTEND_SPLIT, 0};
    CHECK(d.frontends.at(fkey("10.96.0.40", 3306)) == want);
    CHECK(d.frontends.at(fkey("10.96.0.41", 3306)) == want);
    // A split frontend is no service's own claim.
    CHECK(d.services.at(name_hash("v1")).frontends.empty());
}

TEST_CASE(
    "native state: 0.0.0.0_80 HTTP listener gives the VIPs of its virtual hosts; header routes approximate") {
    NativeState st;
    for (const char* c : {"echo", "reviews-v1", "reviews-v2"}) {
        st.upsert(eds_cluster(c));
        st.upsert(cla(c, {NativeLocality{{}, 0, 0, {ep("10.0.4.1", 8080)}}}));
    }
    NativeListener l;
    l.name = "0.0.0.0_80";
    l.address = ip("0.0.0.0");
    l.port = 80;
    FilterChain http;
    http.application_protocols = {"http/1.1", "h2c"};
    http.terminal = Hcm{"80", std::nullopt};
    l.chains = {http};
    st.upsert(l);
    CHECK(st.rds_names() == std::vector<std::string>{"80"});
    CHECK(st.desired().frontends.empty());  // the route has not arrived
    CHECK(st.stats().warming == 1);

    NativeRoute r;
    r.name = "80";
    VirtualHost echo{"echo.default.svc.cluster.local:80",
                     {"echo.default.svc.cluster.local", "echo", "10.96.0.20", "10.96.0.20:80", "[fd00::20]"},
                     {RouteEntry{"default", true, "prefix /", one("echo"), std::nullopt}}};
    VirtualHost reviews{"reviews.default.svc.cluster.local:80",
                        {"reviews.default.svc.cluster.local", "10.96.0.21", "10.96.0.21:8080"},
                        {RouteEntry{"jason", false, "headers [end-user]", one("reviews-v2"), std::nullopt},
                         RouteEntry{"default", true, "prefix /", one("reviews-v1"), std::nullopt}}};
    r.vhosts = {echo, reviews};
    st.upsert(r);
    const DesiredState& d = st.desired();
    uint16_t flags = KMESH_FRONTEND_BACKEND_PORT;
    std::map<kmesh_frontend_key, FrontendTarget> want{
        {fkey("10.96.0.20", 80), {name_hash("echo"), htons(80), flags, 0}},
        {fkey("fd00::20", 80), {name_hash("echo"), htons(80), flags, 0}},
        // "10.96.0.21:8080" names another port: not this listener's.
        {fkey("10.96.0.21", 80), {name_hash("reviews-v1"), htons(80), flags, 0}},
    };
    CHECK(d.frontends == want);
    CHECK(st.stats().routes_approximated == 1);

    // A VIP listener of the same address and port wins over the wildcard's virtual host.
    st.upsert(vip_listener("10.96.0.20", 80, {tcp_chain("", one("reviews-v2"))}));
    CHECK(st.desired().frontends.at(fkey("10.96.0.20", 80)).service == name_hash("reviews-v2"));
    CHECK(st.desired().frontends.at(fkey("fd00::20", 80)).service == name_hash("echo"));
}

TEST_CASE("native state: a local rate limit names the chain's bucket; unsupported clusters pass through") {
    NativeState st;
    NativeCluster db;
    db.name = "db";
    db.type = ClusterType::kStatic;
    db.load_assignment = cla("db", {NativeLocality{{}, 0, 0, {ep("10.0.5.1", 5432)}}});
    st.upsert(db);
    FilterChain fc = tcp_chain("limited", one("db"));
    fc.rate_limit = TokenBucket{5, 2, 400'000'000ULL, "db"};
    st.upsert(vip_listener("10.96.0.60", 5432, {fc}));
    NativeCluster dns = eds_cluster("www");
    dns.unsupported = Skipped{Unsupported::kDnsCluster, "STRICT_DNS"};
    st.upsert(dns);
    st.upsert(vip_listener("10.96.0.61", 80, {tcp_chain("", one("www"))}));

    const DesiredState& d = st.desired();
    uint64_t hl = name_hash("limit/10.96.0.60_5432/limited");
    CHECK(d.limits == std::map<uint64_t, DesiredLimit>{{hl, DesiredLimit{5, 2, 400'000'000ULL}}});
    CHECK(d.frontends.at(fkey("10.96.0.60", 5432)) ==
          FrontendTarget{name_hash("db"), htons(5432), KMESH_FRONTEND_BACKEND_PORT | KMESH_FRONTEND_LIMITED,
                         hl});
    CHECK(d.frontends.count(fkey("10.96.0.61", 80)) == 0);
    CHECK(d.services.count(name_hash("www")) == 0);
    CHECK(st.stats().unsupported.at("cluster_unsupported") == 1);
    CHECK(st.stats().unsupported.at(std::string(unsupported_name(Unsupported::kDnsCluster))) == 1);
    CHECK(st.eds_names().empty());  // STATIC and unsupported clusters ask EDS for nothing
}

namespace {

envoy::service::discovery::v3::DiscoveryResponse response(const std::string& json) {
    envoy::service::discovery::v3::DiscoveryResponse r;
    auto st = google::protobuf::util::JsonStringToMessage(json, &r);
    REQUIRE_MESSAGE(st.ok(), st.ToString());
    return r;
}

std::string cds(const std::vector<std::string>& clusters) {
    std::string out =
        R"({"version_info":"1","type_url":"type.googleapis.com/envoy.config.cluster.v3.Cluster","resources":[)";
    for (size_t i = 0; i < clusters.size(); i++)
        out += (i ? "," : "") +
               std::string(R"({"@type":"type.googleapis.com/envoy.config.cluster.v3.Cluster",)") +
               clusters[i] + "}";
    return out + "]}";
}

std::string eds_cluster_json(const std::string& name) {
    return R"("name":")" + name + R"(","type":"EDS")";  // EDS asks for the cluster's own name
}

std::string eds(const std::string& name, const std::string& addr) {
    return R"({"version_info":"1","type_url":"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment","resources":[{"@type":"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment","clusterName":")" +
           name + R"(","endpoints":[{"lbEndpoints":[{"endpoint":{"address":{"socketAddress":{"address":")" +
           addr + R"(","portValue":80}}}}]}]}]})";
}

}  // namespace

TEST_CASE(
    "ads source: CDS is the complete state, EDS is not; unreferenced CLAs go; a rejected cluster keeps its "
    "last good state") {
    NativeState st;
    std::mutex mu;
    int syncs = 0;
    ads::Source src(st, mu, [&] {
        syncs++;
        return true;
    });
    CHECK(src.on_response(response(cds({eds_cluster_json("a"), eds_cluster_json("b")}))).empty());
    CHECK(src.subscriptions(ads::kEndpointType) == std::vector<std::string>{"a", "b"});
    CHECK(!src.complete());  // EDS is named but not answered
    CHECK(src.on_response(response(eds("a", "10.0.0.1"))).empty());
    CHECK(src.complete() == false);  // LDS has not come
    CHECK(src.on_response(response(eds("b", "10.0.0.2"))).empty());
    CHECK(st.clas().size() == 2);
    // An EDS response without "a" does not delete "a".
    CHECK(src.on_response(response(eds("b", "10.0.0.3"))).empty());
    CHECK(st.clas().count("a") == 1);

    // CDS without "b": "b" and its CLA go. A bad "a" (an unknown lb_policy value) is NACKed by
    // name and keeps its last good state.
    auto rejected = src.on_response(response(cds({R"("name":"a","type":"EDS","lbPolicy":77)"})));
    REQUIRE(rejected.size() == 1);
    CHECK(rejected[0].rfind("a: ", 0) == 0);
    CHECK(st.clusters().count("a") == 1);
    CHECK(st.clusters().count("b") == 0);
    CHECK(st.clas().count("b") == 0);
    CHECK(st.clas().count("a") == 1);
    CHECK(src.subscriptions(ads::kEndpointType) == std::vector<std::string>{"a"});
    // Nothing written before the first full state: LDS has not come.
    CHECK(syncs == 0);

    CHECK(
        src
            .on_response(response(
                R"({"version_info":"1","type_url":"type.googleapis.com/envoy.config.listener.v3.Listener"})"))
            .empty());
    CHECK(src.complete());
    CHECK(syncs == 1);
    // From then on, every response.
    CHECK(src.on_response(response(eds("a", "10.0.0.4"))).empty());
    CHECK(syncs == 2);
    // An EDS resource no cluster names (queued before its cluster went) does not linger.
    CHECK(src.on_response(response(eds("gone", "10.0.0.5"))).empty());
    CHECK(st.clas().count("gone") == 0);
}

TEST_CASE("ads bundle: applied whole or not at all") {
    NativeState st;
    auto good = ads::parse_bundle(R"(resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: db
  type: STATIC
  load_assignment:
    cluster_name: db
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {socket_address: {address: 10.0.0.7, port_value: 5432}}}
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: db
  address: {socket_address: {address: 10.96.0.60, port_value: 5432}}
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: db
        cluster: db
)");
    REQUIRE(good.is_ok());
    CHECK(ads::apply_bundle(st, *good).empty());
    CHECK(st.desired().frontends.size() == 1);
    auto bad = ads::parse_bundle(R"(resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: other
  type: STATIC
  load_assignment:
    cluster_name: other
    endpoints:
    - lb_endpoints:
      - endpoint: {address: {socket_address: {address: 10.0.0.8, port_value: 0}}}
)");
    REQUIRE(bad.is_ok());
    CHECK(ads::apply_bundle(st, *bad).size() == 1);
    CHECK(st.clusters().count("db") == 1);  // untouched
    CHECK(st.clusters().count("other") == 0);
    CHECK(st.desired().frontends.size() == 1);
}
