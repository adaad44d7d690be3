#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/policy/compile.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

const std::string kEcho = "default/echo.default.svc.cluster.local";

Workload placed(const std::string& name, const std::string& ip, const Locality& loc,
                const std::string& node) {
    Workload w = workload(name, {ip}, {"echo"});
    w.placement = Placement::intern({node, "", "", loc});
    return w;
}

int prio_of(const DesiredState& d, const std::string& uid) {
    const auto& svc = d.services.at(name_hash(kEcho));
    for (int p = 0; p < KMESH_PRIO_COUNT; p++)
        if (svc.endpoints(KMESH_FAMILY_V4, p).count(name_hash(uid))) return p;
    return -1;
}

}  // namespace

TEST_CASE("locality: priority counts the routing preferences missed, in order") {
    NodeInfo node{"node-1", "Kubernetes", "", {"eu", "eu-1a", "rack-1"}};
    Model m;
    Service s = service("echo", {"10.96.0.10"});
    s.load_balancing =
        LoadBalancing{{LbScope::kRegion, LbScope::kZone, LbScope::kSubzone}, LbMode::kFailover, false};
    add(m, s);
    add(m, placed("same-rack", "10.0.0.1", {"eu", "eu-1a", "rack-1"}, "node-2"));
    add(m, placed("same-zone", "10.0.0.2", {"eu", "eu-1a", "rack-2"}, "node-3"));
    add(m, placed("same-region", "10.0.0.3", {"eu", "eu-1b", "rack-1"}, "node-4"));
    add(m,
        placed("elsewhere", "10.0.0.4", {"us", "eu-1a", "rack-1"}, "node-5"));  // zone alone does not count
    DesiredState d = build_desired(m, node);
    CHECK(d.services.at(name_hash(kEcho)).lb_mode == KMESH_LB_FAILOVER);
    CHECK(prio_of(d, "Kubernetes//Pod/default/same-rack") == 0);
    CHECK(prio_of(d, "Kubernetes//Pod/default/same-zone") == 1);
    CHECK(prio_of(d, "Kubernetes//Pod/default/same-region") == 2);
    CHECK(prio_of(d, "Kubernetes//Pod/default/elsewhere") == 3);

    SUBCASE("STRICT keeps only full matches") {
        m.services[kEcho].load_balancing->mode = LbMode::kStrict;
        DesiredState strict = build_desired(m, node);
        CHECK(strict.services.at(name_hash(kEcho)).lb_mode == KMESH_LB_STRICT);
        CHECK(prio_of(strict, "Kubernetes//Pod/default/same-rack") == 0);
        CHECK(prio_of(strict, "Kubernetes//Pod/default/same-zone") == -1);
    }
    SUBCASE("NODE scope compares node names") {
        m.services[kEcho].load_balancing->routing_preference = {LbScope::kNode};
        Placement p = *m.workloads["Kubernetes//Pod/default/same-zone"].placement;
        p.node = "node-1";
        m.workloads["Kubernetes//Pod/default/same-zone"].placement = Placement::intern(p);
        DesiredState byNode = build_desired(m, node);
        CHECK(prio_of(byNode, "Kubernetes//Pod/default/same-zone") == 0);
        CHECK(prio_of(byNode, "Kubernetes//Pod/default/same-rack") == 1);
    }
}

TEST_CASE("locality: learnt from a workload on this node, and every service re-ranked") {
    MeshState mesh(NodeInfo{"node-1", "", "", {}}, true);
    Service s = service("echo", {"10.96.0.10"});
    s.load_balancing = LoadBalancing{{LbScope::kZone}, LbMode::kFailover, false};
    mesh.upsert_service(s);
    mesh.upsert_workload(placed("far", "10.0.0.1", {"eu", "eu-1b", ""}, "node-7"));
    CHECK(prio_of(mesh.desired(), "Kubernetes//Pod/default/far") == 1);  // node zone still unknown ("")
    Workload local = placed("local", "10.0.0.2", {"eu", "eu-1b", ""}, "node-1");
    mesh.upsert_workload(local);
    CHECK(mesh.node().locality.zone == "eu-1b");
    CHECK(prio_of(mesh.desired(), "Kubernetes//Pod/default/far") == 0);
}

