// One set of rules for both config sources, and the model -> desired-state rules that follow
// ztunnel: named ports resolved per workload, PASSTHROUGH services, VIPs ztunnel never captures.
#include <arpa/inet.h>
#include <doctest/doctest.h>

#include "agent/src/dataplane/dataplane_state.hpp"
#include "agent/src/sources/file/config_file.hpp"
#include "agent/src/sources/xds/convert.hpp"
#include "model_builders.hpp"

using namespace kmesh;
using namespace kmesh::test;

namespace {

const std::string kEcho = "default/echo.default.svc.cluster.local";

int endpoint_prio(const DesiredState& d, const std::string& uid) {
    const auto& svc = d.services.at(name_hash(kEcho));
    for (int p = 0; p < KMESH_PRIO_COUNT; p++)
        for (uint32_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            if (svc.endpoints(f, p).count(name_hash(uid))) return p;
    return -1;
}

std::string yaml_problems(const std::string& yaml) {
    auto r = parse_config_yaml(yaml);
    auto* e = std::get_if<ConfigError>(&r);
    return e ? e->summary() : "";
}

}  // namespace

TEST_CASE("named port: a workload without an entry for it is no endpoint (ztunnel skips it)") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}, {{80, 0}}));  // target 0: resolved per workload
    Workload a = workload("a", {"10.0.0.1"}, {"echo"});
    a.services[kEcho] = {{80, 8080}};
    Workload b = workload("b", {"10.0.0.2"}, {"echo"});  // lists echo, but not its port 80
    add(m, a);
    add(m, b);
    DesiredState d = build_desired(m);
    CHECK(endpoint_prio(d, a.uid) == 0);
    CHECK(endpoint_prio(d, b.uid) == -1);
    // Incrementally too: b gains the port, then loses it again.
    MeshState mesh;
    mesh.replace(m);
    b.services[kEcho] = {{80, 9090}};
    mesh.upsert_workload(b);
    CHECK(endpoint_prio(mesh.desired(), b.uid) == 0);
    CHECK(ntohs(mesh.desired().ports.at(PortKey{name_hash(b.uid), name_hash(kEcho), htons(80)})) == 9090);
    b.services[kEcho] = {};
    mesh.upsert_workload(b);
    CHECK(endpoint_prio(mesh.desired(), b.uid) == -1);
    CHECK(mesh.desired().ports.count(PortKey{name_hash(b.uid), name_hash(kEcho), htons(80)}) == 0);
}

TEST_CASE("named port on a multi-port service: the workload must serve every named port") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}, {{80, 0}, {9000, 0}, {443, 8443}}));
    Workload a = workload("a", {"10.0.0.1"}, {"echo"});
    a.services[kEcho] = {{80, 8080}, {9000, 9100}};
    Workload b = workload("b", {"10.0.0.2"}, {"echo"});
    b.services[kEcho] = {{80, 8080}};  // no 9000: a connect to :9000 must not reach it
    add(m, a);
    add(m, b);
    DesiredState d = build_desired(m);
    CHECK(endpoint_prio(d, a.uid) == 0);
    CHECK(endpoint_prio(d, b.uid) == -1);
}

TEST_CASE("a numbered service port needs no entry on the workload") {
    Model m;
    add(m, service("echo", {"10.96.0.10"}, {{80, 8080}}));
    add(m, workload("a", {"10.0.0.1"}, {"echo"}));
    CHECK(endpoint_prio(build_desired(m), "Kubernetes//Pod/default/a") == 0);
}

TEST_CASE("PASSTHROUGH: no endpoint selection, so no frontend; connects go where they were made") {
    Model m;
    Service s = service("echo", {"10.96.0.10", "fd00::10"});
    s.load_balancing = LoadBalancing{{}, LbMode::kPassthrough, false};
    add(m, s);
    add(m, workload("a", {"10.0.0.1"}, {"echo"}));
    CHECK(build_desired(m).frontends.empty());
    // A VIP it shares with a load-balanced service is that one's.
    Service other = service("other", {"10.96.0.10"});
    add(m, other);
    DesiredState d = build_desired(m);
    REQUIRE(d.frontends.size() == 1);
    CHECK(d.frontends.begin()->second.service == name_hash(other.key()));
    // Switching the mode back publishes the frontends again.
    MeshState mesh;
    mesh.replace(m);
    s.load_balancing->mode = LbMode::kUnspecified;
    mesh.upsert_service(s);
    CHECK(mesh.desired().frontends.size() == 2);
}

