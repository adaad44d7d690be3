#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstring>

#include "agent/src/dataplane/map_writer.hpp"
#include "fake_map_ops.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

const Dirty kAll{true, {}, {}};

struct Harness {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer;
    std::vector<std::string> violations;

    explicit Harness(MapCapacity cap = {}) : writer(ops, MapState{}, cap, metrics) {
        ops.after_mutation = [this] {
            if (auto v = ops.check_connect_invariant(); !v.empty()) violations.push_back(v);
            if (auto v = ops.check_member_invariant(); !v.empty()) violations.push_back(v);
        };
    }
    // Incremental, as the agent does it: only what changed in the model is compared.
    MeshState mesh;
    std::string apply(const Model& m) {
        mesh.replace(m);
        std::string err = writer.apply(diff(writer.state(), mesh.desired(), mesh.take_dirty()));
        if (!err.empty()) mesh.mark_all_dirty();
        return err;
    }

    kmesh_service_value service_value(const std::string& host) {
        const auto& svc =
            writer.state().services.at(name_hash("default/" + host + ".default.svc.cluster.local"));
        kmesh_service_value v{};
        REQUIRE(ops.get(MapId::kService, svc.id, &v));
        return v;
    }
    // Backend addresses behind service index 1..count, as BPF would resolve them.
    std::set<std::string> resolve(const std::string& host) {
        std::set<std::string> out;
        const auto& svc =
            writer.state().services.at(name_hash("default/" + host + ".default.svc.cluster.local"));
        auto v = service_value(host);
        for (uint32_t i = 1; i <= v.endpoint_count[KMESH_FAMILY_V4][0]; i++) {
            kmesh_endpoint_value ev;
            kmesh_backend_value bv;
            REQUIRE(ops.get(MapId::kEndpoint, kmesh_endpoint_key{svc.id, KMESH_FAMILY_V4, 0, i}, &ev));
            REQUIRE(ops.get(MapId::kBackend, ev.backend_id, &bv));
            IpAddr a;
            std::memcpy(a.bytes.data(), bv.addr4, 16);
            out.insert(a.str());
        }
        return out;
    }
};

kmesh_frontend_key frontend(const std::string& ip, uint16_t port) {
    kmesh_frontend_key k{};
    auto a = *IpAddr::parse(ip);
    std::memcpy(k.addr, a.bytes.data(), 16);
    k.port = htons(port);
    return k;
}

// The writer's mirror must equal what a fresh recovery reads from the kernel.
std::string mirror_mismatch(const MapWriter& w, const FakeMapOps& ops) {
    MapState k = recover_map_state(ops), m = w.state();
    if (k.services.size() != m.services.size()) return "service count";
    for (const auto& [h, s] : m.services) {
        auto it = k.services.find(h);
        if (it == k.services.end() || it->second.id != s.id || !(it->second.params() == s.params()) ||
            it->second.slots != s.slots || it->second.members != s.members)
            return "service " + std::to_string(s.id);
    }
    if (k.backends.size() != m.backends.size()) return "backend count";
    for (const auto& [h, b] : m.backends)
        if (!k.backends.count(h) || k.backends[h].id != b.id || !(k.backends[h].value == b.value))
            return "backend";
    if (k.frontends != m.frontends) return "frontends";
    if (!k.stray_endpoints.empty() && m.stray_endpoints.empty()) return "untracked stray endpoints";
    return "";
}

Model two_backends() {
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, workload("echo-1", {"10.244.0.11"}, {"echo"}));
    add(m, workload("echo-2", {"10.244.0.12"}, {"echo"}));
    return m;
}

}  // namespace

TEST_CASE("a new service is written backends first and frontend last") {
    Harness h;
    CHECK(h.apply(two_backends()) == "");
    CHECK(h.violations.empty());
    REQUIRE(h.ops.ops.size() >= 5);
    CHECK(h.ops.ops.front() == "put km_backend");
    CHECK(h.ops.ops.back() == "put km_frontend");
    CHECK(h.resolve("echo") == std::set<std::string>{"10.244.0.11", "10.244.0.12"});

    kmesh_frontend_value fe;
    REQUIRE(h.ops.get(MapId::kFrontend, frontend("10.96.0.10", 80), &fe));
    CHECK(ntohs(fe.target_port) == 8080);
}

