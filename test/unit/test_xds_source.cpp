// xds::Client and xds::Source against a scripted istiod stream: what the agent says on the wire
// (node, subscriptions, nonces, ACK/NACK with error_detail, initial_resource_versions on reconnect)
// and what it does with the resources (apply, remove, keep the last good state of rejected ones,
// across a restart too). The oracle is the proto on the wire and the maps read back as BPF would.
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <set>

#include "agent/src/dataplane/map_writer.hpp"
#include "agent/src/sources/xds/client.hpp"
#include "agent/src/sources/xds/source.hpp"
#include "fake_map_ops.hpp"
#include "istio/workload/workload.pb.h"

using namespace kmesh;
using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;

namespace {

const std::string kEcho = "default/echo.default.svc.cluster.local";
const std::string kOther = "default/other.default.svc.cluster.local";

// istiod, scripted: hands out the responses in order, then ends the stream; records every request.
class ScriptedStream : public xds::DeltaStream {
  public:
    std::deque<DeltaDiscoveryResponse> responses;
    std::vector<DeltaDiscoveryRequest> requests;
    bool write(const DeltaDiscoveryRequest& r) override {
        requests.push_back(r);
        return true;
    }
    bool read(DeltaDiscoveryResponse* r) override {
        if (responses.empty()) return false;
        *r = responses.front();
        responses.pop_front();
        return true;
    }
};

std::string raw(std::initializer_list<uint8_t> bytes) { return std::string(bytes.begin(), bytes.end()); }

istio::workload::Address service(const std::string& host, std::initializer_list<uint8_t> vip,
                                 uint32_t target = 8080) {
    istio::workload::Address a;
    auto* s = a.mutable_service();
    s->set_name(host);
    s->set_namespace_("default");
    s->set_hostname(host + ".default.svc.cluster.local");
    s->add_addresses()->set_address(raw(vip));
    auto* p = s->add_ports();
    p->set_service_port(80);
    p->set_target_port(target);
    return a;
}

// Serves svc's port 80 on its own port (the resolved named port) when given one.
istio::workload::Address workload(const std::string& name, std::initializer_list<uint8_t> ip,
                                  const std::string& svc, uint32_t own_port = 0) {
    istio::workload::Address a;
    auto* w = a.mutable_workload();
    w->set_uid("Kubernetes//Pod/default/" + name);
    w->set_name(name);
    w->set_namespace_("default");
    w->add_addresses(raw(ip));
    auto& list = (*w->mutable_services())[svc];
    if (own_port) {
        auto* p = list.add_ports();
        p->set_service_port(80);
        p->set_target_port(own_port);
    }
    return a;
}

void add(DeltaDiscoveryResponse& r, const std::string& name, const istio::workload::Address& a,
         const std::string& version = "v1") {
    auto* res = r.add_resources();
    res->set_name(name);
    res->set_version(version);
    res->mutable_resource()->set_type_url(xds::kAddressType);
    res->mutable_resource()->set_value(a.SerializeAsString());
}

DeltaDiscoveryResponse response(const std::string& type, const std::string& nonce) {
    DeltaDiscoveryResponse r;
    r.set_type_url(type);
    r.set_nonce(nonce);
    return r;
}

std::string uid(const std::string& name) { return "Kubernetes//Pod/default/" + name; }

// A node's agent over fake maps: MeshState -> diff -> MapWriter, as Agent::sync_maps does it.
struct Node {
    test::FakeMapOps& ops;
    Metrics metrics;
    std::mutex mu;
    MeshState mesh;
    MapWriter writer;
    xds::Source source;
    std::vector<std::string> errors;

