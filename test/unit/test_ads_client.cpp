// ads::Client (kernel-native mode's SotW ADS stream) against a scripted istiod: what the agent
// says on the wire. The oracle is the xDS protocol as written in Envoy's xds_protocol.rst, spelled
// out request by request below: versions and nonces per type, NACK with the last accepted
// version, EDS/RDS name lists resent whole when they change, wildcard CDS/LDS, the warming order
// (CDS, then EDS and LDS, then RDS), the node on the first request only, and the reconnect.
// The handler is a stand-in that does not decode resources: each Any's bytes are a name.
#include <doctest/doctest.h>

#include <deque>

#include "agent/src/sources/ads/client.hpp"

using namespace kmesh;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;

namespace {

struct Sent {
    DiscoveryRequest req;
    size_t after_reads;  // how many responses the client had read when it wrote this
};

class ScriptedStream : public ads::SotwStream {
  public:
    std::deque<DiscoveryResponse> responses;
    std::vector<Sent> sent;
    size_t reads = 0;
    bool write(const DiscoveryRequest& r) override {
        sent.push_back({r, reads});
        return true;
    }
    bool read(DiscoveryResponse* r) override {
        if (responses.empty()) return false;
        *r = responses.front();
        responses.pop_front();
        reads++;
        return true;
    }
};

// CDS: each resource's bytes name a cluster, whose EDS name is the same; LDS: each names the
// route configuration its listener uses. A resource whose bytes start with "bad" is rejected and
// leaves the previous set as it was for that name (absent: not added).
class NamesHandler : public ads::Handler {
  public:
    std::vector<std::string> clusters, listeners_routes;
    std::vector<std::string> types_seen;
    int connections = 0;
    std::vector<std::string> on_response(const DiscoveryResponse& r) override {
        types_seen.push_back(r.type_url());
        std::vector<std::string> rejected, names;
        for (const auto& any : r.resources()) {
            if (any.value().rfind("bad", 0) == 0)
                rejected.push_back(any.value() + ": rejected by the test");
            else
                names.push_back(any.value());
        }
        if (r.type_url() == ads::kClusterType) clusters = names;
        if (r.type_url() == ads::kListenerType) listeners_routes = names;
        return rejected;
    }
    std::vector<std::string> subscriptions(const std::string& type_url) override {
        if (type_url == ads::kEndpointType) return clusters;
        if (type_url == ads::kRouteType) return listeners_routes;
        return {};
    }
    void on_connection(bool connected) override { connections += connected ? 1 : 0; }
};

DiscoveryResponse response(const std::string& type, const std::string& version, const std::string& nonce,
                           std::initializer_list<std::string> names) {
    DiscoveryResponse r;
    r.set_type_url(type);
    r.set_version_info(version);
    r.set_nonce(nonce);
    for (const auto& n : names) {
        auto* any = r.add_resources();
        any->set_type_url(type);
        any->set_value(n);
    }
    return r;
}

ads::ClientOptions options() {
    ads::ClientOptions o;
    o.address = "unused:1";
    o.node_id = "sidecar~10.0.0.1~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local";
    o.node_metadata = {{"NAMESPACE", "kmesh-system"}, {"INSTANCE_IPS", "10.0.0.1"}};
    o.node_metadata_objects = {{"LABELS", {{"app", "kmesh"}}}};
    o.locality.set_region("r1");
    o.locality.set_zone("z1");
    return o;
}

std::vector<std::string> names_of(const DiscoveryRequest& r) {
    return {r.resource_names().begin(), r.resource_names().end()};
}

// Checks one request's type, version, nonce, names and whether it NACKs.
void expect(const Sent& s, const std::string& type, const std::string& version, const std::string& nonce,
            std::vector<std::string> names, bool nack = false) {
    INFO("request of type " << s.req.type_url() << " version " << s.req.version_info() << " nonce "
                            << s.req.response_nonce());
    CHECK(s.req.type_url() == type);
    CHECK(s.req.version_info() == version);
    CHECK(s.req.response_nonce() == nonce);
    CHECK(names_of(s.req) == names);
    CHECK(s.req.has_error_detail() == nack);
}

}  // namespace