TEST_CASE("removing a middle endpoint keeps indices dense and every state consistent") {
    Harness h;
    Model m = two_backends();
    add(m, workload("echo-3", {"10.244.0.13"}, {"echo"}));
    REQUIRE(h.apply(m) == "");
    // Remove whichever workload sits at index 1, so the last entry must move into the hole.
    const auto& st = h.writer.state();
    uint64_t first = st.backend_hash_by_id.at(st.services.begin()->second.slots[0][0][0]);
    std::string gone;
    for (const auto& [uid, w] : m.workloads)
        if (name_hash(uid) == first) gone = uid;
    m.workloads.erase(gone);
    h.ops.ops.clear();
    REQUIRE(h.apply(m) == "");
    CHECK(h.violations.empty());
    CHECK(h.service_value("echo").endpoint_count[0][0] == 2);
    CHECK(h.resolve("echo").size() == 2);
    CHECK(h.ops.size(MapId::kEndpoint) == 2);  // the old last index is gone
    CHECK(h.ops.size(MapId::kBackend) == 2);
    // move the last entry into the hole, shrink the count, delete the old last, then the backend
    std::vector<std::string> expected{"put km_endpoint", "put km_service", "del km_endpoint", "del km_member",
                                      "del km_backend"};
    CHECK(h.ops.ops == expected);
}

TEST_CASE("a service without endpoints keeps its frontend with a zero count") {
    Harness h;
    Model m;
    add(m, service("lonely", {"10.96.0.20"}));
    REQUIRE(h.apply(m) == "");
    CHECK(h.service_value("lonely").endpoint_count[0][0] == 0);
    CHECK(h.ops.size(MapId::kFrontend) == 1);
}

TEST_CASE("unhealthy workloads leave the LB set but stay known") {
    Harness h;
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    m.workloads["Kubernetes//Pod/default/echo-2"].status = WorkloadStatus::kUnhealthy;
    REQUIRE(h.apply(m) == "");
    CHECK(h.resolve("echo") == std::set<std::string>{"10.244.0.11"});
    CHECK(h.ops.size(MapId::kBackend) == 2);
}

TEST_CASE("deleting a service removes its frontend before the service and endpoints") {
    Harness h;
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    h.ops.ops.clear();
    m.services.clear();
    REQUIRE(h.apply(m) == "");
    CHECK(h.violations.empty());
    REQUIRE(!h.ops.ops.empty());
    CHECK(h.ops.ops.front() == "del km_frontend");
    CHECK(h.ops.size(MapId::kService) == 0);
    CHECK(h.ops.size(MapId::kEndpoint) == 0);
    CHECK(h.ops.size(MapId::kFrontend) == 0);
}

TEST_CASE("moving a VIP between services rewrites the frontend in place") {
    Harness h;
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    m.services.clear();
    add(m, service("echo2", {"10.96.0.10"}, {{80, 9090}}));
    m.workloads["Kubernetes//Pod/default/echo-1"].services = {
        {"default/echo2.default.svc.cluster.local", {}}};
    REQUIRE(h.apply(m) == "");
    CHECK(h.violations.empty());
    kmesh_frontend_value fe;
    REQUIRE(h.ops.get(MapId::kFrontend, frontend("10.96.0.10", 80), &fe));
    CHECK(ntohs(fe.target_port) == 9090);
    CHECK(h.resolve("echo2") == std::set<std::string>{"10.244.0.11"});
}

TEST_CASE("a full endpoint map gives an error and a metric, and leaves consistent maps") {
    Harness h;
    h.ops.set_capacity(MapId::kEndpoint, 3);
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    add(m, workload("echo-3", {"10.244.0.13"}, {"echo"}));
    add(m, workload("echo-4", {"10.244.0.14"}, {"echo"}));
    std::string err = h.apply(m);
    CHECK(err.find("map full") != std::string::npos);
    CHECK(h.metrics.map_full_errors[static_cast<int>(MapId::kEndpoint)] == 1);
    CHECK(h.violations.empty());
    // The failed run was rolled back: the count did not move and no stray entry is left.
    CHECK(h.service_value("echo").endpoint_count[0][0] == 2);
    CHECK(h.ops.size(MapId::kEndpoint) == 2);
    // Once room is made, a fresh diff completes the work.
    h.ops.set_capacity(MapId::kEndpoint, 10);
    CHECK(h.apply(m) == "");
    CHECK(h.resolve("echo").size() == 4);
}

