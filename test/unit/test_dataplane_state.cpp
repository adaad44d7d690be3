#include <arpa/inet.h>
#include <doctest/doctest.h>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

// Pretends a plan was executed: the MapState it leads to (ids = position order).
MapState written(const DesiredState& d) {
    MapState st;
    uint32_t id = 1;
    for (const auto& [h, b] : d.backends) {
        st.backends[h] = {id, b};
        st.backend_hash_by_id[id++] = h;
    }
    id = 1;
    for (const auto& [h, s] : d.services) {
        auto& out = st.services[h];
        out.id = id++;
        out.lb_mode = s.lb_mode;
        out.flags = s.flags;
        out.affinity_timeout = s.affinity_timeout;
        for (const auto& [b, member] : s.members) out.members[st.backends.at(b).id] = member.weight;
        for (int f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (int p = 0; p < KMESH_PRIO_COUNT; p++)
                for (const auto& [b, n] : weight_slots(s.endpoints(f, p), s.weights()))
                    for (uint32_t i = 0; i < n; i++) out.slots[f][p].push_back(st.backends.at(b).id);
    }
    st.frontends = d.frontends;
    for (const auto& [k, t] : d.frontends) st.frontends_by_service[t.service].insert(k);
    st.ports = d.ports;
    return st;
}

}  // namespace

TEST_CASE("desired state: frontends per VIP and port, target 0 means the service port") {
    Model m;
    add(m, service("echo", {"10.96.0.10", "fd00::10"}, {{80, 8080}, {443, 0}}));
    DesiredState d = build_desired(m);
    CHECK(d.frontends.size() == 4);
    for (const auto& [k, t] : d.frontends) {
        if (ntohs(k.port) == 443) CHECK(ntohs(t.target_port) == 443);
        if (ntohs(k.port) == 80) CHECK(ntohs(t.target_port) == 8080);
    }
}

TEST_CASE(
    "desired state: dual-stack backend keeps one address per family; address-less workloads are skipped") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, workload("ds", {"10.244.0.5", "fd00::5", "10.244.0.6"}, {"echo"}));
    add(m, workload("none", {}, {"echo"}));
    DesiredState d = build_desired(m);
    REQUIRE(d.backends.size() == 1);
    const auto& b = d.backends.begin()->second;
    CHECK(b.flags == (KMESH_BACKEND_HAS_V4 | KMESH_BACKEND_HAS_V6));
    CHECK(b.addr4[15] == 5);
    CHECK(d.services.begin()->second.endpoints(KMESH_FAMILY_V4, 0).size() == 1);
    CHECK(d.services.begin()->second.endpoints(KMESH_FAMILY_V6, 0).size() == 1);
}

TEST_CASE("diff: identical states give an empty plan") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}));
    add(m, workload("a", {"10.244.0.5"}, {"echo"}));
    DesiredState d = build_desired(m);
    CHECK(diff(written(d), d, Dirty{true, {}, {}}).empty());
}

TEST_CASE("diff: only the difference is planned") {
    Model before;
    add(before, service("echo", {"10.96.0.10"}));
    add(before, service("gone", {"10.96.0.11"}));
    add(before, workload("a", {"10.244.0.5"}, {"echo"}));
    add(before, workload("b", {"10.244.0.6"}, {"echo"}));
    Model after = before;
    after.services.erase("default/gone.default.svc.cluster.local");
    after.workloads.erase("Kubernetes//Pod/default/b");
    add(after, workload("c", {"10.244.0.7"}, {"echo"}));
    after.workloads["Kubernetes//Pod/default/a"].addresses = {*IpAddr::parse("10.244.0.50")};

    Plan p = diff(written(build_desired(before)), build_desired(after), Dirty{true, {}, {}});
    CHECK(p.put_backends.size() == 2);  // a changed address, c is new
    CHECK(p.put_services.empty());
    CHECK(p.add_endpoints.size() == 1);
    CHECK(p.remove_endpoints.size() == 1);
    CHECK(p.put_frontends.empty());
    CHECK(p.delete_frontends.size() == 1);
    CHECK(p.delete_services.size() == 1);
    CHECK(p.delete_backends.size() == 1);
}

TEST_CASE("name hashes are stable and never zero") {
    CHECK(name_hash("default/echo.default.svc.cluster.local") ==
          name_hash("default/echo.default.svc.cluster.local"));
    CHECK(name_hash("a") != name_hash("b"));
    CHECK(name_hash("") != 0);
}
