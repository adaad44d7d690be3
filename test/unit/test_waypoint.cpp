// Waypoint redirect: desired state (which addresses go to which waypoint, where each waypoint is)
// and the writer's ordering (a waypoint is written before any address points at it, addresses are
// unlinked before it goes), against a fake kernel that checks that invariant after every mutation.
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>

#include "agent/src/dataplane/map_writer.hpp"
#include "fake_map_ops.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

const std::string kWpService = "default/waypoint.default.svc.cluster.local";

Waypoint by_host(const std::string& key, uint16_t port = 15008) {
    Waypoint w;
    w.hostname = key;
    w.port = port;
    return w;
}

Waypoint by_addr(const std::string& ip, uint16_t port = 15008) {
    Waypoint w;
    w.address = *IpAddr::parse(ip);
    w.port = port;
    return w;
}

kmesh_wp_dest_key dest(const std::string& ip) {
    kmesh_wp_dest_key k{};
    std::memcpy(k.addr, IpAddr::parse(ip)->bytes.data(), 16);
    return k;
}

uint64_t wp_id(const Waypoint& w) { return name_hash("waypoint:" + waypoint_name(w)); }

std::string addr_of(const uint8_t* bytes) {
    IpAddr a;
    std::memcpy(a.bytes.data(), bytes, 16);
    return a.str();
}

// echo (10.96.0.10, fd00:96::10) with a waypoint named by hostname; the waypoint's own service and
// its pod; a workload w1 with a waypoint given by the waypoint pod's IPv4 address.
Model mesh() {
    Model m;
    Service echo = service("echo", {"10.96.0.10", "fd00:96::10"});
    echo.waypoint = by_host(kWpService);
    add(m, echo);
    add(m, service("waypoint", {"10.96.0.50", "fd00:96::50"}, {{15019, 15019}}));
    add(m, workload("wp", {"10.244.0.9", "fd00:10:244::9"}, {"waypoint"}));
    Workload w1 = workload("w1", {"10.244.0.21", "fd00:10:244::21"}, {});
    w1.waypoint = Waypoint::intern(by_addr("10.244.0.9"));
    add(m, w1);
    return m;
}

// Every address points at a waypoint that exists: what connect() relies on at every instant.
std::string dangling(const FakeMapOps& ops) {
    std::string out;
    ops.for_each(MapId::kWaypointDest, [&](const void*, const void* v) {
        kmesh_wp_dest_value dv;
        std::memcpy(&dv, v, sizeof dv);
        kmesh_waypoint_value wv;
        if (!ops.get(MapId::kWaypoint, dv.waypoint_id, &wv)) out = "address points at a missing waypoint";
        return out.empty();
    });
    return out;
}

}  // namespace

TEST_CASE("waypoint: a hostname resolves to the VIPs of that service, port 15019 whatever hbone_mtls_port") {
    DesiredState d = build_desired(mesh());
    uint64_t id = wp_id(by_host(kWpService));
    REQUIRE(d.waypoints.count(id));
    const auto& v = d.waypoints.at(id);
    CHECK(v.flags == (KMESH_WAYPOINT_HAS_V4 | KMESH_WAYPOINT_HAS_V6));
    CHECK(addr_of(v.addr4) == "10.96.0.50");
    CHECK(addr_of(v.addr6) == "fd00:96::50");
    CHECK(ntohs(v.port) == 15019);
    CHECK(ntohs(v.lookup_port) == 15008);  // a pod of Istio's waypoint service is picked through it
    // Both of echo's VIPs go to it, as service VIPs.
    for (const char* vip : {"10.96.0.10", "fd00:96::10"}) {
        REQUIRE(d.waypoint_dests.count(dest(vip)));
        CHECK(d.waypoint_dests.at(dest(vip)).waypoint_id == id);
        CHECK(d.waypoint_dests.at(dest(vip)).kind == KMESH_WP_KIND_SERVICE);
    }
}

