// Load balancing in the agent (docs/lb.md): weight -> slot counts, membership (km_member) writes
// and their order against endpoint slots, draining, service flags, and the two config sources.
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "agent/src/dataplane/map_writer.hpp"
#include "agent/src/sources/file/config_file.hpp"
#include "agent/src/sources/xds/convert.hpp"
#include "fake_map_ops.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

const std::string kEcho = "default/echo.default.svc.cluster.local";
const Dirty kAll{true, {}, {}};

struct Harness {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer{ops, MapState{}, MapCapacity{}, metrics};
    MeshState mesh;
    std::vector<std::string> violations;

    Harness() {
        // After every single map write: what a connect() (or a UDP reply check) may observe.
        ops.after_mutation = [this] {
            if (auto v = ops.check_connect_invariant(); !v.empty()) violations.push_back(v);
            if (auto v = ops.check_member_invariant(); !v.empty()) violations.push_back(v);
        };
    }
    std::string apply(const Model& m) {
        mesh.replace(m);
        std::string err = writer.apply(diff(writer.state(), mesh.desired(), mesh.take_dirty()));
        if (!err.empty()) mesh.mark_all_dirty();
        return err;
    }
    uint32_t service_id() const { return writer.state().services.at(name_hash(kEcho)).id; }
    uint32_t backend_id(const std::string& name) const {
        return writer.state().backends.at(name_hash("Kubernetes//Pod/default/" + name)).id;
    }
    // Slots per backend name in the kernel's IPv4 priority-0 list, read back from the fake maps.
    std::map<std::string, int> slots() {
        std::map<std::string, int> out;
        kmesh_service_value sv{};
        REQUIRE(ops.get(MapId::kService, service_id(), &sv));
        for (uint32_t i = 1; i <= sv.endpoint_count[KMESH_FAMILY_V4][0]; i++) {
            kmesh_endpoint_value ev;
            REQUIRE(ops.get(MapId::kEndpoint, kmesh_endpoint_key{service_id(), KMESH_FAMILY_V4, 0, i}, &ev));
            for (const char* n : {"a", "b", "c", "d"})
                if (writer.state().backends.count(name_hash(std::string("Kubernetes//Pod/default/") + n)) &&
                    ev.backend_id == backend_id(n))
                    out[n]++;
        }
        return out;
    }
    // km_member weight of a backend in the echo service, or -1 when it is no member.
    int member(const std::string& name) {
        kmesh_member_value mv;
        if (!ops.get(MapId::kMember, kmesh_member_key{service_id(), backend_id(name)}, &mv)) return -1;
        return static_cast<int>(mv.weight);
    }
};

Workload weighted(const std::string& name, const std::string& ip, uint32_t capacity) {
    Workload w = workload(name, {ip}, {"echo"});
    w.capacity = capacity;
    return w;
}

std::string mirror_mismatch(const MapWriter& w, const FakeMapOps& ops) {
    MapState k = recover_map_state(ops);
    for (const auto& [h, s] : w.state().services) {
        auto it = k.services.find(h);
        if (it == k.services.end()) return "service missing";
        if (it->second.members != s.members) return "members";
        if (it->second.slots != s.slots) return "slots";
        if (!(it->second.params() == s.params())) return "params";
    }
    return k.services.size() == w.state().services.size() ? "" : "service count";
}

}  // namespace

TEST_CASE("weight_slots: gcd, defaults, scaling to the slot budget") {
    const BackendSet ab{1, 2}, abc{1, 2, 3};
    CHECK(weight_slots(ab, {{1, 2}, {2, 6}}) == std::map<uint64_t, uint32_t>{{1, 1}, {2, 3}});
    CHECK(weight_slots(abc, {{1, 4}, {2, 4}, {3, 4}}) ==
          std::map<uint64_t, uint32_t>{{1, 1}, {2, 1}, {3, 1}});
    CHECK(weight_slots(ab, {}) == std::map<uint64_t, uint32_t>{{1, 1}, {2, 1}});  // unset: weight 1
    CHECK(weight_slots(abc, {{1, 6}, {2, 10}, {3, 15}}) ==
          std::map<uint64_t, uint32_t>{{1, 6}, {2, 10}, {3, 15}});  // gcd 1: as given
    // 1 : 1000 needs 1001 slots, over the budget of 256: scaled to the nearest, at least 1 each.
    auto big = weight_slots(ab, {{1, 1}, {2, 1000}});
    CHECK(big.at(1) == 1);
    CHECK(big.at(2) == 256);  // 1000 * 256 / 1001 = 255.74 -> 256
    uint32_t total = 0;
    for (auto [b, n] : weight_slots(abc, {{1, 1000}, {2, 2000}, {3, 3001}}, 60)) total += n;
    CHECK(total <= 60 + 3);  // rounding: at most half a slot per backend over the budget, plus the floors
    // More backends than the budget: never below one slot each, never scaled for equal weights.
    BackendSet many;
    for (uint64_t i = 1; i <= 300; i++) many.insert(i);
    auto m = weight_slots(many, {});
    CHECK(m.size() == 300);
    CHECK(std::all_of(m.begin(), m.end(), [](const auto& e) { return e.second == 1; }));
    CHECK(weight_slots({}, {}).empty());
}