    explicit Node(test::FakeMapOps& o)
        : ops(o), writer(o, recover_map_state(o), MapCapacity{}, metrics), source(mesh, mu, [this] {
              auto e = writer.apply(diff(writer.state(), mesh.desired(), mesh.take_dirty()));
              if (!e.empty()) errors.push_back(e);
              return e.empty();
          }) {
        mesh.mark_all_dirty();  // like a (re)started agent: the first plan compares everything
    }
};

// Where a connect() to vip:port goes, read from the maps as the BPF program reads them: every
// IPv4 endpoint's "address:port" (empty: no frontend, the connect passes untouched).
std::set<std::string> connects(const test::FakeMapOps& ops, const std::string& vip, uint16_t port) {
    std::set<std::string> out;
    kmesh_frontend_key fk{};
    std::memcpy(fk.addr, IpAddr::parse(vip)->bytes.data(), 16);
    fk.port = htons(port);
    kmesh_frontend_value fe;
    if (!ops.get(MapId::kFrontend, fk, &fe)) return out;
    kmesh_service_value sv;
    if (!ops.get(MapId::kService, fe.service_id, &sv)) return {"(no service)"};
    for (uint32_t prio = 0; prio < KMESH_PRIO_COUNT; prio++)
        for (uint32_t i = 1; i <= sv.endpoint_count[KMESH_FAMILY_V4][prio]; i++) {
            kmesh_endpoint_value ev;
            kmesh_backend_value bv;
            kmesh_endpoint_key ek{fe.service_id, KMESH_FAMILY_V4, static_cast<uint16_t>(prio), i};
            if (!ops.get(MapId::kEndpoint, ek, &ev) || !ops.get(MapId::kBackend, ev.backend_id, &bv)) {
                out.insert("(broken)");
                continue;
            }
            uint16_t target = fe.target_port;
            kmesh_port_value pv;
            if (fe.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS &&
                ops.get(MapId::kPort, kmesh_port_key{ev.backend_id, fe.service_id, fk.port, 0}, &pv))
                target = pv.target_port;
            IpAddr a;
            std::memcpy(a.bytes.data(), bv.addr4, 16);
            out.insert(a.str() + ":" + std::to_string(ntohs(target)));
        }
    return out;
}

xds::ClientOptions options() {
    xds::ClientOptions o;
    o.address = "unused:0";
    o.node_id = "ztunnel~10.0.0.1~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local";
    o.node_metadata = {{"NODE_NAME", "node-1"}, {"CLUSTER_ID", "Kubernetes"}};
    return o;
}

}  // namespace

