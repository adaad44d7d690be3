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

// The bytes istiod sends, written by hand from the upstream proto (not produced by our generated
// code): Match { service_accounts (11) = ServiceAccountMatch { namespace (1) = "ns", service_account
// (2) = "sa" }, principals (3) = StringMatch { presence (4) = Empty {} } }.
TEST_CASE("xds: ServiceAccountMatch and StringMatch.presence decode as istiod writes them") {
    // Authorization { name (1) = "p", namespace (2) = "d", rules (5) = Rule { clauses (1) =
    //   Clause { matches (2) = Match {...} } } }
    const std::string match = raw({0x5a, 0x08, 0x0a, 0x02, 'n', 's', 0x12, 0x02, 's', 'a',  // field 11
                                   0x1a, 0x02, 0x22, 0x00});                                // field 3
    std::string clause = raw({0x12, static_cast<uint8_t>(match.size())}) + match;
    std::string rule = raw({0x0a, static_cast<uint8_t>(clause.size())}) + clause;
    std::string wire =
        raw({0x0a, 0x01, 'p', 0x12, 0x01, 'd', 0x2a, static_cast<uint8_t>(rule.size())}) + rule;
    istio::security::Authorization p;
    REQUIRE(p.ParseFromString(wire));
    AuthzPolicy out;
    REQUIRE(xds::convert_authorization(p, &out) == "");
    REQUIRE(out.rules.size() == 1);
    REQUIRE(out.rules[0].clauses.size() == 1);
    REQUIRE(out.rules[0].clauses[0].matches.size() == 1);
    const AuthzMatch& m = out.rules[0].clauses[0].matches[0];
    CHECK(m.service_accounts == std::vector<ServiceAccountMatch>{{"ns", "sa"}});
    REQUIRE(m.principals.size() == 1);
    CHECK(m.principals[0].kind == StringMatch::Kind::kPresence);
    CHECK(out.key() == "d/p");
}

TEST_CASE("xds: an authorization policy converts field by field into the model") {
    istio::security::Authorization p;
    p.set_name("allow-sleep");
    p.set_namespace_("default");
    p.set_scope(istio::security::WORKLOAD_SELECTOR);
    p.set_action(istio::security::ALLOW);
    p.set_dry_run(true);
    p.add_rules();  // a rule without clauses
    auto* m = p.add_rules()->add_clauses()->add_matches();
    m->add_namespaces()->set_exact("default");
    m->add_not_namespaces()->set_prefix("kube-");
    m->add_principals()->set_suffix("/sa/sleep");
    m->add_not_principals()->mutable_presence();
    auto* sa = m->add_not_service_accounts();
    sa->set_namespace_("foo");
    sa->set_service_account("bar");
    auto* a = m->add_source_ips();
    a->set_address(raw({10, 0, 0, 0}));
    a->set_length(8);
    a = m->add_not_destination_ips();
    a->set_address(raw({0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}));
    a->set_length(128);
    m->add_destination_ports(8080);
    m->add_not_destination_ports(9090);
    AuthzPolicy out;
    REQUIRE(xds::convert_authorization(p, &out) == "");
    CHECK(out.name == "allow-sleep");
    CHECK(out.namespace_ == "default");
    CHECK(out.scope == AuthzScope::kWorkloadSelector);
    CHECK(out.action == AuthzAction::kAllow);
    CHECK(out.dry_run);
    REQUIRE(out.rules.size() == 2);
    CHECK(out.rules[0].clauses.empty());
    const AuthzMatch& g = out.rules[1].clauses.at(0).matches.at(0);
    CHECK(g.namespaces == std::vector<StringMatch>{{StringMatch::Kind::kExact, "default"}});
    CHECK(g.not_namespaces == std::vector<StringMatch>{{StringMatch::Kind::kPrefix, "kube-"}});
    CHECK(g.principals == std::vector<StringMatch>{{StringMatch::Kind::kSuffix, "/sa/sleep"}});
    CHECK(g.not_principals == std::vector<StringMatch>{{StringMatch::Kind::kPresence, ""}});
    CHECK(g.not_service_accounts == std::vector<ServiceAccountMatch>{{"foo", "bar"}});
    CHECK(g.source_ips == std::vector<Cidr>{{*IpAddr::parse("10.0.0.0"), 8}});
    CHECK(g.not_destination_ips == std::vector<Cidr>{{*IpAddr::parse("fd00::1"), 128}});
    CHECK(g.destination_ports == std::vector<uint16_t>{8080});
    CHECK(g.not_destination_ports == std::vector<uint16_t>{9090});

    // Strict: what ztunnel would silently drop from a match refuses the policy.
    m->add_principals();  // a StringMatch of no kind
    CHECK(xds::convert_authorization(p, &out).find("principals: a string match with none of") == 0);
    m->mutable_principals()->RemoveLast();
    m->add_not_source_ips()->set_address(raw({1, 2, 3}));
    CHECK(xds::convert_authorization(p, &out) == "not_source_ips: address of 3 bytes");
    m->mutable_not_source_ips()->RemoveLast();
    CHECK(xds::convert_authorization(p, &out) == "");
}

TEST_CASE("xds: a workload's identity is converted") {
    istio::workload::Workload w;
    w.set_uid("Kubernetes//Pod/default/sleep");
    w.set_name("sleep");
    w.set_namespace_("default");
    w.set_trust_domain("example.org");
    w.set_service_account("sleep-sa");
    w.add_authorization_policies("default/p1");
    Workload out;
    REQUIRE(xds::convert_workload(w, &out) == "");
    CHECK(out.trust_domain == "example.org");
    CHECK(out.service_account == "sleep-sa");
    CHECK(out.authorization_policies == std::vector<std::string>{"default/p1"});
}

TEST_CASE("xds: an IPv4-mapped CIDR is an IPv4 one, its prefix counted in the last 32 bits") {
    istio::security::Authorization p;
    p.set_name("mapped");
    p.set_namespace_("default");
    auto* a = p.add_rules()->add_clauses()->add_matches()->add_source_ips();
    a->set_address(raw({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 0, 0}));
    a->set_length(112);
    AuthzPolicy out;
    REQUIRE(xds::convert_authorization(p, &out) == "");
    CHECK(out.rules[0].clauses[0].matches[0].source_ips ==
          std::vector<Cidr>{{*IpAddr::parse("10.1.0.0"), 16}});
    a->set_length(64);
    CHECK(xds::convert_authorization(p, &out) ==
          "source_ips: IPv4-mapped address 10.1.0.0 with prefix length 64 (below 96)");
}

TEST_CASE("xds: the names telemetry labels a workload with are converted") {
    istio::workload::Workload w;
    w.set_uid("Kubernetes//Pod/default/sleep-7656cf8794-9v2gv");
    w.set_name("sleep-7656cf8794-9v2gv");
    w.set_namespace_("default");
    w.set_workload_name("sleep");
    w.set_canonical_name("sleep-app");
    w.set_canonical_revision("v1");
    w.set_cluster_id("east");
    Workload out;
    REQUIRE(xds::convert_workload(w, &out) == "");
    CHECK(out.naming->workload_name == "sleep");
    CHECK(out.naming->canonical_name == "sleep-app");
    CHECK(out.naming->canonical_revision == "v1");
    CHECK(out.placement->cluster_id == "east");
    // Replicas share one interned object.
    Workload other;
    w.set_uid("Kubernetes//Pod/default/sleep-7656cf8794-x");
    REQUIRE(xds::convert_workload(w, &other) == "");
    CHECK(other.naming == out.naming);
}