TEST_CASE("health: unhealthy workloads are endpoints only with ALLOW_ALL") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    Workload w = workload("sick", {"10.0.0.9"}, {"echo"});
    w.status = WorkloadStatus::kUnhealthy;
    add(m, w);
    CHECK(prio_of(build_desired(m), w.uid) == -1);
    m.services[kEcho].load_balancing = LoadBalancing{{}, LbMode::kUnspecified, true};
    CHECK(prio_of(build_desired(m), w.uid) == 0);
}

TEST_CASE("per-workload target ports become overrides and flag the frontend") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}, {{80, 0}, {443, 8443}}));  // 80: "see each workload"
    Workload a = workload("a", {"10.0.0.1"}, {"echo"});
    a.services[kEcho] = {{80, 8080}, {443, 8443}};
    Workload b = workload("b", {"10.0.0.2"}, {"echo"});
    b.services[kEcho] = {{80, 9090}};
    add(m, a);
    add(m, b);
    DesiredState d = build_desired(m);
    CHECK(d.ports.size() == 2);  // 443 matches the service's own target: no override
    CHECK(ntohs(d.ports.at(PortKey{name_hash(a.uid), name_hash(kEcho), htons(80)})) == 8080);
    CHECK(ntohs(d.ports.at(PortKey{name_hash(b.uid), name_hash(kEcho), htons(80)})) == 9090);
    for (const auto& [k, t] : d.frontends) {
        if (ntohs(k.port) == 80) CHECK(t.flags == KMESH_FRONTEND_PER_WORKLOAD_PORTS);
        if (ntohs(k.port) == 443) CHECK(t.flags == 0);
    }
}

TEST_CASE("incremental: one workload change dirties only its backend and its services") {
    MeshState mesh;
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, service("other", {"10.96.0.11"}));
    add(m, workload("a", {"10.0.0.1"}, {"echo"}));
    add(m, workload("b", {"10.0.0.2"}, {"other"}));
    mesh.replace(m);
    mesh.take_dirty();
    Workload a = m.workloads["Kubernetes//Pod/default/a"];
    a.addresses = {*IpAddr::parse("10.0.0.100")};
    mesh.upsert_workload(a);
    Dirty d = mesh.take_dirty();
    CHECK(d.backends == BackendSet{name_hash(a.uid)});
    CHECK(d.services == BackendSet{name_hash(kEcho)});
    mesh.upsert_workload(a);  // unchanged: nothing to do
    CHECK(mesh.take_dirty().empty());
}

TEST_CASE("replace applies only the difference between two models") {
    MeshState mesh;
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    for (int i = 0; i < 50; i++)
        add(m, workload(fmt::format("w{}", i), {fmt::format("10.0.1.{}", i + 1)}, {"echo"}));
    mesh.replace(m);
    mesh.take_dirty();
    m.workloads.erase("Kubernetes//Pod/default/w7");
    mesh.replace(m);
    Dirty d = mesh.take_dirty();
    CHECK(d.backends.size() == 1);
    CHECK(d.services.size() == 1);
    CHECK(mesh.desired().services.at(name_hash(kEcho)).endpoints(KMESH_FAMILY_V4, 0).size() == 49);
}

namespace {

// DesiredState without the names map (kept for dumps, not part of what the maps must hold).
bool same_contents(const DesiredState& a, const DesiredState& b) {
    return a.services == b.services && a.backends == b.backends && a.frontends == b.frontends &&
           a.ports == b.ports;
}

}  // namespace