TEST_CASE("xds client: subscribes with the node on the first request only, answers every nonce") {
    test::FakeMapOps ops;
    Node node(ops);
    xds::Client client(options(), node.source);

    ScriptedStream istiod;
    auto r1 = response(xds::kAddressType, "n1");
    add(r1, kEcho, service("echo", {10, 96, 0, 10}));
    add(r1, uid("a"), workload("a", {10, 0, 0, 1}, kEcho));
    istio::workload::Address bad = workload("bad", {10, 0, 0, 9}, kEcho);
    bad.mutable_workload()->set_addresses(0, raw({1, 2, 3, 4, 5}));
    add(r1, uid("bad"), bad);
    istio::workload::Address nameless = workload("nameless", {10, 0, 0, 8}, kEcho);
    nameless.mutable_workload()->clear_uid();
    add(r1, "", nameless);
    istiod.responses.push_back(r1);

    auto r2 = response(xds::kAuthorizationType, "n2");
    for (auto [name, action] : {std::pair{"good", 0}, std::pair{"odd", 9}}) {
        istio::security::Authorization p;
        p.set_name(name);
        p.set_namespace_("default");
        p.set_action(static_cast<istio::security::Action>(action));
        auto* res = r2.add_resources();
        res->set_name(std::string("default/") + name);
        res->set_version("p1");
        res->mutable_resource()->set_type_url(xds::kAuthorizationType);
        res->mutable_resource()->set_value(p.SerializeAsString());
    }
    istiod.responses.push_back(r2);

    auto r3 = response(xds::kAddressType, "n3");
    r3.add_removed_resources(uid("a"));
    add(r3, uid("b"), workload("b", {10, 0, 0, 2}, kEcho), "v2");
    istiod.responses.push_back(r3);

    CHECK(client.serve(istiod));
    REQUIRE(istiod.requests.size() == 5);  // two subscriptions, three answers

    const auto& sub1 = istiod.requests[0];
    CHECK(sub1.type_url() == xds::kAddressType);
    CHECK(sub1.node().id() == options().node_id);
    CHECK(sub1.node().metadata().fields().at("NODE_NAME").string_value() == "node-1");
    CHECK(sub1.initial_resource_versions().empty());
    const auto& sub2 = istiod.requests[1];
    CHECK(sub2.type_url() == xds::kAuthorizationType);
    CHECK_FALSE(sub2.has_node());
    CHECK(sub2.resource_names_subscribe().empty());  // wildcard

    const auto& a1 = istiod.requests[2];
    CHECK(a1.response_nonce() == "n1");
    CHECK(a1.type_url() == xds::kAddressType);
    REQUIRE(a1.has_error_detail());
    CHECK(a1.error_detail().code() == 3);  // INVALID_ARGUMENT
    CHECK(a1.error_detail().message() ==
          "Kubernetes//Pod/default/bad: workload address is 5 bytes; an IP address is 4 or 16; "
          "(resource with an empty name): workload 'default/nameless' has an empty uid");
    const auto& a2 = istiod.requests[3];
    CHECK(a2.response_nonce() == "n2");
    CHECK(a2.error_detail().message() == "default/odd: action has the unknown value 9");
    const auto& a3 = istiod.requests[4];
    CHECK(a3.response_nonce() == "n3");
    CHECK_FALSE(a3.has_error_detail());  // ACK
    CHECK_FALSE(a3.has_node());

    CHECK(client.status().acks == 1);
    CHECK(client.status().nacks == 2);
    CHECK(node.mesh.model().workloads.count(uid("a")) == 0);  // removed
    CHECK(node.mesh.model().workloads.count(uid("b")) == 1);
    CHECK(node.mesh.model().workloads.count(uid("bad")) == 0);
    CHECK(node.source.policies().count("default/good") == 1);
    CHECK(node.source.policies().count("default/odd") == 0);
    CHECK(connects(ops, "10.96.0.10", 80) == std::set<std::string>{"10.0.0.2:8080"});

    // Reconnect: the versions held go out as initial_resource_versions, rejected ones with the
    // version that was rejected (so istiod reports their removal); removed ones not at all.
    ScriptedStream again;
    CHECK_FALSE(client.serve(again));
    REQUIRE(again.requests.size() == 2);
    CHECK(again.requests[0].node().id() == options().node_id);
    CHECK_FALSE(again.requests[1].has_node());
    const auto& held = again.requests[0].initial_resource_versions();
    CHECK(held.size() == 3);
    CHECK(held.at(kEcho) == "v1");
    CHECK(held.at(uid("b")) == "v2");
    CHECK(held.at(uid("bad")) == "v1");
    CHECK(held.count(uid("a")) == 0);
    const auto& held_policies = again.requests[1].initial_resource_versions();
    CHECK(held_policies.size() == 2);
    CHECK(held_policies.at("default/good") == "p1");
    CHECK(held_policies.at("default/odd") == "p1");
}

TEST_CASE("xds source: a rejected update keeps the resource's last good state") {
    test::FakeMapOps ops;
    Node node(ops);
    auto r1 = response(xds::kAddressType, "n1");
    add(r1, kEcho, service("echo", {10, 96, 0, 10}));
    add(r1, uid("a"), workload("a", {10, 0, 0, 1}, kEcho));
    CHECK(node.source.on_response(r1).empty());
    auto r2 = response(xds::kAddressType, "n2");
    auto bad = service("echo", {10, 96, 0, 10});
    bad.mutable_service()->mutable_load_balancing()->set_mode(
        static_cast<istio::workload::LoadBalancing::Mode>(77));
    add(r2, kEcho, bad, "v2");
    CHECK(node.source.on_response(r2) ==
          std::vector<std::string>{kEcho + ": load_balancing.mode has the unknown value 77"});
    CHECK(connects(ops, "10.96.0.10", 80) == std::set<std::string>{"10.0.0.1:8080"});
    CHECK(node.source.versions(xds::kAddressType).at(kEcho) == "v1");  // asked for again on reconnect
}

