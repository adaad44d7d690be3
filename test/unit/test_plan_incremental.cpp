// Planning in proportion to the change (issue 12, branch h12-plan): a long random sequence of
// single-resource changes, each planned from MeshState's dirty names only and written by the
// writer, must leave the maps exactly as a writer fed the final model in one go leaves them, and
// a full comparison (Dirty::all) afterwards must find nothing to do. The oracle is independent of
// the incremental path: a fresh MeshState and writer given the whole model once, and the fake
// kernel's own content, compared through what each frontend resolves to.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <map>
#include <numeric>
#include <set>
#include <string>

#include "agent/src/dataplane/map_writer.hpp"
#include "fake_map_ops.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

// Entries per map in the fake kernel.
std::array<size_t, kMapCount> sizes(const FakeMapOps& ops) {
    std::array<size_t, kMapCount> n{};
    for (int i = 0; i < kMapCount; i++)
        ops.for_each(static_cast<MapId>(i), [&](const void*, const void*) {
            n[i]++;
            return true;
        });
    return n;
}

struct Node {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer;
    MeshState mesh;
    std::vector<std::string> violations;

    Node() : writer(ops, MapState{}, MapCapacity{}, metrics) {
        ops.after_mutation = [this] {
            if (auto v = ops.check_connect_invariant(); !v.empty()) violations.push_back(v);
            if (auto v = ops.check_member_invariant(); !v.empty()) violations.push_back(v);
        };
    }
    std::string sync() { return writer.apply(diff(writer.state(), mesh.desired(), mesh.take_dirty())); }
};

}  // namespace

TEST_CASE("incremental plans end where a from-scratch write of the same model ends (randomised)") {
    const std::vector<std::string> vips{"10.96.0.1", "10.96.0.2", "fd00::3", "10.96.0.4"};
    const std::vector<std::vector<ServicePort>> port_sets{
        {{80, 0}}, {{80, 8080}}, {{53, 0}, {53, 0}}, {{80, 0}, {443, 8443}}};
    for (uint32_t seed = 1; seed <= 40; seed++) {
        CAPTURE(seed);
        uint32_t state = seed;
        auto rnd = [&](uint32_t n) {
            state = state * 1103515245u + 12345u;
            return (state >> 16) % n;
        };
        Node live;
        for (int step = 0; step < 60; step++) {
            CAPTURE(step);
            // One to three changes per sync, as a push of a few resources would bring.
            for (int c = 0, n = 1 + static_cast<int>(rnd(3)); c < n; c++) {
                std::string svc_name = "s" + std::to_string(rnd(5));
                switch (rnd(6)) {
                    case 0: {
                        Service s = service(svc_name, {vips[rnd(4)]}, port_sets[rnd(4)]);
                        if (rnd(2)) s.addresses.push_back(*IpAddr::parse(vips[rnd(4)]));
                        s.round_robin = rnd(3) == 0;
                        if (rnd(3) == 0) s.affinity_timeout = 1 + rnd(100);
                        live.mesh.upsert_service(s);
                        break;
                    }
                    case 1:
                        live.mesh.remove_service("default/" + svc_name + ".default.svc.cluster.local");
                        break;
                    case 2:
                    case 3:
                    case 4: {
                        Workload w = workload("w" + std::to_string(rnd(12)), {}, {});
                        if (rnd(5))
                            w.addresses.push_back(*IpAddr::parse("10.0.0." + std::to_string(rnd(200) + 1)));
                        if (rnd(3) == 0)
                            w.addresses.push_back(*IpAddr::parse("fd00::" + std::to_string(rnd(200) + 1)));
                        for (int i = 0, k = static_cast<int>(rnd(3)); i < k; i++)
                            w.services["default/s" + std::to_string(rnd(5)) + ".default.svc.cluster.local"] =
                                rnd(2) ? std::vector<ServicePort>{{80, static_cast<uint16_t>(9000 + rnd(3))}}
                                       : std::vector<ServicePort>{};
                        w.status = rnd(5) ? WorkloadStatus::kHealthy : WorkloadStatus::kUnhealthy;
                        w.capacity = rnd(4);  // 0: draining
                        live.mesh.upsert_workload(w);
                        break;
                    }
                    case 5:
                        live.mesh.remove_workload("Kubernetes//Pod/default/w" + std::to_string(rnd(12)));
                        break;
                }
            }
            REQUIRE(live.sync().empty());
            REQUIRE_MESSAGE(live.violations.empty(), live.violations.front());

            // Nothing left to do when everything is compared.
            Dirty all;
            all.all = true;
            CHECK(diff(live.writer.state(), live.mesh.desired(), all).empty());

            // The oracle: the final model written once into empty maps.
            Node fresh;
            fresh.mesh.replace(live.mesh.model());
            REQUIRE(fresh.sync().empty());
            CHECK(resolved(live.ops) == resolved(fresh.ops));
            CHECK(sizes(live.ops) == sizes(fresh.ops));
        }
    }
}

TEST_CASE("weight_slots_into equals a from-scratch computation of the slots (randomised)") {
    // The oracle: the rule as docs/load-balancing.md states it, on std::map, one step at a time.
    auto oracle = [](const std::set<uint64_t>& list, const std::map<uint64_t, uint32_t>& weights,
                     uint32_t max_slots) {
        std::map<uint64_t, uint32_t> out;
        if (list.empty()) return out;
        std::map<uint64_t, uint64_t> w;
        for (uint64_t b : list) {
            auto it = weights.find(b);
            w[b] = it == weights.end() || it->second == 0 ? 1 : it->second;
        }
        uint64_t g = 0;
        for (const auto& [b, x] : w) g = std::gcd(g, x);
        uint64_t total = 0;
        for (auto& [b, x] : w) total += x /= g;
        uint64_t budget = std::max<uint64_t>(max_slots, list.size());
        for (const auto& [b, x] : w) {
            uint64_t n = x;
            if (total > budget) n = std::max<uint64_t>(1, (x * budget + total / 2) / total);
            out[b] = static_cast<uint32_t>(n);
        }
        return out;
    };
    uint32_t state = 7;
    auto rnd = [&](uint32_t n) {
        state = state * 1103515245u + 12345u;
        return (state >> 16) % n;
    };
    std::vector<std::pair<uint64_t, uint32_t>> got;
    for (int round = 0; round < 2000; round++) {
        CAPTURE(round);
        std::set<uint64_t> list;
        std::map<uint64_t, uint32_t> weights;
        BackendSet blist;
        MemberWeights bweights;
        for (int i = 0, n = static_cast<int>(rnd(12)); i < n; i++) {
            uint64_t b = 1 + rnd(40);
            list.insert(b);
            blist.insert(b);
        }
        for (int i = 0, n = static_cast<int>(rnd(12)); i < n; i++) {
            uint64_t b = 1 + rnd(40);
            uint32_t w = rnd(4) == 0 ? rnd(3) : (rnd(2) ? 1 + rnd(6) * 2 : 1 + rnd(5000));
            weights[b] = w;
            bweights[b] = w;
        }
        uint32_t max_slots = rnd(3) == 0 ? 4 + rnd(20) : KMESH_MAX_WEIGHT_SLOTS;
        weight_slots_into(blist, bweights, max_slots, got);
        auto want = oracle(list, weights, max_slots);
        CHECK(std::map<uint64_t, uint32_t>(got.begin(), got.end()) == want);
        CHECK(std::is_sorted(got.begin(), got.end()));
    }
}