TEST_CASE("weighted endpoints: slots follow capacity / gcd, members carry the weight") {
    Harness h;
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, weighted("a", "10.0.0.1", 2));
    add(m, weighted("b", "10.0.0.2", 6));
    REQUIRE(h.apply(m) == "");
    CHECK(h.violations.empty());
    CHECK(h.slots() == std::map<std::string, int>{{"a", 1}, {"b", 3}});
    CHECK(h.member("a") == 2);
    CHECK(h.member("b") == 6);
    CHECK(mirror_mismatch(h.writer, h.ops) == "");

    SUBCASE("a weight change adds or removes slots and rewrites the member") {
        m.workloads["Kubernetes//Pod/default/a"].capacity = 3;  // 3:6 -> 1:2
        REQUIRE(h.apply(m) == "");
        CHECK(h.slots() == std::map<std::string, int>{{"a", 1}, {"b", 2}});
        CHECK(h.member("a") == 3);
        m.workloads["Kubernetes//Pod/default/a"].capacity = 5;  // 5:6
        REQUIRE(h.apply(m) == "");
        CHECK(h.slots() == std::map<std::string, int>{{"a", 5}, {"b", 6}});
    }
    SUBCASE("capacity 0 drains: member with weight 0, no slot, backend kept") {
        m.workloads["Kubernetes//Pod/default/a"].capacity = 0;
        REQUIRE(h.apply(m) == "");
        CHECK(h.slots() == std::map<std::string, int>{{"b", 1}});  // 6 alone: gcd 6 -> 1 slot
        CHECK(h.member("a") == 0);
        CHECK(h.ops.size(MapId::kBackend) == 2);
        // And back: the drained workload returns without a new backend entry.
        m.workloads["Kubernetes//Pod/default/a"].capacity = 2;
        REQUIRE(h.apply(m) == "");
        CHECK(h.slots() == std::map<std::string, int>{{"a", 1}, {"b", 3}});
    }
    SUBCASE("a removed workload's member goes after its last slot; a removed service's with it") {
        m.workloads.erase("Kubernetes//Pod/default/b");
        h.ops.ops.clear();
        REQUIRE(h.apply(m) == "");
        // Last slot uncounted and deleted (the three of b), then the member, then the backend.
        auto first_member = std::find(h.ops.ops.begin(), h.ops.ops.end(), "del km_member");
        auto last_endpoint = std::find(h.ops.ops.rbegin(), h.ops.ops.rend(), "del km_endpoint");
        REQUIRE(first_member != h.ops.ops.end());
        REQUIRE(last_endpoint != h.ops.ops.rend());
        CHECK(first_member - h.ops.ops.begin() > h.ops.ops.rend() - last_endpoint - 1);
        CHECK(h.ops.ops.back() == "del km_backend");
        CHECK(h.ops.size(MapId::kMember) == 1);
        m.services.clear();
        REQUIRE(h.apply(m) == "");
        CHECK(h.ops.size(MapId::kMember) == 0);
        CHECK(h.ops.size(MapId::kEndpoint) == 0);
    }
    CHECK(h.violations.empty());
    CHECK(mirror_mismatch(h.writer, h.ops) == "");
}

TEST_CASE("members: written before the backend's first slot (stage order and op order)") {
    Harness h;
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, weighted("a", "10.0.0.1", 1));
    REQUIRE(h.apply(m) == "");
    add(m, weighted("b", "10.0.0.2", 2));
    h.ops.ops.clear();
    REQUIRE(h.apply(m) == "");
    std::vector<std::string> expected{"put km_backend", "put km_member", "put km_endpoint", "put km_endpoint",
                                      "put km_service"};
    CHECK(h.ops.ops == expected);
    std::vector<std::string> stages;
    for (Stage s : kStageOrder) stages.push_back(stage_name(s));
    CHECK(std::find(stages.begin(), stages.end(), "members") + 1 ==
          std::find(stages.begin(), stages.end(), "endpoints"));
}