TEST_CASE("xds source: a consumed response applies as the same response does, and frees its resources") {
    // The oracle is the non-consuming path on a copy, over its own fake maps.
    auto r = response(xds::kAddressType, "n1");
    add(r, kEcho, service("echo", {10, 96, 0, 10}));
    add(r, uid("a"), workload("a", {10, 0, 0, 1}, kEcho), "v7");
    add(r, uid("b"), workload("b", {10, 0, 0, 2}, kEcho));
    auto bad = service("other", {10, 96, 0, 11});
    bad.mutable_service()->mutable_load_balancing()->set_mode(
        static_cast<istio::workload::LoadBalancing::Mode>(77));
    add(r, kOther, bad);
    r.add_removed_resources(uid("gone"));
    const DeltaDiscoveryResponse copy = r;

    test::FakeMapOps ops_copy, ops_consumed;
    Node by_copy(ops_copy), consumed(ops_consumed);
    auto expected = by_copy.source.on_response(copy);
    CHECK(expected.size() == 1);
    CHECK(consumed.source.consume_response(r) == expected);
    CHECK(connects(ops_consumed, "10.96.0.10", 80) ==
          std::set<std::string>{"10.0.0.1:8080", "10.0.0.2:8080"});
    CHECK(connects(ops_consumed, "10.96.0.10", 80) == connects(ops_copy, "10.96.0.10", 80));
    CHECK(consumed.source.versions(xds::kAddressType) == by_copy.source.versions(xds::kAddressType));
    CHECK(consumed.source.versions(xds::kAddressType).at(uid("a")) == "v7");
    CHECK(consumed.source.rejected(xds::kAddressType) == by_copy.source.rejected(xds::kAddressType));
    // Every resource's strings were handed back; the count and the response's own fields stay.
    REQUIRE(r.resources_size() == 4);
    for (const auto& res : r.resources()) {
        CHECK(res.name().empty());
        CHECK(res.version().empty());
        CHECK(res.resource().value().empty());
        CHECK(res.resource().type_url().empty());
    }
    CHECK(r.nonce() == "n1");
    CHECK(r.removed_resources_size() == 1);
}

TEST_CASE("xds source: a consumed response longer than a chunk applies as the same response does") {
    // Handled resources leave the response every kConsumeChunk: what comes after (a later
    // version of an earlier name, a rejected resource, removals) must apply as on the copy.
    const int n = 2 * xds::Source::kConsumeChunk + 5;
    auto r = response(xds::kAddressType, "n1");
    add(r, kEcho, service("echo", {10, 96, 0, 10}));
    for (int i = 0; i < n; i++)
        add(r, uid("w" + std::to_string(i)),
            workload("w" + std::to_string(i),
                     {10, 1, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i & 0xff)}, kEcho));
    // w3 again after the first chunk went: the later one (other address, v9) wins.
    add(r, uid("w3"), workload("w3", {10, 2, 0, 3}, kEcho), "v9");
    auto bad = service("other", {10, 96, 0, 11});
    bad.mutable_service()->mutable_load_balancing()->set_mode(
        static_cast<istio::workload::LoadBalancing::Mode>(77));
    add(r, kOther, bad);
    r.add_removed_resources(uid("w5"));
    const DeltaDiscoveryResponse copy = r;

    test::FakeMapOps ops_copy, ops_consumed;
    Node by_copy(ops_copy), consumed(ops_consumed);
    auto expected = by_copy.source.on_response(copy);
    CHECK(expected.size() == 1);
    CHECK(consumed.source.consume_response(r) == expected);
    CHECK(consumed.mesh.model() == by_copy.mesh.model());
    CHECK(consumed.mesh.model().workloads.size() == static_cast<size_t>(n - 1));
    CHECK(consumed.mesh.model().workloads.at(uid("w3")).addresses ==
          decltype(Workload::addresses){*IpAddr::parse("10.2.0.3")});
    CHECK(!consumed.mesh.model().workloads.count(uid("w5")));
    CHECK(consumed.source.versions(xds::kAddressType) == by_copy.source.versions(xds::kAddressType));
    CHECK(consumed.source.versions(xds::kAddressType).at(uid("w3")) == "v9");
    CHECK(consumed.source.rejected(xds::kAddressType) == by_copy.source.rejected(xds::kAddressType));
    CHECK(consumed.errors.empty());
    CHECK(connects(ops_consumed, "10.96.0.10", 80) == connects(ops_copy, "10.96.0.10", 80));
    // Only the last, partial chunk of emptied resources is left.
    CHECK(r.resources_size() == (n + 3) % xds::Source::kConsumeChunk);
    CHECK(r.nonce() == "n1");
    CHECK(r.removed_resources_size() == 1);
}