TEST_CASE("a failing write or delete midway never breaks the invariant or the mirror") {
    Model big;
    add(big, service("a", {"10.96.0.1"}));
    add(big, service("b", {"10.96.0.2", "fd00::2"}));
    for (int i = 0; i < 6; i++)
        add(big, workload("w" + std::to_string(i), {"10.244.1." + std::to_string(i + 1)},
                          {i % 2 ? "a" : "b", "a"}));
    Model small = big;
    small.workloads.erase("Kubernetes//Pod/default/w1");
    small.workloads.erase("Kubernetes//Pod/default/w4");
    small.services.erase("default/b.default.svc.cluster.local");
    add(small, service("c", {"10.96.0.3"}));
    add(small, workload("w9", {"10.244.1.9"}, {"c", "a"}));

    for (bool removes : {false, true})
        for (int n = 0; n < 40; n++) {
            CAPTURE(removes);
            CAPTURE(n);
            Harness h;
            REQUIRE(h.apply(big) == "");
            removes ? h.ops.fail_nth_remove(n) : h.ops.fail_nth_update(n);
            h.apply(small);  // may fail at operation n
            CHECK_MESSAGE(h.violations.empty(), (h.violations.empty() ? "" : h.violations.front()));
            CHECK(mirror_mismatch(h.writer, h.ops) == "");
            h.ops.fail_nth_update(-1);
            h.ops.fail_nth_remove(-1);
            CHECK(h.apply(small) == "");
            CHECK(h.violations.empty());
            CHECK(diff(h.writer.state(), build_desired(small), kAll).empty());
            CHECK(mirror_mismatch(h.writer, h.ops) == "");
            CHECK(h.resolve("a").size() == 5);
            CHECK(h.ops.size(MapId::kEndpoint) == 6);  // a: 5, c: 1; nothing leaked
        }
}

TEST_CASE("one service's failure does not hold back the others") {
    Harness h;
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    h.ops.set_capacity(MapId::kEndpoint, 2);
    add(m, workload("echo-3", {"10.244.0.13"}, {"echo"}));  // needs a third endpoint: fails
    m.workloads.erase("Kubernetes//Pod/default/echo-1");    // a removal that frees one
    add(m, service("other", {"10.96.0.30"}));
    std::string err = h.apply(m);
    CHECK(err.find("map full") != std::string::npos);
    CHECK(h.ops.size(MapId::kFrontend) == 2);  // "other" was still written
    CHECK(h.violations.empty());
    CHECK(h.service_value("echo").endpoint_count[0][0] == 1);  // the removal went through
    CHECK(h.apply(m) == "");                                   // and the retry fits
    CHECK(h.resolve("echo") == std::set<std::string>{"10.244.0.12", "10.244.0.13"});
}

TEST_CASE("a restarted agent recovers ids from the maps and writes nothing for an unchanged config") {
    Harness h;
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    uint32_t id = h.writer.state().services.begin()->second.id;

    Metrics metrics;
    MapWriter restarted(h.ops, recover_map_state(h.ops), MapCapacity{}, metrics);
    CHECK(restarted.state().services.begin()->second.id == id);
    Plan plan = diff(restarted.state(), build_desired(m), kAll);
    CHECK(plan.empty());
}

TEST_CASE("recovery repairs holes and strays left by a crash") {
    Harness h;
    Model m = two_backends();
    add(m, workload("echo-3", {"10.244.0.13"}, {"echo"}));
    add(m, workload("echo-4", {"10.244.0.14"}, {"echo"}));
    REQUIRE(h.apply(m) == "");
    const auto& svc = h.writer.state().services.begin()->second;
    h.ops.after_mutation = nullptr;
    // A crash left holes at index 2 and at the last index, and an entry written just past the count
    // (the next add reuses that key, so the stray must not be deleted after it).
    for (uint32_t idx : {2u, 4u}) {
        kmesh_endpoint_key hole{svc.id, 0, 0, idx};
        REQUIRE(h.ops.remove(MapId::kEndpoint, &hole) == 0);
    }
    kmesh_endpoint_key stray{svc.id, 0, 0, 5};
    kmesh_endpoint_value any{svc.slots[0][0][0]};
    REQUIRE(h.ops.update(MapId::kEndpoint, &stray, &any) == 0);

    Metrics metrics;
    MapWriter restarted(h.ops, recover_map_state(h.ops), MapCapacity{}, metrics);
    // Repair starts from a broken state; once repaired, it must stay repaired.
    bool repaired = false, relapsed = false;
    h.ops.after_mutation = [&] {
        bool ok = h.ops.check_connect_invariant().empty();
        relapsed |= repaired && !ok;
        repaired |= ok;
    };
    CHECK(restarted.apply(diff(restarted.state(), build_desired(m), kAll)) == "");
    CHECK(!relapsed);
    CHECK(h.ops.check_connect_invariant() == "");
    CHECK(h.ops.size(MapId::kEndpoint) == 4);
    CHECK(mirror_mismatch(restarted, h.ops) == "");
    CHECK(diff(restarted.state(), build_desired(m), kAll).empty());
}