TEST_CASE("waypoint: an address waypoint gains its workload's other family; workload addresses point at it") {
    DesiredState d = build_desired(mesh());
    uint64_t id = wp_id(by_addr("10.244.0.9"));
    REQUIRE(d.waypoints.count(id));
    CHECK(addr_of(d.waypoints.at(id).addr4) == "10.244.0.9");
    CHECK(addr_of(d.waypoints.at(id).addr6) == "fd00:10:244::9");
    CHECK(d.waypoints.at(id).lookup_port == 0);  // an address is connected to directly
    for (const char* a : {"10.244.0.21", "fd00:10:244::21"}) {
        REQUIRE(d.waypoint_dests.count(dest(a)));
        CHECK(d.waypoint_dests.at(dest(a)).waypoint_id == id);
        CHECK(d.waypoint_dests.at(dest(a)).kind == KMESH_WP_KIND_WORKLOAD);
    }
    CHECK(d.waypoint_dests.size() == 4);  // echo's two VIPs and w1's two addresses, nothing else
}

TEST_CASE("waypoint: an IPv6-only waypoint has only the IPv6 flag") {
    Model m;
    Service s = service("v6", {"10.96.0.20", "fd00:96::20"});
    s.waypoint = by_addr("fd00:10:244::7");
    add(m, s);
    add(m, workload("wp6", {"fd00:10:244::7"}, {}));
    DesiredState d = build_desired(m);
    REQUIRE(d.waypoints.size() == 1);
    CHECK(d.waypoints.begin()->second.flags == KMESH_WAYPOINT_HAS_V6);
}

TEST_CASE("waypoint: an unknown hostname keeps its users pointed at an address-less waypoint (fail closed)") {
    Model m;
    Service s = service("echo", {"10.96.0.10"});
    s.waypoint = by_host("default/missing.default.svc.cluster.local");
    add(m, s);
    DesiredState d = build_desired(m);
    REQUIRE(d.waypoints.size() == 1);
    CHECK(d.waypoints.begin()->second.flags == 0);
    CHECK(d.waypoint_dests.count(dest("10.96.0.10")) == 1);
}

TEST_CASE("waypoint: loops are never built") {
    Model m = mesh();
    // wp is its own waypoint, and the waypoint's service names itself too.
    m.workloads.at("Kubernetes//Pod/default/wp").waypoint = Waypoint::intern(by_addr("10.244.0.9"));
    m.services.at(kWpService).waypoint = by_host(kWpService);
    DesiredState d = build_desired(m);
    for (const char* a : {"10.244.0.9", "fd00:10:244::9", "10.96.0.50", "fd00:96::50"})
        CHECK_MESSAGE(d.waypoint_dests.count(dest(a)) == 0, a);
    CHECK(d.waypoint_dests.count(dest("10.96.0.10")) == 1);  // others still go through it
}

TEST_CASE("waypoint: a service VIP wins over a workload address; loopback VIPs are ignored") {
    Model m = mesh();
    Service odd = service("odd", {"10.244.0.21", "127.0.0.5"});  // w1's address as a VIP
    odd.waypoint = by_host(kWpService);
    add(m, odd);
    DesiredState d = build_desired(m);
    CHECK(d.waypoint_dests.at(dest("10.244.0.21")).kind == KMESH_WP_KIND_SERVICE);
    CHECK(d.waypoint_dests.count(dest("127.0.0.5")) == 0);
}

TEST_CASE("waypoint: incremental changes follow the hostname and address they depend on") {
    MeshState ms;
    ms.replace(mesh());
    ms.take_dirty();
    // Only the waypoint's service moves its VIP: the waypoint follows.
    Service wps = mesh().services.at(kWpService);
    wps.addresses = {*IpAddr::parse("10.96.0.51")};
    ms.upsert_service(wps);
    Dirty dirty = ms.take_dirty();
    CHECK(dirty.waypoints);
    const auto& v = ms.desired().waypoints.at(wp_id(by_host(kWpService)));
    CHECK(v.flags == KMESH_WAYPOINT_HAS_V4);
    CHECK(addr_of(v.addr4) == "10.96.0.51");
    // Only the waypoint pod loses its IPv6 address: the address waypoint loses that family.
    Workload wp = mesh().workloads.at("Kubernetes//Pod/default/wp");
    wp.addresses = {*IpAddr::parse("10.244.0.9")};
    ms.upsert_workload(wp);
    CHECK(ms.take_dirty().waypoints);
    CHECK(ms.desired().waypoints.at(wp_id(by_addr("10.244.0.9"))).flags == KMESH_WAYPOINT_HAS_V4);
    // A change that bears on no waypoint leaves the tables alone.
    ms.upsert_workload(workload("other", {"10.244.0.30"}, {}));
    CHECK_FALSE(ms.take_dirty().waypoints);
    // Removing the last user removes the waypoint and its addresses.
    ms.remove_workload("Kubernetes//Pod/default/w1");
    CHECK(ms.take_dirty().waypoints);
    CHECK(ms.desired().waypoints.count(wp_id(by_addr("10.244.0.9"))) == 0);
    CHECK(ms.desired().waypoint_dests.count(dest("10.244.0.21")) == 0);
}