TEST_CASE("members: a failing write or delete midway never leaves a slot without its member") {
    Model big;
    add(big, service("echo", {"10.96.0.10"}));
    add(big, service("b", {"10.96.0.2", "fd00::2"}));
    for (int i = 0; i < 5; i++) {
        Workload w = workload("w" + std::to_string(i),
                              {"10.0.1." + std::to_string(i + 1), "fd00::1:" + std::to_string(i + 1)},
                              {"echo", i % 2 ? "b" : "echo"});
        w.capacity = static_cast<uint32_t>(i % 3);  // 0 (draining), 1, 2
        add(big, w);
    }
    Model small = big;
    small.workloads.erase("Kubernetes//Pod/default/w1");
    small.workloads["Kubernetes//Pod/default/w2"].capacity = 0;
    small.workloads["Kubernetes//Pod/default/w3"].capacity = 7;
    small.services.erase("default/b.default.svc.cluster.local");
    for (bool removes : {false, true})
        for (int n = 0; n < 40; n++) {
            CAPTURE(removes);
            CAPTURE(n);
            Harness h;
            REQUIRE(h.apply(big) == "");
            removes ? h.ops.fail_nth_remove(n) : h.ops.fail_nth_update(n);
            h.apply(small);
            CHECK(h.violations.empty());
            CHECK(mirror_mismatch(h.writer, h.ops) == "");
            h.ops.fail_nth_update(-1);
            h.ops.fail_nth_remove(-1);
            CHECK(h.apply(small) == "");
            CHECK(h.violations.empty());
            CHECK(diff(h.writer.state(), build_desired(small), kAll).empty());
            CHECK(mirror_mismatch(h.writer, h.ops) == "");
        }
}

TEST_CASE("members and service flags survive a restart: recovery rewrites nothing") {
    Harness h;
    Model m;
    Service s = service("echo", {"10.96.0.10"});
    s.round_robin = true;
    s.affinity_timeout = 30;
    add(m, s);
    add(m, weighted("a", "10.0.0.1", 0));
    add(m, weighted("b", "10.0.0.2", 4));
    add(m, weighted("c", "10.0.0.3", 6));
    REQUIRE(h.apply(m) == "");
    kmesh_service_value sv{};
    REQUIRE(h.ops.get(MapId::kService, h.service_id(), &sv));
    CHECK(sv.flags == (KMESH_SERVICE_ROUND_ROBIN | KMESH_SERVICE_AFFINITY));
    CHECK(sv.affinity_timeout == 30);
    CHECK(sv.endpoint_count[KMESH_FAMILY_V4][0] == 5);  // 4:6 -> 2:3

    Metrics metrics;
    MapWriter restarted(h.ops, recover_map_state(h.ops), MapCapacity{}, metrics);
    CHECK(diff(restarted.state(), build_desired(m), kAll).empty());
    // A stray member (unknown service id) is dropped by the next apply.
    kmesh_member_key stray{999, 1};
    kmesh_member_value one{1, 0};
    h.ops.after_mutation = nullptr;
    REQUIRE(h.ops.update(MapId::kMember, &stray, &one) == 0);
    MapWriter again(h.ops, recover_map_state(h.ops), MapCapacity{}, metrics);
    CHECK(again.state().stray_members.size() == 1);
    CHECK(again.apply(diff(again.state(), build_desired(m), kAll)) == "");
    CHECK(h.ops.size(MapId::kMember) == 3);

    // Turning the options off rewrites the service entry only.
    s.round_robin = false;
    s.affinity_timeout = 0;
    add(m, s);
    h.ops.ops.clear();
    CHECK(again.apply(diff(again.state(), build_desired(m), kAll)) == "");
    CHECK(h.ops.ops == std::vector<std::string>{"put km_service"});
    REQUIRE(h.ops.get(MapId::kService, again.state().services.begin()->second.id, &sv));
    CHECK(sv.flags == 0);
}