TEST_CASE("trailing unknown slots are trimmed without copying a dead entry into a hole") {
    Harness h;
    Model m = two_backends();
    add(m, workload("echo-3", {"10.244.0.13"}, {"echo"}));
    REQUIRE(h.apply(m) == "");
    const auto& svc = h.writer.state().services.begin()->second;
    h.ops.after_mutation = nullptr;
    kmesh_endpoint_key last{svc.id, 0, 0, 3};
    REQUIRE(h.ops.remove(MapId::kEndpoint, &last) == 0);  // slot 3 is now unknown (backend 0)
    m.workloads.erase(h.writer.state().backends.begin()->first == name_hash("Kubernetes//Pod/default/echo-1")
                          ? "Kubernetes//Pod/default/echo-2"
                          : "Kubernetes//Pod/default/echo-1");
    Metrics metrics;
    MapWriter restarted(h.ops, recover_map_state(h.ops), MapCapacity{}, metrics);
    CHECK(restarted.apply(diff(restarted.state(), build_desired(m), kAll)) == "");
    CHECK(h.ops.check_connect_invariant() == "");
    CHECK(mirror_mismatch(restarted, h.ops) == "");
}

TEST_CASE("ids seen in the maps at recovery are never handed out again") {
    FakeMapOps ops;
    kmesh_endpoint_key orphan{7, 0, 0, 1};  // an endpoint of a service deleted mid-way by a crash
    kmesh_endpoint_value v{3};
    REQUIRE(ops.update(MapId::kEndpoint, &orphan, &v) == 0);
    Metrics metrics;
    MapWriter w(ops, recover_map_state(ops), MapCapacity{8, 8}, metrics);
    Model m;
    for (int i = 0; i < 7; i++) add(m, service(fmt::format("s{}", i), {fmt::format("10.96.1.{}", i + 1)}));
    CHECK(w.apply(diff(w.state(), build_desired(m), kAll)) == "");
    for (const auto& [h, s] : w.state().services) CHECK(s.id != 7);
    CHECK(ops.size(MapId::kEndpoint) == 0);  // the orphan is gone
}

TEST_CASE("id allocator reuses freed ids and reports exhaustion") {
    IdAllocator ids(3);
    CHECK(ids.allocate() == 1);
    CHECK(ids.allocate() == 2);
    CHECK(ids.allocate() == 3);
    CHECK(ids.allocate() == 0);
    ids.release(2);
    CHECK(ids.allocate() == 2);
}