namespace {

// An independent from-scratch statement of what the maps must hold for a model, written from the
// rules in README.md and the ABI header. It shares no code with MeshState (only name_hash, the id
// scheme itself), so the randomised test below compares two separate derivations.
DesiredState oracle(const Model& m, const NodeInfo& node) {
    DesiredState d;
    for (const auto& [uid, w] : m.workloads) {
        DesiredBackend b;
        for (const auto& a : w.addresses) {
            static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            bool v4 = std::memcmp(a.bytes.data(), kMapped, 12) == 0;
            uint32_t bit = v4 ? KMESH_BACKEND_HAS_V4 : KMESH_BACKEND_HAS_V6;
            if (b.flags & bit) continue;  // the first address of each family
            (v4 ? b.addr4 : b.addr6) = a.bytes;
            b.flags |= bit;
        }
        if (b.flags) d.backends[name_hash(uid)] = b;
    }
    std::map<kmesh_frontend_key, std::vector<uint64_t>> claims;
    for (const auto& [key, s] : m.services) {
        uint64_t hs = name_hash(key);
        DesiredService ds;
        const auto& lb = s.load_balancing;
        if (lb && lb->mode == LbMode::kStrict) ds.lb_mode = KMESH_LB_STRICT;
        if (lb && lb->mode == LbMode::kFailover) ds.lb_mode = KMESH_LB_FAILOVER;
        // Service options of the standalone file (docs/lb.md).
        if (s.round_robin) ds.flags |= KMESH_SERVICE_ROUND_ROBIN;
        if (s.affinity_timeout) ds.flags |= KMESH_SERVICE_AFFINITY;
        ds.affinity_timeout = s.affinity_timeout;
        std::set<uint16_t> overridden;  // service ports (host order) with a per-workload port
        for (const auto& [uid, w] : m.workloads) {
            uint64_t hw = name_hash(uid);
            auto listed = w.services.find(key);
            auto backend = d.backends.find(hw);
            if (listed == w.services.end() || backend == d.backends.end()) continue;
            if (w.status != WorkloadStatus::kHealthy && !(lb && lb->allow_unhealthy)) continue;
            // A named service port (target 0) the workload does not map: it cannot serve that
            // port, and endpoint lists are per service, so it serves none of them.
            bool serves_all = true;
            for (const auto& port : s.ports) {
                if (port.target_port) continue;
                bool mapped = false;
                for (const auto& p : listed->second) mapped = mapped || p.service_port == port.service_port;
                serves_all = serves_all && mapped;
            }
            if (!serves_all) continue;
            size_t prio = 0;
            if (lb && !lb->routing_preference.empty()) {
                size_t same = 0;
                for (LbScope scope : lb->routing_preference) {
                    const Placement& p = *w.placement;
                    bool eq = scope == LbScope::kRegion    ? p.locality.region == node.locality.region
                              : scope == LbScope::kZone    ? p.locality.zone == node.locality.zone
                              : scope == LbScope::kSubzone ? p.locality.subzone == node.locality.subzone
                              : scope == LbScope::kNode    ? p.node == node.node
                              : scope == LbScope::kCluster ? p.cluster_id == node.cluster_id
                                                           : p.network == node.network;
                    if (!eq) break;
                    same++;
                }
                prio = std::min<size_t>(lb->routing_preference.size() - same, KMESH_PRIO_COUNT - 1);
                if (lb->mode == LbMode::kStrict && prio != 0) continue;
            }
            // Every endpoint workload is a member with its capacity; capacity 0 (draining) is in no
            // list.
            // A member's lists: the families its backend has, at its priority (none, and no
            // priority, while draining).
            DesiredMember member{w.capacity, 0, 0};
            if (w.capacity && backend->second.flags & KMESH_BACKEND_HAS_V4)
                member.families |= 1 << KMESH_FAMILY_V4;
            if (w.capacity && backend->second.flags & KMESH_BACKEND_HAS_V6)
                member.families |= 1 << KMESH_FAMILY_V6;
            if (member.families) member.prio = static_cast<uint8_t>(prio);
            ds.members[hw] = member;
            for (const auto& port : s.ports) {
                uint16_t dflt = port.target_port ? port.target_port : port.service_port, own = dflt;
                for (const auto& p : listed->second)
                    if (p.service_port == port.service_port && p.target_port) own = p.target_port;
                if (own == dflt) continue;
                d.ports[PortKey{hw, hs, htons(port.service_port)}] = htons(own);
                overridden.insert(port.service_port);
            }
        }
        for (const auto& vip : s.addresses) {
            // PASSTHROUGH services and VIPs no capture sees (unspecified, loopback, multicast)
            // publish nothing: connects to them go where the client sent them.
            const uint8_t* b = vip.bytes.data();
            static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            static const uint8_t kZero[16] = {};
            bool v4 = std::memcmp(b, kMapped, 12) == 0;
            bool local = v4 ? (b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] == 0) || b[12] == 127 ||
                                  (b[12] & 0xf0) == 0xe0
                            : std::memcmp(b, kZero, 16) == 0 ||
                                  (std::memcmp(b, kZero, 15) == 0 && b[15] == 1) || b[0] == 0xff;
            if (local || (lb && lb->mode == LbMode::kPassthrough)) continue;
            for (const auto& port : s.ports) {
                kmesh_frontend_key fk{};
                std::memcpy(fk.addr, vip.bytes.data(), 16);
                fk.port = htons(port.service_port);
                uint16_t target = port.target_port ? port.target_port : port.service_port;
                ds.frontends[fk] = FrontendTarget{
                    hs, htons(target),
                    static_cast<uint16_t>(
                        overridden.count(port.service_port) ? KMESH_FRONTEND_PER_WORKLOAD_PORTS : 0)};
                claims[fk].push_back(hs);
            }
        }
        d.services[hs] = ds;
    }
    for (const auto& [fk, hashes] : claims) {  // the largest name hash holds a shared VIP
        uint64_t winner = *std::max_element(hashes.begin(), hashes.end());
        d.frontends[fk] = d.services.at(winner).frontends.at(fk);
    }
    return d;
}

}  // namespace

