// Batched map writes (issue 12): the writer sends each stage's entries of one map in one batch, and
// the maps must end up byte for byte as with one call per entry, with every intermediate state a
// connect() can see still consistent (the fake runs a batch entry by entry, as the kernel does, and
// checks the invariants after each entry).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <map>
#include <string>

#include "agent/src/dataplane/map_writer.hpp"
#include "fake_map_ops.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

using Dump = std::array<std::map<std::string, std::string>, kMapCount>;

Dump dump(const FakeMapOps& ops) {
    Dump d;
    for (int i = 0; i < kMapCount; i++) {
        auto id = static_cast<MapId>(i);
        ops.for_each(id, [&](const void* k, const void* v) {
            d[i][std::string(static_cast<const char*>(k), map_key_size(id))] =
                std::string(static_cast<const char*>(v), map_value_size(id));
            return true;
        });
    }
    return d;
}

struct Node {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer;
    MeshState mesh;
    std::vector<std::string> violations;

    explicit Node(bool batches) : writer(ops, MapState{}, MapCapacity{}, metrics) {
        if (!batches)
            for (int i = 0; i < kMapCount; i++) ops.refuse_batches(static_cast<MapId>(i));
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
};

// n services, each with a VIP (and a v6 VIP every third) and three workloads, one of them shared
// with the next service; a per-workload port on every fifth.
Model mesh(int n, int gone = -1) {
    Model m;
    for (int i = 0; i < n; i++) {
        std::vector<std::string> vips{"10.96.1." + std::to_string(i + 1)};
        if (i % 3 == 0) vips.push_back("fd00::1:" + std::to_string(i + 1));
        add(m, service("s" + std::to_string(i), vips));
        for (int j = 0; j < 3; j++) {
            if (i == gone && j == 1) continue;
            std::vector<std::string> hosts{"s" + std::to_string(i)};
            if (j == 2 && i + 1 < n) hosts.push_back("s" + std::to_string(i + 1));
            Workload w = workload("w" + std::to_string(i) + "-" + std::to_string(j),
                                  {"10.244." + std::to_string(i) + "." + std::to_string(j + 1)}, hosts);
            if (i % 5 == 0 && j == 0) w.services.begin()->second = {ServicePort{80, 9090}};
            add(m, w);
        }
    }
    return m;
}

}  // namespace

TEST_CASE("batched writes: one call per map and stage, in stage order, maps equal to one entry per call") {
    Node batched(true), single(false);
    Model m = mesh(20);
    CHECK(batched.apply(m) == "");
    CHECK(single.apply(m) == "");
    CHECK(batched.violations.empty());
    CHECK(dump(batched.ops) == dump(single.ops));
    CHECK(batched.ops.ops == single.ops.ops);  // the same entries in the same order
    CHECK(single.ops.batches.empty());
    // Backends, services (empty), port overrides, members, endpoint slots, the counts, frontends.
    std::vector<std::string> kinds;
    for (const auto& b : batched.ops.batches) kinds.push_back(b.substr(0, b.rfind(' ')));
    CHECK(kinds == std::vector<std::string>{"put km_backend", "put km_service", "put km_port",
                                            "put km_member", "put km_endpoint", "put km_service",
                                            "put km_frontend"});
    CHECK(batched.metrics.map_calls == 7);
    // One refused batch per map, then one call per entry.
    CHECK(single.metrics.map_calls >= single.metrics.map_writes);
    CHECK(single.metrics.map_calls <= single.metrics.map_writes + kMapCount);
    CHECK(batched.metrics.map_writes == single.metrics.map_writes);
}

TEST_CASE("batched removals: slots, services, members, backends end as with one entry per call") {
    for (int gone : {0, 7, 19}) {
        CAPTURE(gone);
        Node batched(true), single(false);
        REQUIRE(batched.apply(mesh(20)) == "");
        REQUIRE(single.apply(mesh(20)) == "");
        Model next = mesh(20, gone);  // a workload leaves (a hole in two lists)
        for (int i = 3; i < 6; i++)
            next.services.erase("default/s" + std::to_string(i) + ".default.svc.cluster.local");
        next.workloads.erase("Kubernetes//Pod/default/w10-0");
        batched.ops.batches.clear();
        CHECK(batched.apply(next) == "");
        CHECK(single.apply(next) == "");
        CHECK(batched.violations.empty());
        CHECK(dump(batched.ops) == dump(single.ops));
        CHECK(diff(batched.writer.state(), build_desired(next), Dirty{true, {}, {}}).empty());
        CHECK(recover_map_state(batched.ops).services.size() == batched.writer.state().services.size());
        // Each removal stage took one call per map, whatever the number of lists and services.
        CHECK(batched.ops.batches.size() <= 12);
        // Back to the full mesh: the slots return.
        CHECK(batched.apply(mesh(20)) == "");
        CHECK(single.apply(mesh(20)) == "");
        CHECK(batched.violations.empty());
        CHECK(dump(batched.ops) == dump(single.ops));
    }
}

TEST_CASE("a batch the kernel stops at a failing entry is resumed after it; the error is counted") {
    Model m = mesh(12);
    Node clean(true);
    REQUIRE(clean.apply(m) == "");
    // Fail each update in turn (the fake stops the batch there, as the kernel does): only the
    // service that entry belongs to may be held back, the maps stay consistent, a retry finishes.
    size_t updates = clean.metrics.map_writes;
    for (size_t n = 0; n < updates; n += 3) {
        CAPTURE(n);
        Node node(true);
        node.ops.fail_nth_update(static_cast<int>(n));
        std::string err = node.apply(m);
        CHECK(err.find("Input/output error") != std::string::npos);
        CHECK(node.violations.empty());
        uint64_t errors = 0;
        for (const auto& e : node.metrics.map_write_errors) errors += e;
        CHECK(errors == 1);
        CHECK(node.metrics.map_batches_stopped <= 1);
        // At most the services of the failed entry (a shared backend has two, a service up to two
        // VIPs) miss their frontends: everything after the failed entry went in.
        CHECK(node.ops.size(MapId::kFrontend) + 4 >= clean.ops.size(MapId::kFrontend));
        CHECK(node.apply(m) == "");
        CHECK(node.violations.empty());
        // Ids may differ after a failure (a failed new entry's id is handed out again): compare
        // what connects resolve to, the entry counts, and the mirror with the desired state.
        CHECK(resolved(node.ops) == resolved(clean.ops));
        for (int i = 0; i < kMapCount; i++)
            CHECK(node.ops.size(static_cast<MapId>(i)) == clean.ops.size(static_cast<MapId>(i)));
        CHECK(diff(node.writer.state(), build_desired(m), Dirty{true, {}, {}}).empty());
    }
}

TEST_CASE("a map without batch operations is written one entry per call, with the same result") {
    Node node(true), clean(true);
    node.ops.refuse_batches(MapId::kEndpoint);
    Model m = mesh(10);
    CHECK(node.apply(m) == "");
    CHECK(clean.apply(m) == "");
    CHECK(node.violations.empty());
    CHECK(dump(node.ops) == dump(clean.ops));
    for (const auto& b : node.ops.batches) CHECK(b.find("km_endpoint") == std::string::npos);
    size_t endpoints = node.ops.size(MapId::kEndpoint);
    // One refused batch call, then one call per endpoint entry.
    CHECK(node.metrics.map_calls == clean.metrics.map_calls - 1 + 1 + endpoints);
    // Removals take the same path.
    CHECK(node.apply(mesh(10, 4)) == "");
    CHECK(clean.apply(mesh(10, 4)) == "");
    CHECK(dump(node.ops) == dump(clean.ops));
}