TEST_CASE("xds source: after a restart, resources istiod now sends in a rejected form keep their maps") {
    test::FakeMapOps ops;
    {
        Node first(ops);
        auto r = response(xds::kAddressType, "n1");
        add(r, kEcho, service("echo", {10, 96, 0, 10}, 0));  // a named port: a's own 8081
        add(r, kOther, service("other", {10, 96, 0, 11}));
        add(r, uid("a"), workload("a", {10, 0, 0, 1}, kEcho, 8081));
        add(r, uid("o"), workload("o", {10, 0, 0, 5}, kOther));
        add(r, uid("p"), workload("p", {10, 0, 0, 6}, kOther));
        REQUIRE(first.source.on_response(r).empty());
        REQUIRE(first.errors.empty());
    }
    REQUIRE(connects(ops, "10.96.0.10", 80) == std::set<std::string>{"10.0.0.1:8081"});
    REQUIRE(connects(ops, "10.96.0.11", 80) == std::set<std::string>{"10.0.0.5:8080", "10.0.0.6:8080"});

    // A new agent: empty model, the maps recovered. istiod's first response has the service echo
    // and the workload o in forms this agent refuses; the rest is fine.
    Node second(ops);
    auto r = response(xds::kAddressType, "n1");
    auto bad_svc = service("echo", {10, 96, 0, 10}, 0);
    bad_svc.mutable_service()->mutable_load_balancing()->set_mode(
        static_cast<istio::workload::LoadBalancing::Mode>(77));
    add(r, kEcho, bad_svc, "v2");
    add(r, kOther, service("other", {10, 96, 0, 11}));
    add(r, uid("a"), workload("a", {10, 0, 0, 1}, kEcho, 8081));
    auto bad_wl = workload("o", {10, 0, 0, 5}, kOther);
    bad_wl.mutable_workload()->set_status(static_cast<istio::workload::WorkloadStatus>(7));
    add(r, uid("o"), bad_wl, "v2");
    add(r, uid("p"), workload("p", {10, 0, 0, 6}, kOther));
    CHECK(second.source.on_response(r).size() == 2);
    CHECK(second.errors.empty());
    CHECK(connects(ops, "10.96.0.10", 80) == std::set<std::string>{"10.0.0.1:8081"});
    CHECK(connects(ops, "10.96.0.11", 80) == std::set<std::string>{"10.0.0.5:8080", "10.0.0.6:8080"});
    CHECK(ops.check_connect_invariant() == "");

    // Another workload joins other: the kept workload stays beside it.
    auto r2 = response(xds::kAddressType, "n2");
    add(r2, uid("q"), workload("q", {10, 0, 0, 7}, kOther));
    CHECK(second.source.on_response(r2).empty());
    CHECK(connects(ops, "10.96.0.11", 80) ==
          std::set<std::string>{"10.0.0.5:8080", "10.0.0.6:8080", "10.0.0.7:8080"});

    // The rejected workload comes back valid, elsewhere; the rejected service is removed.
    auto r3 = response(xds::kAddressType, "n3");
    add(r3, uid("o"), workload("o", {10, 0, 0, 55}, kOther), "v3");
    r3.add_removed_resources(kEcho);
    CHECK(second.source.on_response(r3).empty());
    CHECK(second.errors.empty());
    CHECK(connects(ops, "10.96.0.10", 80).empty());  // no frontend: the connect passes untouched
    CHECK(connects(ops, "10.96.0.11", 80) ==
          std::set<std::string>{"10.0.0.55:8080", "10.0.0.6:8080", "10.0.0.7:8080"});
    CHECK(ops.check_connect_invariant() == "");
    CHECK(ops.size(MapId::kService) == 1);  // echo's entry went with it
    CHECK(ops.size(MapId::kPort) == 0);     // and a's override for it
}

TEST_CASE("xds source: a kept workload's own target port keeps working beside workloads without one") {
    test::FakeMapOps ops;
    auto first_response = [] {
        auto r = response(xds::kAddressType, "n1");
        add(r, kEcho, service("echo", {10, 96, 0, 10}, 0));  // named port
        add(r, uid("o"), workload("o", {10, 0, 0, 5}, kEcho, 9001));
        add(r, uid("p"), workload("p", {10, 0, 0, 6}, kEcho, 80));  // the service port: no override
        return r;
    };
    {
        Node first(ops);
        REQUIRE(first.source.on_response(first_response()).empty());
    }
    REQUIRE(connects(ops, "10.96.0.10", 80) == std::set<std::string>{"10.0.0.5:9001", "10.0.0.6:80"});
    Node second(ops);
    auto r = first_response();
    auto bad = workload("o", {10, 0, 0, 5}, kEcho, 9001);
    bad.mutable_workload()->set_network_mode(static_cast<istio::workload::NetworkMode>(5));
    r.mutable_resources(1)->mutable_resource()->set_value(bad.SerializeAsString());
    CHECK(second.source.on_response(r) ==
          std::vector<std::string>{uid("o") + ": network_mode has the unknown value 5"});
    CHECK(connects(ops, "10.96.0.10", 80) == std::set<std::string>{"10.0.0.5:9001", "10.0.0.6:80"});
}