TEST_CASE(
    "per-workload ports: every addition and every removal step keeps each counted endpoint on its port") {
    Harness h;
    const std::string key = "default/echo.default.svc.cluster.local";
    Model m;
    add(m, service("echo", {"10.96.0.10"}, {{80, 0}}));
    Workload p1 = workload("p1", {"10.0.0.1"}, {"echo"});
    p1.services[key] = {{80, 9000}};
    add(m, p1);
    // After every map write: each counted endpoint must resolve to its workload's own port.
    std::vector<std::string> wrong;
    // Chained after the harness's own invariant hook (h.violations), which keeps running too.
    h.ops.after_mutation = [&, invariants = h.ops.after_mutation] {
        if (invariants) invariants();
        h.ops.for_each(MapId::kFrontend, [&](const void*, const void* v) {
            kmesh_frontend_value fe;
            std::memcpy(&fe, v, sizeof fe);
            kmesh_service_value sv;
            if (!h.ops.get(MapId::kService, fe.service_id, &sv)) return true;
            for (uint32_t i = 1; i <= sv.endpoint_count[0][0]; i++) {
                kmesh_endpoint_value ev;
                kmesh_backend_value bv;
                if (!h.ops.get(MapId::kEndpoint, kmesh_endpoint_key{fe.service_id, 0, 0, i}, &ev) ||
                    !h.ops.get(MapId::kBackend, ev.backend_id, &bv))
                    continue;
                uint16_t port = fe.target_port;
                kmesh_port_value pv;
                if (fe.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS &&
                    h.ops.get(MapId::kPort, kmesh_port_key{ev.backend_id, fe.service_id, htons(80), 0}, &pv))
                    port = pv.target_port;
                uint16_t want = bv.addr4[15] == 1 ? 9000 : bv.addr4[15] == 2 ? 9001 : 80;
                if (ntohs(port) != want) wrong.push_back(std::to_string(ntohs(port)));
            }
            return true;
        });
    };
    REQUIRE(h.apply(m) == "");
    Workload p2 = workload("p2", {"10.0.0.2"}, {"echo"});
    p2.services[key] = {{80, 9001}};
    add(m, p2);
    REQUIRE(h.apply(m) == "");
    CHECK(wrong.empty());
    CHECK(h.ops.size(MapId::kPort) == 2);
    CHECK(mirror_mismatch(h.writer, h.ops) == "");

    // The mirror: the last overriding endpoints go. Uncounted first, then the flag is cleared,
    // then the overrides go; the hook above runs after every one of those removal steps.
    SUBCASE("removing every overriding endpoint") {
        m.workloads.erase(p1.uid);
        m.workloads.erase(p2.uid);
    }
    SUBCASE("replacing them with a workload on the default port") {
        m.workloads.erase(p1.uid);
        m.workloads.erase(p2.uid);
        add(m, workload("plain", {"10.0.0.3"}, {"echo"}));  // the service's own port, 80
    }
    wrong.clear();
    REQUIRE(h.apply(m) == "");
    CHECK(wrong.empty());
    CHECK(h.violations.empty());
    CHECK(h.ops.size(MapId::kPort) == 0);
    kmesh_frontend_value fe;
    REQUIRE(h.ops.get(MapId::kFrontend, frontend("10.96.0.10", 80), &fe));
    CHECK(fe.flags == 0);
    CHECK(mirror_mismatch(h.writer, h.ops) == "");
}

TEST_CASE("the writer runs one stage table: additions forwards, removals in mirror order") {
    Harness h;
    REQUIRE(h.apply(two_backends()) == "");
    std::vector<std::string> expected;
    for (Stage s : kStageOrder) expected.push_back(std::string("+") + stage_name(s));
    for (auto s = kStageOrder.rbegin(); s != kStageOrder.rend(); ++s)
        expected.push_back(std::string("-") + stage_name(*s));
    CHECK(h.writer.stage_log() == expected);
}

TEST_CASE("a new service that cannot be written completely is not published") {
    Harness h;
    h.ops.set_capacity(MapId::kEndpoint, 1);  // the kernel says full before the writer expects it
    Model m = two_backends();
    std::string err = h.apply(m);
    CHECK(err.find("map full") != std::string::npos);
    CHECK(err.find("not published") != std::string::npos);
    CHECK(h.metrics.services_unpublished == 1);
    // No frontend: connects to the VIP pass through untouched instead of being refused.
    CHECK(h.ops.size(MapId::kFrontend) == 0);
    CHECK(h.violations.empty());
    CHECK(mirror_mismatch(h.writer, h.ops) == "");
    // Once there is room the service is completed and published.
    h.ops.set_capacity(MapId::kEndpoint, 10);
    CHECK(h.apply(m) == "");
    CHECK(h.ops.size(MapId::kFrontend) == 1);
    CHECK(h.resolve("echo").size() == 2);
    CHECK(h.violations.empty());
}

TEST_CASE("a service that was published keeps its frontend when it cannot grow") {
    Harness h;
    Model m = two_backends();
    REQUIRE(h.apply(m) == "");
    h.ops.set_capacity(MapId::kEndpoint, 2);
    add(m, workload("echo-3", {"10.244.0.13"}, {"echo"}));
    CHECK(h.apply(m).find("map full") != std::string::npos);
    CHECK(h.metrics.services_unpublished == 0);
    CHECK(h.resolve("echo").size() == 2);
}