TEST_CASE("PASSTHROUGH is accepted by both sources alike") {
    auto r = parse_config_yaml(
        "services:\n- {hostname: echo.default.svc.cluster.local, namespace: default, addresses: [10.96.0.10],"
        " ports: [{service_port: 80}], load_balancing: {mode: PASSTHROUGH}}\n");
    REQUIRE(std::holds_alternative<Model>(r));
    istio::workload::Service in;
    in.set_namespace_("default");
    in.set_hostname("echo.default.svc.cluster.local");
    in.add_addresses()->set_address(std::string("\x0a\x60\x00\x0a", 4));
    auto* p = in.add_ports();
    p->set_service_port(80);
    p->set_target_port(80);
    in.mutable_load_balancing()->set_mode(istio::workload::LoadBalancing::PASSTHROUGH);
    Service from_xds;
    REQUIRE(xds::convert_service(in, &from_xds) == "");
    CHECK(std::get<Model>(r).services.at(kEcho) == from_xds);
    CHECK(build_desired(std::get<Model>(r)).frontends.empty());
}

TEST_CASE("VIPs ztunnel accepts but never captures (loopback, unspecified, multicast) get no frontend") {
    Model m;
    add(m, service("echo", {"127.0.0.1", "0.0.0.0", "::1", "::", "224.0.0.1", "ff02::1", "10.96.0.10"}));
    add(m, workload("a", {"10.0.0.1"}, {"echo"}));
    DesiredState d = build_desired(m);
    REQUIRE(d.frontends.size() == 1);
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, d.frontends.begin()->first.addr, text, sizeof text);
    CHECK(std::string(text) == "::ffff:10.96.0.10");
    // Both sources accept such a service, as ztunnel does.
    CHECK(yaml_problems("services:\n- {hostname: a, namespace: x, addresses: [127.0.0.1, 0.0.0.0]}\n") == "");
    istio::workload::Service in;
    in.set_namespace_("x");
    in.set_hostname("a");
    in.add_addresses()->set_address(std::string("\x7f\x00\x00\x01", 4));
    Service out;
    CHECK(xds::convert_service(in, &out) == "");
}

TEST_CASE("both sources refuse the same things in the same words") {
    // An empty uid.
    std::string from_yaml = yaml_problems("workloads:\n- {name: echo-1, namespace: default}\n");
    istio::workload::Workload w;
    w.set_name("echo-1");
    w.set_namespace_("default");
    Workload out;
    std::string from_xds = xds::convert_workload(w, &out);
    CHECK(from_xds == "workload 'default/echo-1' has an empty uid");
    CHECK(from_yaml.find(from_xds) != std::string::npos);
    // A service key that is not namespace/hostname.
    from_yaml = yaml_problems("workloads:\n- {uid: u1, services: {nohost: }}\n");
    istio::workload::Workload w2;
    w2.set_uid("u1");
    (*w2.mutable_services())["nohost"];
    from_xds = xds::convert_workload(w2, &out);
    CHECK(from_xds == "workload 'u1': service key 'nohost' is not \"namespace/hostname\"");
    CHECK(from_yaml.find(from_xds) != std::string::npos);
    // A service without a namespace.
    from_yaml = yaml_problems("services:\n- {hostname: a.b}\n");
    istio::workload::Service s;
    s.set_hostname("a.b");
    Service sout;
    from_xds = xds::convert_service(s, &sout);
    CHECK(from_xds == "service '/a.b' has an empty namespace");
    CHECK(from_yaml.find(from_xds) != std::string::npos);
}