namespace {

void add_policy(DeltaDiscoveryResponse& r, const istio::security::Authorization& p,
                const std::string& version) {
    auto* res = r.add_resources();
    res->set_name(p.namespace_() + "/" + p.name());
    res->set_version(version);
    res->mutable_resource()->set_type_url(xds::kAuthorizationType);
    res->mutable_resource()->set_value(p.SerializeAsString());
}

istio::security::Authorization deny_port(uint32_t port) {
    istio::security::Authorization p;
    p.set_name("deny-port");
    p.set_namespace_("default");
    p.set_scope(istio::security::NAMESPACE);
    p.set_action(istio::security::DENY);
    p.add_rules()->add_clauses()->add_matches()->add_destination_ports(port);
    return p;
}

}  // namespace

TEST_CASE("xds source: authorization policies live in the model; a bad update keeps the last good; removal") {
    test::FakeMapOps ops;
    Node node(ops);
    auto r0 = response(xds::kAddressType, "n0");
    add(r0, uid("a"), workload("a", {10, 0, 0, 1}, kEcho));
    CHECK(node.source.on_response(r0).empty());

    auto r1 = response(xds::kAuthorizationType, "n1");
    add_policy(r1, deny_port(80), "v1");
    CHECK(node.source.on_response(r1).empty());
    {
        std::lock_guard lock(node.mu);
        const auto& pols = node.mesh.model().policies;
        REQUIRE(pols.count("default/deny-port") == 1);
        const AuthzPolicy& p = pols.at("default/deny-port");
        CHECK(p.action == AuthzAction::kDeny);
        CHECK(p.scope == AuthzScope::kNamespace);
        CHECK(p.rules.at(0).clauses.at(0).matches.at(0).destination_ports == std::vector<uint16_t>{80});
    }
    uint64_t v1 = node.mesh.policies_version();

    // Changed: the model follows.
    auto r2 = response(xds::kAuthorizationType, "n2");
    add_policy(r2, deny_port(81), "v2");
    CHECK(node.source.on_response(r2).empty());
    CHECK(node.mesh.model()
              .policies.at("default/deny-port")
              .rules.at(0)
              .clauses.at(0)
              .matches.at(0)
              .destination_ports == std::vector<uint16_t>{81});
    CHECK(node.mesh.policies_version() > v1);

    // Refused (port out of range): NACK, the last good policy stays, its version too.
    auto r3 = response(xds::kAuthorizationType, "n3");
    add_policy(r3, deny_port(70000), "v3");
    CHECK(node.source.on_response(r3) ==
          std::vector<std::string>{
              "default/deny-port: destination_ports: destination port 70000 out of range"});
    CHECK(node.mesh.model()
              .policies.at("default/deny-port")
              .rules.at(0)
              .clauses.at(0)
              .matches.at(0)
              .destination_ports == std::vector<uint16_t>{81});
    CHECK(node.source.versions(xds::kAuthorizationType).at("default/deny-port") == "v2");

    // Removed: gone from the model, and from the versions sent on reconnect.
    auto r4 = response(xds::kAuthorizationType, "n4");
    r4.add_removed_resources("default/deny-port");
    CHECK(node.source.on_response(r4).empty());
    CHECK(node.mesh.model().policies.empty());
    CHECK(node.source.versions(xds::kAuthorizationType).empty());
    // The workloads were untouched by all this.
    CHECK(node.mesh.model().workloads.count(uid("a")) == 1);
}