TEST_CASE("the independent oracle agrees with hand-checked cases") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}, {{80, 0}}));
    Workload a = workload("a", {"10.0.0.1", "fd00::1"}, {"echo"});
    a.services[kEcho] = {{80, 9000}};
    add(m, a);
    Workload b = workload("b", {"10.0.0.2"}, {"echo"});
    b.services[kEcho] = {{80, 9001}};
    add(m, b);
    add(m, workload("c", {"10.0.0.3"}, {"echo"}));  // no mapping for the named port: left out
    DesiredState d = oracle(m, {});
    const auto& svc = d.services.at(name_hash(kEcho));
    CHECK(svc.endpoints(KMESH_FAMILY_V4, 0) == BackendSet{name_hash(a.uid), name_hash(b.uid)});
    CHECK(svc.endpoints(KMESH_FAMILY_V6, 0) == BackendSet{name_hash(a.uid)});
    CHECK(d.ports.size() == 2);
    CHECK(d.frontends.begin()->second.flags == KMESH_FRONTEND_PER_WORKLOAD_PORTS);
    CHECK(same_contents(d, build_desired(m)));
}

TEST_CASE("incremental updates always equal an independent from-scratch model (randomised sequences)") {
    const std::vector<std::string> vips{"10.96.0.1", "10.96.0.2", "fd00::3"};
    const std::vector<std::vector<ServicePort>> port_sets{
        {{80, 0}}, {{80, 8080}}, {{53, 0}, {53, 0}}, {{80, 0}, {443, 8443}}};
    NodeInfo node{"node-1", "c1", "", {"eu", "eu-1a", ""}};
    for (uint32_t seed = 1; seed <= 300; seed++) {
        CAPTURE(seed);
        uint32_t state = seed;
        auto rnd = [&](uint32_t n) {
            state = state * 1103515245u + 12345u;
            return (state >> 16) % n;
        };
        MeshState mesh(node);
        for (int step = 0; step < 40; step++) {
            CAPTURE(step);
            std::string svc_name = "s" + std::to_string(rnd(4));
            std::string key = "default/" + svc_name + ".default.svc.cluster.local";
            switch (rnd(5)) {
                case 0: {
                    Service s = service(svc_name, {vips[rnd(3)]}, port_sets[rnd(4)]);
                    if (rnd(2)) s.addresses.push_back(*IpAddr::parse(vips[rnd(3)]));
                    if (rnd(3) == 0)
                        s.load_balancing = LoadBalancing{{LbScope::kRegion, LbScope::kZone},
                                                         rnd(2) ? LbMode::kFailover : LbMode::kStrict,
                                                         rnd(2) == 0};
                    s.round_robin = rnd(3) == 0;
                    if (rnd(3) == 0) s.affinity_timeout = 1 + rnd(100);
                    mesh.upsert_service(s);
                    break;
                }
                case 1:
                    mesh.remove_service(key);
                    break;
                case 2:
                case 3: {
                    std::string name = "w" + std::to_string(rnd(8));
                    Workload w = workload(name, {}, {});
                    if (rnd(4))
                        w.addresses.push_back(*IpAddr::parse("10.0.0." + std::to_string(rnd(200) + 1)));
                    if (rnd(3) == 0)  // IPv6-only and dual-stack workloads: per-family endpoint lists
                        w.addresses.push_back(*IpAddr::parse("fd00::" + std::to_string(rnd(200) + 1)));
                    for (int i = 0, n = static_cast<int>(rnd(3)); i < n; i++) {
                        std::string k = "default/s" + std::to_string(rnd(4)) + ".default.svc.cluster.local";
                        w.services[k] =
                            rnd(2) ? std::vector<ServicePort>{{80, static_cast<uint16_t>(9000 + rnd(3))}}
                                   : std::vector<ServicePort>{};
                    }
                    w.status = rnd(4) ? WorkloadStatus::kHealthy : WorkloadStatus::kUnhealthy;
                    w.capacity = rnd(5);  // 0: draining
                    w.placement = Placement::intern(
                        {"node-" + std::to_string(rnd(2)), "", "c1",
                         rnd(2) ? Locality{"eu", "eu-1a", ""} : Locality{"eu", "eu-1b", ""}});
                    mesh.upsert_workload(w);
                    break;
                }
                case 4:
                    mesh.remove_workload("Kubernetes//Pod/default/w" + std::to_string(rnd(8)));
                    break;
            }
            REQUIRE(same_contents(mesh.desired(), oracle(mesh.model(), node)));
            // The running count of this node's workloads equals authorization's own test applied
            // to every workload of the model (workloads move between nodes, lose their address).
            size_t local = 0;
            for (const auto& [uid, w] : mesh.model().workloads) local += policy::is_local(w, node.node);
            REQUIRE(mesh.local_workloads() == local);
        }
    }
}