TEST_CASE("capacity: members and weighted slots are counted before anything is written") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, weighted("a", "10.0.0.1", 1));
    add(m, weighted("b", "10.0.0.2", 9));
    add(m, weighted("c", "10.0.0.3", 0));
    DesiredState d = build_desired(m);
    MapCapacity cap;
    cap.endpoints = 10;
    cap.members = 3;
    CHECK(fits(d, cap) == "");
    cap.endpoints = 9;
    cap.members = 2;
    std::string e = fits(d, cap);
    CHECK(e.find("km_endpoint needs 10 entries") != std::string::npos);
    CHECK(e.find("km_member needs 3 entries for this config but holds 2 (1 over; raise --max-members)") !=
          std::string::npos);
}

TEST_CASE("config file: capacity, loadBalancer, sessionAffinity and its timeout") {
    auto parse = [](const std::string& svc_extra, const std::string& wl_extra) {
        return parse_config_yaml(
            "services:\n- {name: e, namespace: d, hostname: e.d, addresses: [\"10.96.0.1\"], "
            "ports: [{service_port: 80}]" +
            svc_extra + "}\nworkloads:\n- {uid: w, addresses: [\"10.0.0.1\"]" + wl_extra +
            ", services: {d/e.d: }}\n");
    };
    auto model = [&](const std::string& s, const std::string& w) {
        auto r = parse(s, w);
        if (auto* e = std::get_if<ConfigError>(&r)) FAIL(e->summary());
        return std::get<Model>(r);
    };
    auto error = [&](const std::string& s, const std::string& w) {
        auto r = parse(s, w);
        auto* e = std::get_if<ConfigError>(&r);
        return e ? e->summary() : std::string();
    };
    Model m = model("", "");
    CHECK(m.workloads.at("w").capacity == 1);
    CHECK(!m.services.at("d/e.d").round_robin);
    CHECK(m.services.at("d/e.d").affinity_timeout == 0);
    CHECK(model("", ", capacity: 3").workloads.at("w").capacity == 3);
    CHECK(model("", ", capacity: 0").workloads.at("w").capacity == 0);
    CHECK(model(", loadBalancer: roundRobin", "").services.at("d/e.d").round_robin);
    CHECK(model(", load_balancer: ROUND_ROBIN", "").services.at("d/e.d").round_robin);
    CHECK(!model(", loadBalancer: RANDOM", "").services.at("d/e.d").round_robin);
    CHECK(model(", sessionAffinity: ClientIP", "").services.at("d/e.d").affinity_timeout == 10800);
    CHECK(model(", session_affinity: CLIENT_IP, sessionAffinityTimeoutSeconds: 60", "")
              .services.at("d/e.d")
              .affinity_timeout == 60);
    CHECK(model(", sessionAffinity: None", "").services.at("d/e.d").affinity_timeout == 0);

    CHECK(error("", ", capacity: -1").find("workloads[0].capacity (line 4): '-1' is not a number") !=
          std::string::npos);
    CHECK(error("", ", capacity: 4294967296").find("is not a number from 0 to 4294967295") !=
          std::string::npos);
    CHECK(error(", loadBalancer: leastConn", "").find("load_balancer has the unknown value 'leastConn'") !=
          std::string::npos);
    CHECK(error(", sessionAffinity: Cookie", "").find("session_affinity has the unknown value") !=
          std::string::npos);
    CHECK(error(", sessionAffinityTimeoutSeconds: 5", "").find("only meaningful with session_affinity") !=
          std::string::npos);
    CHECK(error(", sessionAffinity: ClientIP, sessionAffinityTimeoutSeconds: 86401", "")
              .find("not a number from 1 to 86400") != std::string::npos);
    CHECK(error(", sessionAffinity: ClientIP, sessionAffinityTimeoutSeconds: 0", "")
              .find("not a number from 1 to 86400") != std::string::npos);
}

TEST_CASE("xds: Workload.capacity (UInt32Value): unset is 1, 0 drains") {
    istio::workload::Workload in;
    in.set_uid("Kubernetes//Pod/default/w");
    in.add_addresses(std::string("\x0a\x00\x00\x01", 4));
    Workload w;
    REQUIRE(xds::convert_workload(in, &w) == "");
    CHECK(w.capacity == 1);
    in.mutable_capacity()->set_value(0);
    REQUIRE(xds::convert_workload(in, &w) == "");
    CHECK(w.capacity == 0);
    in.mutable_capacity()->set_value(7);
    REQUIRE(xds::convert_workload(in, &w) == "");
    CHECK(w.capacity == 7);
}