TEST_CASE("ads client: warming order, ACKs, NACK with the last accepted version, name lists, reconnect") {
    NamesHandler handler;
    ads::Client client(options(), handler);

    ScriptedStream s1;
    s1.responses.push_back(response(ads::kClusterType, "c1", "n1", {"outbound|80||b", "outbound|80||a"}));
    s1.responses.push_back(response(ads::kEndpointType, "e1", "n2", {"outbound|80||a", "outbound|80||b"}));
    s1.responses.push_back(response(ads::kListenerType, "l1", "n3", {"80", "9000", "80"}));
    s1.responses.push_back(response(ads::kRouteType, "r1", "n4", {"80", "9000"}));
    // A CDS push with one bad cluster: a and c are applied, bad-x is not; EDS follows a and c.
    s1.responses.push_back(
        response(ads::kClusterType, "c2", "n5", {"outbound|80||a", "bad-x", "outbound|80||c"}));
    // A type never asked for: ignored, not answered (an answer would subscribe to it).
    s1.responses.push_back(
        response("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "s1", "n6", {"x"}));
    // Every cluster gone: EDS is unsubscribed with an empty list.
    s1.responses.push_back(response(ads::kClusterType, "c3", "n7", {}));
    CHECK(client.serve(s1));
    CHECK(handler.connections == 1);

    const auto& w = s1.sent;
    REQUIRE(w.size() == 12);
    // A first connect asks for CDS alone, with the node.
    expect(w[0], ads::kClusterType, "", "", {});
    CHECK(w[0].after_reads == 0);
    CHECK(w[0].req.node().id() == options().node_id);
    const auto& md = w[0].req.node().metadata().fields();
    CHECK(md.at("NAMESPACE").string_value() == "kmesh-system");
    CHECK(md.at("INSTANCE_IPS").string_value() == "10.0.0.1");
    CHECK(md.at("LABELS").struct_value().fields().at("app").string_value() == "kmesh");
    CHECK(w[0].req.node().locality().zone() == "z1");
    for (size_t i = 1; i < w.size(); i++) CHECK_FALSE(w[i].req.has_node());
    // CDS applied: ACK, then EDS for the clusters (sorted, once each), then LDS (wildcard).
    expect(w[1], ads::kClusterType, "c1", "n1", {});
    expect(w[2], ads::kEndpointType, "", "", {"outbound|80||a", "outbound|80||b"});
    expect(w[3], ads::kListenerType, "", "", {});
    CHECK(w[3].after_reads == 1);
    // EDS ACK repeats the names it holds.
    expect(w[4], ads::kEndpointType, "e1", "n2", {"outbound|80||a", "outbound|80||b"});
    // LDS applied: ACK, then RDS for the route names (deduplicated).
    expect(w[5], ads::kListenerType, "l1", "n3", {});
    expect(w[6], ads::kRouteType, "", "", {"80", "9000"});
    expect(w[7], ads::kRouteType, "r1", "n4", {"80", "9000"});
    // The NACK: the last accepted version c1, this response's nonce, the reason; then EDS with
    // the new list, EDS's own version and its last nonce. LDS is not asked for again.
    expect(w[8], ads::kClusterType, "c1", "n5", {}, true);
    CHECK(w[8].req.error_detail().message().find("bad-x") != std::string::npos);
    CHECK(w[8].req.error_detail().code() == 3);  // INVALID_ARGUMENT
    expect(w[9], ads::kEndpointType, "e1", "n2", {"outbound|80||a", "outbound|80||c"});
    // The Secret is not answered: next comes the ACK of c3, then EDS unsubscribed.
    expect(w[10], ads::kClusterType, "c3", "n7", {});
    CHECK(w[10].after_reads == 7);
    expect(w[11], ads::kEndpointType, "e1", "n2", {});

    auto st = client.status();
    CHECK(st.acks == 5);
    CHECK(st.nacks == 1);
    CHECK(st.last_nack.find("bad-x") != std::string::npos);
    CHECK(st.versions.at(ads::kClusterType) == "c3");

    // Reconnect: the new stream asks for every type at once with the versions accepted and the
    // names held, nonces empty (nonces belong to a stream), the node on the first request only.
    handler.clusters = {"outbound|80||a"};
    ScriptedStream s2;
    CHECK_FALSE(client.serve(s2));  // istiod sent nothing
    REQUIRE(s2.sent.size() == 4);
    expect(s2.sent[0], ads::kClusterType, "c3", "", {});
    CHECK(s2.sent[0].req.node().id() == options().node_id);
    expect(s2.sent[1], ads::kEndpointType, "e1", "", {"outbound|80||a"});
    expect(s2.sent[2], ads::kListenerType, "l1", "", {});
    expect(s2.sent[3], ads::kRouteType, "r1", "", {"80", "9000"});
    for (size_t i = 1; i < 4; i++) CHECK_FALSE(s2.sent[i].req.has_node());
}

TEST_CASE("ads client: a first connect with no clusters asks for LDS but not for EDS") {
    NamesHandler handler;
    ads::Client client(options(), handler);
    ScriptedStream s;
    s.responses.push_back(response(ads::kClusterType, "c1", "n1", {}));
    s.responses.push_back(response(ads::kListenerType, "l1", "n2", {}));
    CHECK(client.serve(s));
    REQUIRE(s.sent.size() == 4);
    expect(s.sent[0], ads::kClusterType, "", "", {});
    expect(s.sent[1], ads::kClusterType, "c1", "n1", {});
    expect(s.sent[2], ads::kListenerType, "", "", {});
    expect(s.sent[3], ads::kListenerType, "l1", "n2", {});
}