namespace {

// A writer whose capacities match the fake kernel's.
struct SizedHarness : Harness {
    explicit SizedHarness(MapCapacity cap) : Harness(cap) {
        ops.set_capacity(MapId::kService, cap.services);
        ops.set_capacity(MapId::kBackend, cap.backends);
        ops.set_capacity(MapId::kEndpoint, cap.endpoints);
        ops.set_capacity(MapId::kFrontend, cap.frontends);
        ops.set_capacity(MapId::kPort, cap.ports);
    }
};

}  // namespace

TEST_CASE("capacity: fits() names the map and the overflow, and writes nothing") {
    Model m;
    for (int i = 0; i < 3; i++)
        add(m, service("s" + std::to_string(i), {"10.96.1." + std::to_string(i + 1)}));
    for (int i = 0; i < 4; i++)
        add(m, workload("w" + std::to_string(i),
                        {"10.0.0." + std::to_string(i + 1), "fd00::" + std::to_string(i + 1)}, {"s0", "s1"}));
    DesiredState d = build_desired(m);
    // 3 services, 4 backends, 4 dual-stack backends in 2 services = 16 endpoints, 3 frontends.
    MapSizes sizes{3, 3, 16, 4, 0};
    CHECK(fits(d, sizes) == "");
    sizes.services = 2;
    sizes.endpoints = 12;
    std::string e = fits(d, sizes);
    CHECK(e.find("km_service needs 3 entries for this config but holds 2 (1 over; raise --max-services)") !=
          std::string::npos);
    CHECK(
        e.find("km_endpoint needs 16 entries for this config but holds 12 (4 over; raise --max-endpoints)") !=
        std::string::npos);
    CHECK(e.find("km_backend") == std::string::npos);

    SizedHarness h(MapCapacity{2, 8, 12, 8, 8});
    std::string err = h.apply(m);
    CHECK(err.find("nothing written") != std::string::npos);
    CHECK(err.find("km_service") != std::string::npos);
    CHECK(err.find("km_endpoint") != std::string::npos);
    CHECK(h.ops.ops.empty());
}

TEST_CASE("capacity: when additions only fit after the removals, removals run first and one apply does it") {
    SizedHarness h(MapCapacity{4, 4, 3, 4, 4});
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    for (int i = 1; i <= 3; i++)
        add(m, workload("old" + std::to_string(i), {"10.0.0." + std::to_string(i)}, {"echo"}));
    REQUIRE(h.apply(m) == "");
    // Same size, different members: 3 endpoints before and after, 5 if the additions went first.
    m.workloads.erase("Kubernetes//Pod/default/old1");
    m.workloads.erase("Kubernetes//Pod/default/old2");
    add(m, workload("new1", {"10.0.0.11"}, {"echo"}));
    add(m, workload("new2", {"10.0.0.12"}, {"echo"}));
    CHECK(h.apply(m) == "");
    CHECK(h.violations.empty());
    CHECK(h.resolve("echo") == std::set<std::string>{"10.0.0.3", "10.0.0.11", "10.0.0.12"});
    CHECK(h.writer.stage_log().front() == "-frontends");
    CHECK(mirror_mismatch(h.writer, h.ops) == "");
    CHECK(diff(h.writer.state(), build_desired(m), kAll).empty());
}

TEST_CASE("capacity: a VIP moving to a new service when the service map is full converges in one apply") {
    SizedHarness h(MapCapacity{2, 4, 4, 4, 4});
    Model m = two_backends();
    add(m, service("other", {"10.96.0.30"}));
    REQUIRE(h.apply(m) == "");
    m.services.erase("default/echo.default.svc.cluster.local");
    add(m, service("echo2", {"10.96.0.10"}, {{80, 9090}}));
    for (auto& [uid, w] : m.workloads) w.services = {{"default/echo2.default.svc.cluster.local", {}}};
    CHECK(h.apply(m) == "");
    CHECK(h.violations.empty());
    kmesh_frontend_value fe;
    REQUIRE(h.ops.get(MapId::kFrontend, frontend("10.96.0.10", 80), &fe));
    CHECK(ntohs(fe.target_port) == 9090);
    CHECK(h.resolve("echo2").size() == 2);
    CHECK(h.ops.size(MapId::kService) == 2);
    CHECK(mirror_mismatch(h.writer, h.ops) == "");
}