namespace {

// The response's bytes cut into `size`-byte chunks, as gRPC hands over its slices: fields and
// resources straddle chunk boundaries.
xds::WireResponse wire(const DeltaDiscoveryResponse& r, size_t size) {
    std::string bytes = r.SerializeAsString();
    xds::WireResponse w;
    for (size_t at = 0; at < bytes.size(); at += size) w.chunks.emplace_back(bytes.substr(at, size));
    REQUIRE(xds::scan(w));
    return w;
}

bool all_released(const xds::WireResponse& w) {
    for (const auto& c : w.chunks)
        if (c.size()) return false;
    return true;
}

// A response of n workloads in a few services, with what the handler must refuse or resolve on
// the way: a later version of an earlier name, a bad service, a name that does not match its
// resource, a resource of the wrong type, removals.
DeltaDiscoveryResponse mixed_response(int n) {
    auto r = response(xds::kAddressType, "n1");
    add(r, kEcho, service("echo", {10, 96, 0, 10}));
    for (int i = 0; i < n; i++) {
        add(r, uid("w" + std::to_string(i)),
            workload("w" + std::to_string(i),
                     {10, 1, static_cast<uint8_t>(i >> 8), static_cast<uint8_t>(i & 0xff)},
                     i % 3 ? kEcho : kOther),
            "v" + std::to_string(i % 5));
        if (i == n / 2) add(r, kOther, service("other", {10, 96, 0, 11}));
    }
    add(r, uid("w3"), workload("w3", {10, 2, 0, 3}, kEcho), "v9");
    auto bad = service("bad", {10, 96, 0, 12});
    bad.mutable_service()->mutable_load_balancing()->set_mode(
        static_cast<istio::workload::LoadBalancing::Mode>(77));
    add(r, "default/bad.default.svc.cluster.local", bad);
    add(r, uid("misnamed"), workload("other-name", {10, 3, 0, 1}, kEcho));
    auto* wrong = r.add_resources();
    wrong->set_name(uid("wrong-type"));
    wrong->mutable_resource()->set_type_url(xds::kAuthorizationType);
    r.add_removed_resources(uid("w5"));
    r.add_removed_resources(uid("never-there"));
    return r;
}

// Applies `r` through the parsed, single-threaded path (the oracle) and through the bytes, and
// compares all the handler leaves behind.
void check_wire_matches_parsed(const DeltaDiscoveryResponse& r, size_t chunk, bool expect_rejects) {
    test::FakeMapOps ops_parsed, ops_wire;
    Node parsed(ops_parsed), walked(ops_wire);
    auto expected = parsed.source.on_response(r);
    CHECK(expected.empty() != expect_rejects);
    auto w = wire(r, chunk);
    CHECK(walked.source.consume_wire(w) == expected);
    CHECK(all_released(w));
    CHECK(walked.mesh.model() == parsed.mesh.model());
    CHECK(walked.source.versions(r.type_url()) == parsed.source.versions(r.type_url()));
    CHECK(walked.source.rejected(r.type_url()) == parsed.source.rejected(r.type_url()));
    CHECK(walked.errors.empty());
    CHECK(connects(ops_wire, "10.96.0.10", 80) == connects(ops_parsed, "10.96.0.10", 80));
    CHECK(connects(ops_wire, "10.96.0.11", 80) == connects(ops_parsed, "10.96.0.11", 80));
}

}  // namespace

TEST_CASE("xds source: a response walked from its bytes applies as the parsed one does (one thread)") {
    auto r = mixed_response(40);
    REQUIRE(r.resources_size() < xds::Source::kPipelineMin);
    for (size_t chunk : {size_t{1}, size_t{7}, size_t{64}, size_t{1} << 20}) {
        CAPTURE(chunk);
        check_wire_matches_parsed(r, chunk, true);
    }
}

TEST_CASE("xds source: a response walked from its bytes applies as the parsed one does (decoding thread)") {
    auto r = mixed_response(xds::Source::kPipelineMin + 700);
    REQUIRE(r.resources_size() >= xds::Source::kPipelineMin);
    check_wire_matches_parsed(r, 8192, true);
    check_wire_matches_parsed(r, 13, true);
}

TEST_CASE("xds source: authorization responses walked from their bytes apply as parsed ones do") {
    auto r = response(xds::kAuthorizationType, "n1");
    add_policy(r, deny_port(80), "v1");
    check_wire_matches_parsed(r, 5, false);
    auto bad = response(xds::kAuthorizationType, "n2");
    add_policy(bad, deny_port(70000), "v3");
    check_wire_matches_parsed(bad, 5, true);
}

