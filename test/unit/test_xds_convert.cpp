#include <doctest/doctest.h>

#include "agent/src/sources/xds/convert.hpp"

using namespace kmesh;

namespace {

std::string raw(std::initializer_list<uint8_t> bytes) { return std::string(bytes.begin(), bytes.end()); }

istio::workload::Workload workload() {
    istio::workload::Workload w;
    w.set_uid("Kubernetes//Pod/default/echo-1");
    w.set_name("echo-1");
    w.set_namespace_("default");
    w.add_addresses(raw({10, 244, 0, 3}));
    w.add_addresses(raw({0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3}));
    auto& ports = (*w.mutable_services())["default/echo.default.svc.cluster.local"];
    auto* p = ports.add_ports();
    p->set_service_port(80);
    p->set_target_port(8080);
    w.set_node("node-1");
    w.mutable_locality()->set_region("eu");
    w.mutable_locality()->set_zone("eu-1a");
    w.set_status(istio::workload::UNHEALTHY);
    w.set_network_mode(istio::workload::HOST_NETWORK);
    return w;
}

}  // namespace

TEST_CASE("xds: a workload converts with addresses, per-service ports, status and locality") {
    Workload w;
    REQUIRE(xds::convert_workload(workload(), &w) == "");
    CHECK(w.uid == "Kubernetes//Pod/default/echo-1");
    REQUIRE(w.addresses.size() == 2);
    CHECK(w.addresses[0].str() == "10.244.0.3");
    CHECK(w.addresses[1].str() == "fd00::3");
    CHECK(w.services.at("default/echo.default.svc.cluster.local") == std::vector<ServicePort>{{80, 8080}});
    CHECK(w.status == WorkloadStatus::kUnhealthy);
    CHECK(w.network_mode == NetworkMode::kHostNetwork);
    CHECK(w.placement->locality == Locality{"eu", "eu-1a", ""});
    CHECK(w.placement->node == "node-1");
}

TEST_CASE("xds: invalid workloads are refused with the reason") {
    Workload w;
    auto bad = workload();
    bad.set_addresses(0, raw({1, 2, 3, 4, 5}));
    CHECK(xds::convert_workload(bad, &w) == "workload address is 5 bytes; an IP address is 4 or 16");
    bad = workload();
    bad.clear_uid();
    CHECK(xds::convert_workload(bad, &w) == "workload 'default/echo-1' has an empty uid");
    bad = workload();
    (*bad.mutable_services())["noslash"];
    CHECK(xds::convert_workload(bad, &w).find("is not \"namespace/hostname\"") != std::string::npos);
    bad = workload();
    (*bad.mutable_services())["default/echo.default.svc.cluster.local"].mutable_ports(0)->set_target_port(
        70000);
    CHECK(xds::convert_workload(bad, &w).find("not a valid port") != std::string::npos);
}

TEST_CASE("xds: a service converts with VIPs, ports, load balancing and waypoint") {
    istio::workload::Service s;
    s.set_name("echo");
    s.set_namespace_("default");
    s.set_hostname("echo.default.svc.cluster.local");
    s.add_addresses()->set_address(raw({10, 96, 0, 10}));
    auto* p = s.add_ports();
    p->set_service_port(80);
    p->set_target_port(0);
    auto* lb = s.mutable_load_balancing();
    lb->add_routing_preference(istio::workload::LoadBalancing::REGION);
    lb->add_routing_preference(istio::workload::LoadBalancing::ZONE);
    lb->set_mode(istio::workload::LoadBalancing::FAILOVER);
    s.mutable_waypoint()->mutable_address()->set_address(raw({10, 244, 0, 9}));
    s.mutable_waypoint()->set_hbone_mtls_port(15008);

    Service out;
    REQUIRE(xds::convert_service(s, &out) == "");
    CHECK(out.key() == "default/echo.default.svc.cluster.local");
    CHECK(out.addresses.at(0).str() == "10.96.0.10");
    CHECK(out.ports == std::vector<ServicePort>{{80, 0}});
    REQUIRE(out.load_balancing);
    CHECK(out.load_balancing->mode == LbMode::kFailover);
    CHECK(out.load_balancing->routing_preference == std::vector<LbScope>{LbScope::kRegion, LbScope::kZone});
    REQUIRE(out.waypoint);
    CHECK(out.waypoint->address->str() == "10.244.0.9");
    CHECK(out.waypoint->port == 15008);

    s.mutable_addresses(0)->set_address(raw({1, 2, 3}));
    CHECK(xds::convert_service(s, &out).find("3 bytes") != std::string::npos);
}

TEST_CASE("xds: authorization policies are validated") {
    istio::security::Authorization p;
    p.set_name("deny-all");
    p.set_namespace_("default");
    p.set_action(istio::security::DENY);
    auto* m = p.add_rules()->add_clauses()->add_matches();
    auto* a = m->add_source_ips();
    a->set_address(raw({10, 0, 0, 0}));
    a->set_length(8);
    CHECK(xds::validate_authorization(p) == "");
    CHECK(xds::resource_name(p) == "default/deny-all");
    a->set_length(33);
    CHECK(xds::validate_authorization(p).find("prefix length 33") != std::string::npos);
    a->set_length(8);
    m->add_destination_ports(70000);
    CHECK(xds::validate_authorization(p).find("out of range") != std::string::npos);
}