TEST_CASE("local_workloads: none without a node name, whatever the workloads say") {
    MeshState mesh;  // no node: the agent treats every workload as local without asking the count
    Workload w = workload("a", {"10.0.0.1"}, {});
    mesh.upsert_workload(w);
    CHECK(mesh.local_workloads() == 0);
    MeshState named(NodeInfo{"node-1", "", "", {}});
    w.placement = Placement::intern({"node-1", "", "", {}});
    named.upsert_workload(w);
    CHECK(named.local_workloads() == 1);
    named.upsert_workload(w);  // unchanged: not counted twice
    CHECK(named.local_workloads() == 1);
    named.remove_workload(w.uid);
    CHECK(named.local_workloads() == 0);
}

TEST_CASE("a VIP claimed by two services goes back to the other when one lets go") {
    MeshState mesh;
    mesh.upsert_service(service("a", {"10.96.0.10"}));
    mesh.upsert_service(service("b", {"10.96.0.10"}));
    REQUIRE(mesh.desired().frontends.size() == 1);
    mesh.remove_service(mesh.desired().frontends.begin()->second.service ==
                                name_hash("default/a.default.svc.cluster.local")
                            ? "default/a.default.svc.cluster.local"
                            : "default/b.default.svc.cluster.local");
    CHECK(mesh.desired().frontends.size() == 1);  // the remaining claimant holds it
}