TEST_CASE("xds wire: removed names come out of any chunking as protobuf parses them, and are removed") {
    // Names of every length around the chunk sizes (empty, 1 byte, straddling, longer than a
    // chunk), each interleaved with resources; the oracle is protobuf's own parse of the bytes.
    std::mt19937 rng(12);
    auto r = response(xds::kAddressType, "n9");
    for (int i = 0; i < 40; i++) {
        std::string name(std::uniform_int_distribution<size_t>(0, 200)(rng), 'a');
        for (auto& c : name) c = static_cast<char>('a' + rng() % 26);
        if (i == 1) name.clear();
        r.add_removed_resources(i % 3 ? name : uid("w" + std::to_string(i / 3 % 6)));
        if (i % 10 == 0) add(r, kEcho, service("echo", {10, 96, 0, 10}));
    }
    DeltaDiscoveryResponse parsed;
    REQUIRE(parsed.ParseFromString(r.SerializeAsString()));
    std::vector<std::string> want(parsed.removed_resources().begin(), parsed.removed_resources().end());
    for (size_t chunk : {size_t{1}, size_t{3}, size_t{16}, size_t{64}, size_t{1} << 20}) {
        CAPTURE(chunk);
        auto w = wire(r, chunk);
        CHECK(w.removed.size() == want.size());
        CHECK(w.removed.to_vector() == want);
        // Applied: the named workloads present before are gone, as the parsed response does.
        test::FakeMapOps ops_parsed, ops_wire;
        Node by_parse(ops_parsed), by_wire(ops_wire);
        auto setup = response(xds::kAddressType, "n8");
        add(setup, kEcho, service("echo", {10, 96, 0, 10}));
        for (int i = 0; i < 6; i++)
            add(setup, uid("w" + std::to_string(i)),
                workload("w" + std::to_string(i), {10, 244, 0, uint8_t(i + 1)}, kEcho));
        REQUIRE(by_parse.source.on_response(setup).empty());
        REQUIRE(by_wire.source.on_response(setup).empty());
        CHECK(by_parse.mesh.model().workloads.size() == 6);
        by_parse.source.on_response(parsed);
        CHECK(by_wire.source.consume_wire(w) == std::vector<std::string>{});
        CHECK(by_wire.mesh.model() == by_parse.mesh.model());
        CHECK(by_wire.mesh.model().workloads.empty());
        CHECK(connects(ops_wire, "10.96.0.10", 80) == connects(ops_parsed, "10.96.0.10", 80));
    }
}

TEST_CASE("xds wire: scan reads the top-level fields; an undecodable resource is refused alone") {
    auto r = response(xds::kAddressType, "n7");
    r.set_system_version_info("sv");
    add(r, kEcho, service("echo", {10, 96, 0, 10}));
    r.add_removed_resources("x");
    std::string bytes = r.SerializeAsString();
    // A second resources entry (field 2, length-delimited) whose bytes are no Resource: a
    // length-delimited field 3 claiming 100 bytes where 2 follow.
    bytes += std::string("\x12\x04\x1a\x64\x61\x62", 6);
    xds::WireResponse w;
    w.chunks.emplace_back(bytes);
    REQUIRE(xds::scan(w));
    CHECK(w.type_url == xds::kAddressType);
    CHECK(w.nonce == "n7");
    CHECK(w.system_version_info == "sv");
    CHECK(w.removed.to_vector() == std::vector<std::string>{"x"});
    CHECK(w.resources == 2);
    test::FakeMapOps ops;
    Node node(ops);
    CHECK(node.source.consume_wire(w) ==
          std::vector<std::string>{
              "(resource with an empty name): cannot be decoded as an envoy.service.discovery.v3.Resource"});
    CHECK(connects(ops, "10.96.0.10", 80).empty());  // the service is there, with no endpoint yet
    CHECK(node.mesh.model().services.count(kEcho) == 1);

    // Framing that does not hold (a field cut short) is not a response at all.
    xds::WireResponse cut;
    cut.chunks.emplace_back(r.SerializeAsString().substr(0, 10));
    CHECK_FALSE(xds::scan(cut));
    xds::WireResponse garbage;
    garbage.chunks.emplace_back(std::string("\xff\xff\xff", 3));
    CHECK_FALSE(xds::scan(garbage));
}