TEST_CASE("xds: fields this agent does not know parse and are ignored") {
    std::string wire = workload().SerializeAsString();
    // Field 500 (not in our subset, perhaps added by a newer istiod): varint 7, then a string.
    wire += std::string("\xa0\x1f\x07", 3);  // tag (500 << 3 | 0) as varint, value 7
    wire += std::string(
        "\xaa\x1f\x03"
        "new",
        6);  // tag (501 << 3 | 2), length 3, "new"
    istio::workload::Workload parsed;
    REQUIRE(parsed.ParseFromString(wire));
    Workload w;
    CHECK(xds::convert_workload(parsed, &w) == "");
    CHECK(w.uid == "Kubernetes//Pod/default/echo-1");
}

TEST_CASE("xds: unknown enum values are refused, naming the field and the value (as ztunnel's try_from)") {
    auto svc = [] {
        istio::workload::Service s;
        s.set_name("echo");
        s.set_namespace_("default");
        s.set_hostname("echo.default.svc.cluster.local");
        s.mutable_load_balancing();
        return s;
    };
    Service out;
    auto s = svc();
    s.mutable_load_balancing()->set_mode(static_cast<istio::workload::LoadBalancing::Mode>(77));
    CHECK(xds::convert_service(s, &out) == "load_balancing.mode has the unknown value 77");
    s = svc();
    s.mutable_load_balancing()->set_health_policy(
        static_cast<istio::workload::LoadBalancing::HealthPolicy>(5));
    CHECK(xds::convert_service(s, &out) == "load_balancing.health_policy has the unknown value 5");
    s = svc();
    s.mutable_load_balancing()->add_routing_preference(
        static_cast<istio::workload::LoadBalancing::Scope>(99));
    CHECK(xds::convert_service(s, &out) == "load_balancing.routing_preference has the unknown value 99");
    s = svc();
    s.mutable_load_balancing()->add_routing_preference(istio::workload::LoadBalancing::UNSPECIFIED_SCOPE);
    CHECK(xds::convert_service(s, &out) == "load_balancing.routing_preference has the unknown value 0");
    s = svc();
    s.set_ip_families(static_cast<istio::workload::IPFamilies>(9));
    CHECK(xds::convert_service(s, &out) == "ip_families has the unknown value 9");
    s = svc();
    s.mutable_load_balancing()->set_mode(istio::workload::LoadBalancing::PASSTHROUGH);
    REQUIRE(xds::convert_service(s, &out) == "");
    CHECK(out.load_balancing->mode == LbMode::kPassthrough);

    Workload w;
    auto bad = workload();
    bad.set_status(static_cast<istio::workload::WorkloadStatus>(3));
    CHECK(xds::convert_workload(bad, &w) == "status has the unknown value 3");
    bad = workload();
    bad.set_network_mode(static_cast<istio::workload::NetworkMode>(4));
    CHECK(xds::convert_workload(bad, &w) == "network_mode has the unknown value 4");
    bad = workload();
    bad.set_tunnel_protocol(static_cast<istio::workload::TunnelProtocol>(8));
    CHECK(xds::convert_workload(bad, &w) == "tunnel_protocol has the unknown value 8");
    // ztunnel reads workload_type through prost's lenient getter: an unknown one is accepted.
    bad = workload();
    bad.set_workload_type(static_cast<istio::workload::WorkloadType>(42));
    CHECK(xds::convert_workload(bad, &w) == "");

    istio::security::Authorization p;
    p.set_name("p");
    p.set_namespace_("default");
    p.set_action(static_cast<istio::security::Action>(7));
    CHECK(xds::validate_authorization(p) == "action has the unknown value 7");
    p.set_action(istio::security::ALLOW);
    p.set_scope(static_cast<istio::security::Scope>(6));
    CHECK(xds::validate_authorization(p) == "scope has the unknown value 6");
}

TEST_CASE("xds: a gateway address naming no destination is refused, as ztunnel does") {
    Workload w;
    auto bad = workload();
    bad.mutable_waypoint()->set_hbone_mtls_port(15008);
    CHECK(xds::convert_workload(bad, &w) == "waypoint has neither an address nor a hostname");
    bad = workload();
    bad.mutable_network_gateway()->mutable_address()->set_address(raw({1, 2, 3}));
    CHECK(xds::convert_workload(bad, &w) == "network_gateway address is 3 bytes; an IP address is 4 or 16");
}

TEST_CASE("xds: resources without a name are refused for that, in words") {
    Workload w;
    auto bad = workload();
    bad.clear_uid();
    bad.set_name("nameless");
    CHECK(xds::convert_workload(bad, &w) == "workload 'default/nameless' has an empty uid");
    istio::workload::Service s;
    s.set_name("echo");
    s.set_namespace_("default");
    Service out;
    CHECK(xds::convert_service(s, &out) == "service 'default/' has an empty hostname");
    istio::security::Authorization p;
    p.set_namespace_("default");
    CHECK(xds::validate_authorization(p) == "authorization policy in namespace 'default' has an empty name");
}