TEST_CASE("waypoint writer: waypoints before the addresses that name them, addresses unlinked first") {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer(ops, MapState{}, MapCapacity{}, metrics);
    std::vector<std::string> violations;
    ops.after_mutation = [&] {
        if (auto v = dangling(ops); !v.empty()) violations.push_back(v);
    };
    MeshState ms;
    auto apply = [&](const Model& m) {
        ms.replace(m);
        return writer.apply(diff(writer.state(), ms.desired(), ms.take_dirty()));
    };
    REQUIRE(apply(mesh()) == "");
    CHECK(ops.size(MapId::kWaypoint) == 2);
    CHECK(ops.size(MapId::kWaypointDest) == 4);
    CHECK(violations.empty());

    // Recovery reads back exactly what was written; a restarted writer has nothing to do.
    MapState recovered = recover_map_state(ops);
    CHECK(recovered.waypoints == writer.state().waypoints);
    CHECK(recovered.waypoint_dests == writer.state().waypoint_dests);
    MeshState fresh;
    fresh.replace(mesh());
    fresh.mark_all_dirty();
    CHECK(diff(recovered, fresh.desired(), fresh.take_dirty()).empty());

    // Echo switches from the hostname waypoint to an address one, then loses it: every step keeps
    // each address pointed at a live waypoint.
    Model m = mesh();
    m.services.at("default/echo.default.svc.cluster.local").waypoint = by_addr("10.244.0.9");
    ops.ops.clear();
    REQUIRE(apply(m) == "");
    CHECK(violations.empty());
    CHECK(ops.size(MapId::kWaypoint) == 1);  // the hostname waypoint has no user left
    auto first_del_dest = std::find(ops.ops.begin(), ops.ops.end(), "del km_wp_dest");
    auto del_wp = std::find(ops.ops.begin(), ops.ops.end(), "del km_waypoint");
    CHECK(del_wp != ops.ops.end());
    CHECK((first_del_dest == ops.ops.end() || first_del_dest < del_wp));

    m.services.at("default/echo.default.svc.cluster.local").waypoint.reset();
    m.workloads.erase("Kubernetes//Pod/default/w1");
    ops.ops.clear();
    REQUIRE(apply(m) == "");
    CHECK(violations.empty());
    CHECK(ops.size(MapId::kWaypoint) == 0);
    CHECK(ops.size(MapId::kWaypointDest) == 0);
    REQUIRE(ops.ops.size() >= 2);
    CHECK(ops.ops.back() == "del km_waypoint");
}

TEST_CASE("waypoint writer: a failed waypoint write never leaves an address pointing at nothing") {
    FakeMapOps ops;
    Metrics metrics;
    MapWriter writer(ops, MapState{}, MapCapacity{}, metrics);
    MeshState ms;
    ms.replace(mesh());
    Plan plan = diff(writer.state(), ms.desired(), ms.take_dirty());
    ops.fail_nth_update(0);  // the very first write: a waypoint (they go first)
    CHECK(writer.apply(plan) != "");
    CHECK(dangling(ops) == "");
    // The retry (everything compared again) completes it.
    ms.mark_all_dirty();
    CHECK(writer.apply(diff(writer.state(), ms.desired(), ms.take_dirty())) == "");
    CHECK(ops.size(MapId::kWaypoint) == 2);
    CHECK(ops.size(MapId::kWaypointDest) == 4);
}

TEST_CASE("waypoint writer: the address map's size flag is named when a config does not fit") {
    MapCapacity cap;
    cap.waypoint_addrs = 3;
    MeshState ms;
    ms.replace(mesh());
    std::string e = fits(ms.desired(), cap);
    CHECK(e.find("km_wp_dest needs 4 entries") != std::string::npos);
    CHECK(e.find("--max-waypoint-addresses") != std::string::npos);
}