TEST_CASE("VIP conflicts: listed with winner and losers, logged once, counted, resolved") {
    auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
    auto previous = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("vip-test", sink));
    auto logged = [&](const std::string& text) {
        auto lines = sink->last_formatted();
        return std::count_if(lines.begin(), lines.end(),
                             [&](const std::string& l) { return l.find(text) != std::string::npos; });
    };
    const std::string ka = "default/a.default.svc.cluster.local", kb = "default/b.default.svc.cluster.local";
    const std::string winner = name_hash(ka) > name_hash(kb) ? ka : kb, loser = winner == ka ? kb : ka;

    MeshState mesh;
    mesh.upsert_service(service("a", {"10.96.0.10"}));
    CHECK(mesh.vip_conflicts().empty());
    mesh.upsert_service(service("b", {"10.96.0.10", "10.96.0.11"}));
    auto c = mesh.vip_conflicts();
    REQUIRE(c.size() == 1);
    CHECK(c[0].frontend == "10.96.0.10:80");
    CHECK(c[0].winner == winner);
    CHECK(c[0].losers == std::vector<std::string>{loser});
    CHECK(mesh.vip_conflict_count() == 1);
    CHECK(mesh.desired().frontends.begin()->second.service == name_hash(winner));
    // Unrelated updates of the claimants do not log the same conflict again.
    mesh.upsert_service(service("b", {"10.96.0.10", "10.96.0.11"}, {{80, 9090}}));
    mesh.upsert_workload(workload("w", {"10.0.0.1"}, {"a", "b"}));
    CHECK(logged("VIP conflict: 10.96.0.10:80 is claimed by 2 services; " + winner + " holds it") == 1);

    mesh.remove_service(loser);
    CHECK(mesh.vip_conflicts().empty());
    CHECK(mesh.vip_conflict_count() == 0);
    CHECK(logged("VIP conflict on 10.96.0.10:80 resolved") == 1);
    spdlog::set_default_logger(previous);
}

TEST_CASE("a service upserted after its workloads (istiod's order) lists them; removal and re-add too") {
    MeshState mesh;
    Workload a = workload("a", {"10.0.0.1", "fd00::1"}, {"echo"});
    Workload b = workload("b", {"10.0.0.2"}, {"echo"});
    b.capacity = 0;  // draining: a member, in no list
    Workload c = workload("c", {"10.0.0.3"}, {"echo"});
    c.services[kEcho] = {{80, 9000}};
    for (const auto* w : {&a, &b, &c}) mesh.upsert_workload(*w);
    const uint64_t hs = name_hash(kEcho), ha = name_hash(a.uid), hb = name_hash(b.uid), hc = name_hash(c.uid);
    CHECK(mesh.desired().services.count(hs) == 0);  // no service yet: nobody is an endpoint
    mesh.upsert_service(service("echo", {"10.96.0.10"}, {{80, 8080}}));
    auto check = [&](const BackendSet& v4, const BackendSet& v6, const MemberWeights& weights) {
        const DesiredService& ds = mesh.desired().services.at(hs);
        CHECK(ds.endpoints(KMESH_FAMILY_V4, 0) == v4);
        CHECK(ds.endpoints(KMESH_FAMILY_V6, 0) == v6);
        for (uint32_t p = 1; p < KMESH_PRIO_COUNT; p++) CHECK(ds.endpoints(KMESH_FAMILY_V4, p).empty());
        CHECK(ds.weights() == weights);
    };
    check({ha, hc}, {ha}, {{ha, 1}, {hb, 0}, {hc, 1}});
    CHECK(ntohs(mesh.desired().ports.at(PortKey{hc, hs, htons(80)})) == 9000);
    CHECK(mesh.desired().frontends.begin()->second.flags == KMESH_FRONTEND_PER_WORKLOAD_PORTS);
    // The service changes (another target port): every member is refreshed against it.
    mesh.upsert_service(service("echo", {"10.96.0.10"}, {{80, 9000}}));
    CHECK(mesh.desired().ports.empty());  // c's 9000 is now the service's own target
    CHECK(mesh.desired().frontends.begin()->second.flags == 0);
    check({ha, hc}, {ha}, {{ha, 1}, {hb, 0}, {hc, 1}});
    mesh.remove_workload(a.uid);
    check({hc}, {}, {{hb, 0}, {hc, 1}});
    mesh.remove_service(kEcho);
    CHECK(mesh.desired().services.empty());
    CHECK(mesh.desired().frontends.empty());
    mesh.upsert_service(service("echo", {"10.96.0.10"}, {{80, 8080}}));
    check({hc}, {}, {{hb, 0}, {hc, 1}});
    CHECK(same_contents(mesh.desired(), oracle(mesh.model(), {})));
}
