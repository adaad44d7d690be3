#include <doctest/doctest.h>

#include "agent/src/sources/file/config_file.hpp"

using namespace kmesh;

namespace {

const char* kGood = R"(
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: ["10.96.0.10", {network: "", address: "fd00:10:96::10"}]
  ports:
  - {service_port: 80, target_port: 8080}
  - {servicePort: 443}
workloads:
- uid: Kubernetes//Pod/default/echo-1
  name: echo-1
  namespace: default
  addresses: ["10.244.0.11", "fd00:10:244::11"]
  services:
    default/echo.default.svc.cluster.local:
      ports: [{service_port: 80, target_port: 8080}]
  status: HEALTHY
  node: node-1
- uid: Kubernetes//Pod/default/echo-2
  addresses: ["10.244.0.12"]
  services: {default/echo.default.svc.cluster.local: }
  status: UNHEALTHY
)";

std::string problems(const std::string& yaml) {
    auto r = parse_config_yaml(yaml);
    if (auto* e = std::get_if<ConfigError>(&r)) return e->summary();
    return "";
}

}  // namespace

TEST_CASE("a config in the workload API shape parses") {
    auto r = parse_config_yaml(kGood);
    REQUIRE(std::holds_alternative<Model>(r));
    const Model& m = std::get<Model>(r);
    REQUIRE(m.services.size() == 1);
    const Service& s = m.services.at("default/echo.default.svc.cluster.local");
    REQUIRE(s.addresses.size() == 2);
    CHECK(s.addresses[0].str() == "10.96.0.10");
    CHECK(s.addresses[1].str() == "fd00:10:96::10");
    REQUIRE(s.ports.size() == 2);
    CHECK(s.ports[1].service_port == 443);
    CHECK(s.ports[1].target_port == 443);  // omitted: the service port, as in Kubernetes
    REQUIRE(m.workloads.size() == 2);
    const Workload& w2 = m.workloads.at("Kubernetes//Pod/default/echo-2");
    CHECK(w2.status == WorkloadStatus::kUnhealthy);
    CHECK(w2.services.count("default/echo.default.svc.cluster.local") == 1);
}

TEST_CASE("an empty mesh must be explicit; an empty file is refused") {
    auto r = parse_config_yaml("services: []\n");
    REQUIRE(std::holds_alternative<Model>(r));
    CHECK(std::get<Model>(r).services.empty());
    CHECK(problems("").find("the config is empty") != std::string::npos);
    CHECK(problems("# truncated\n").find("the config is empty") != std::string::npos);
}

TEST_CASE("bad configs are rejected with the field and line") {
    CHECK(problems("services:\n- hostname: a\n  namespace: x\n  colour: red\n")
              .find("unknown field 'colour'") != std::string::npos);
    CHECK(problems("services:\n- hostname: a\n  namespace: x\n  addresses: [10.96.0.300]\n")
              .find("'10.96.0.300' is not an IP address") != std::string::npos);
    CHECK(problems("services:\n- hostname: a\n  namespace: x\n  addresses: [10.96.0.1]\n  ports: "
                   "[{service_port: 70000}]\n")
              .find("not a valid port") != std::string::npos);
    CHECK(problems("services:\n- namespace: x\n").find("service 'x/' has an empty hostname") !=
          std::string::npos);
    CHECK(problems("workloads:\n- name: x\n").find("workload '/x' has an empty uid") != std::string::npos);
    CHECK(
        problems("workloads:\n- uid: x\n  status: SLEEPY\n").find("status has the unknown value 'SLEEPY'") !=
        std::string::npos);
    CHECK(problems("services: [").find("YAML syntax error") != std::string::npos);
    CHECK(problems("services:\n- hostname: a\n  namespace: x\n  colour: red\n").find("line 4") !=
          std::string::npos);
}

TEST_CASE("duplicate VIPs, services and workloads are rejected") {
    std::string two = R"(
services:
- {hostname: a, namespace: x, addresses: [10.96.0.1]}
- {hostname: b, namespace: x, addresses: [10.96.0.1]}
)";
    CHECK(problems(two).find("share the VIP 10.96.0.1") != std::string::npos);
    CHECK(problems("services:\n- {hostname: a, namespace: x}\n- {hostname: a, namespace: x}\n")
              .find("duplicate service 'x/a'") != std::string::npos);
    CHECK(problems("workloads:\n- {uid: u}\n- {uid: u}\n").find("duplicate workload uid 'u'") !=
          std::string::npos);
}

TEST_CASE("per-workload target ports are honoured, as the README says and istiod sends them") {
    std::string yaml = R"(
services:
- {hostname: a, namespace: x, addresses: [10.96.0.1], ports: [{service_port: 80, target_port: 8080}]}
workloads:
- {uid: u, addresses: [10.0.0.1], services: {x/a: {ports: [{service_port: 80, target_port: 9090}]}}}
)";
    auto r = parse_config_yaml(yaml);
    REQUIRE(std::holds_alternative<Model>(r));
    CHECK(std::get<Model>(r).workloads.at("u").services.at("x/a") == std::vector<ServicePort>{{80, 9090}});
}

TEST_CASE("the file accepts what istiod may send: any VIP, a port twice, PASSTHROUGH") {
    std::string yaml = R"(
services:
- hostname: a
  namespace: x
  addresses: [127.0.0.1, 0.0.0.0, "::1", 224.0.0.1]
  ports: [{service_port: 53, target_port: 53}, {service_port: 53, target_port: 53}]
  load_balancing: {mode: PASSTHROUGH, routing_preference: [REGION, NODE], health_policy: ALLOW_ALL}
)";
    auto r = parse_config_yaml(yaml);
    REQUIRE(std::holds_alternative<Model>(r));
    const Service& s = std::get<Model>(r).services.at("x/a");
    CHECK(s.addresses.size() == 4);
    REQUIRE(s.load_balancing);
    CHECK(s.load_balancing->mode == LbMode::kPassthrough);
    CHECK(s.load_balancing->allow_unhealthy);
    CHECK(s.load_balancing->routing_preference == std::vector<LbScope>{LbScope::kRegion, LbScope::kNode});
    CHECK(problems("services:\n- {hostname: a, namespace: x, load_balancing: {mode: SOMETIMES}}\n")
              .find("load_balancing.mode has the unknown value 'SOMETIMES'") != std::string::npos);
}

TEST_CASE("config file: authorization policies and workload identities") {
    const char* yaml = R"(
workloads:
- uid: Kubernetes//Pod/default/server
  namespace: default
  addresses: ["10.244.0.10"]
  trust_domain: example.org
  service_account: server
  authorization_policies: [default/only-sleep]
policies:
- name: only-sleep
  namespace: default
  scope: WORKLOAD_SELECTOR
  action: ALLOW
  dry_run: true
  rules:
  - clauses:
    - matches:
      - namespaces: [{exact: default}]
        not_principals: [{presence: true}]
        service_accounts: [{namespace: default, service_account: sleep}]
        source_ips: ["10.244.0.0/24", "fd00::1", "::ffff:10.1.0.0/112"]
        not_destination_ips: ["fd00:10:244::/64"]
        destination_ports: [8080]
        not_destination_ports: [9090]
      - principals: [{prefix: cluster.local/}, {suffix: /sa/sleep}]
  - {}
- name: deny-nothing
  namespace: other
  action: DENY
)";
    auto r = parse_config_yaml(yaml);
    REQUIRE_MESSAGE(std::holds_alternative<Model>(r), problems(yaml));
    const Model& m = std::get<Model>(r);
    const Workload& w = m.workloads.at("Kubernetes//Pod/default/server");
    CHECK(w.trust_domain == "example.org");
    CHECK(w.service_account == "server");
    CHECK(w.authorization_policies == std::vector<std::string>{"default/only-sleep"});
    REQUIRE(m.policies.size() == 2);
    const AuthzPolicy& p = m.policies.at("default/only-sleep");
    CHECK(p.scope == AuthzScope::kWorkloadSelector);
    CHECK(p.action == AuthzAction::kAllow);
    CHECK(p.dry_run);
    REQUIRE(p.rules.size() == 2);
    CHECK(p.rules[1].clauses.empty());
    const auto& groups = p.rules[0].clauses.at(0).matches;
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].namespaces == std::vector<StringMatch>{{StringMatch::Kind::kExact, "default"}});
    CHECK(groups[0].not_principals == std::vector<StringMatch>{{StringMatch::Kind::kPresence, ""}});
    CHECK(groups[0].service_accounts == std::vector<ServiceAccountMatch>{{"default", "sleep"}});
    // No length: one host; IPv4-mapped: IPv4 with the prefix counted in its last 32 bits.
    CHECK(groups[0].source_ips == std::vector<Cidr>{{*IpAddr::parse("10.244.0.0"), 24},
                                                    {*IpAddr::parse("fd00::1"), 128},
                                                    {*IpAddr::parse("10.1.0.0"), 16}});
    CHECK(groups[0].not_destination_ips == std::vector<Cidr>{{*IpAddr::parse("fd00:10:244::"), 64}});
    CHECK(groups[0].destination_ports == std::vector<uint16_t>{8080});
    CHECK(groups[0].not_destination_ports == std::vector<uint16_t>{9090});
    CHECK(groups[1].principals == std::vector<StringMatch>{{StringMatch::Kind::kPrefix, "cluster.local/"},
                                                           {StringMatch::Kind::kSuffix, "/sa/sleep"}});
    const AuthzPolicy& d = m.policies.at("other/deny-nothing");
    CHECK(d.scope == AuthzScope::kGlobal);  // the proto's default
    CHECK(d.action == AuthzAction::kDeny);
    CHECK(d.rules.empty());
}

TEST_CASE("config file: a bad policy field is named by its path") {
    auto pol = [](const std::string& match) {
        return "policies:\n- name: p\n  namespace: d\n  rules: [{clauses: [{matches: [" + match + "]}]}]\n";
    };
    CHECK(problems(pol("{source_ips: [10.0.0.0/33]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0].source_ips[0] (line 4): '10.0.0.0/33': prefix "
          "length 33 longer than the address");
    CHECK(problems(pol("{not_destination_ips: [10.0.0.300]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0].not_destination_ips[0] (line 4): '10.0.0.300' "
          "is not "
          "an address or CIDR");
    CHECK(problems(pol("{destination_ports: [70000]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0].destination_ports[0] (line 4): '70000' is not a "
          "valid port");
    CHECK(problems(pol("{namespaces: [{exact: a, prefix: b}]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0].namespaces[0] (line 4): a string match takes "
          "exactly one of exact, prefix, suffix, presence");
    CHECK(problems(pol("{principals: [{regex: a}]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0].principals[0] (line 4): unknown field 'regex'; "
          "config.policies[0].rules[0].clauses[0].matches[0].principals[0] (line 4): a string match takes "
          "exactly one of exact, prefix, suffix, presence");
    CHECK(problems(pol("{service_accounts: [{namespace: a}]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0].service_accounts[0] (line 4): namespace and "
          "service_account are both required");
    CHECK(problems(pol("{ports: [80]}")) ==
          "config.policies[0].rules[0].clauses[0].matches[0] (line 4): unknown field 'ports'");
    CHECK(problems("policies:\n- name: p\n  action: MAYBE\n") ==
          "config.policies[0].action (line 3): action has the unknown value 'MAYBE' (ALLOW, DENY)");
    CHECK(problems("policies:\n- name: p\n  dry_run: yes please\n") ==
          "config.policies[0].dry_run (line 3): 'yes please' is not true or false");
    CHECK(problems("policies:\n- namespace: d\n") == "config.policies[0] (line 2): name is required");
    CHECK(problems("policies:\n- {name: p, namespace: d}\n- {name: p, namespace: d}\n") ==
          "config.policies[1] (line 3): duplicate policy 'd/p'");
    CHECK(problems("workloads:\n- uid: x\n  authorization_policies: d/p\n") ==
          "config.workloads[0].authorization_policies (line 3): expected a list of strings");
}

TEST_CASE("config file: waypoints of services and workloads, as GatewayAddress") {
    const char* yaml = R"(
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  addresses: ["10.96.0.10"]
  waypoint: {hostname: {namespace: istio-system, hostname: wp.istio-system.svc.cluster.local}, hbone_mtls_port: 15008}
workloads:
- uid: w1
  addresses: ["10.244.0.11"]
  waypoint: {address: "fd00::5", hbone_mtls_port: 15019}
- uid: w2
  addresses: ["10.244.0.12"]
  waypoint: {address: {network: "", address: "10.244.0.5"}}
)";
    auto r = parse_config_yaml(yaml);
    REQUIRE_MESSAGE(std::holds_alternative<Model>(r), problems(yaml));
    const Model& m = std::get<Model>(r);
    const auto& swp = m.services.at("default/echo.default.svc.cluster.local").waypoint;
    REQUIRE(swp);
    CHECK(swp->hostname == "istio-system/wp.istio-system.svc.cluster.local");
    CHECK_FALSE(swp->address);
    CHECK(swp->port == 15008);
    const Waypoint* w1 = m.workloads.at("w1").waypoint;
    REQUIRE(w1);
    CHECK(w1->address == IpAddr::parse("fd00::5"));
    CHECK(w1->port == 15019);
    REQUIRE(m.workloads.at("w2").waypoint);
    CHECK(m.workloads.at("w2").waypoint->address == IpAddr::parse("10.244.0.5"));
    CHECK(problems("workloads:\n- uid: w\n  waypoint: {hbone_mtls_port: 1}\n") ==
          "config.workloads[0].waypoint (line 3): a waypoint has exactly one of address, hostname");
    CHECK(problems("workloads:\n- uid: w\n  waypoint: {hostname: {namespace: a}}\n") ==
          "config.workloads[0].waypoint.hostname (line 3): namespace and hostname are both required");
}

TEST_CASE("config file: telemetry names of a workload (snake_case or lowerCamelCase)") {
    auto r = parse_config_yaml(R"(
services: []
workloads:
- uid: Kubernetes//Pod/default/sleep-1
  name: sleep-1
  namespace: default
  addresses: ["10.244.0.5"]
  workload_name: sleep
  canonicalName: sleep-app
  canonical_revision: v1
  clusterId: east
  node: node-1
- uid: Kubernetes//Pod/default/sleep-2
  addresses: ["10.244.0.6"]
)");
    REQUIRE(std::holds_alternative<Model>(r));
    const Model& m = std::get<Model>(r);
    const Workload& w = m.workloads.at("Kubernetes//Pod/default/sleep-1");
    CHECK(w.naming->workload_name == "sleep");
    CHECK(w.naming->canonical_name == "sleep-app");
    CHECK(w.naming->canonical_revision == "v1");
    CHECK(w.placement->cluster_id == "east");
    CHECK(w.placement->node == "node-1");  // both from the one placement
    const Workload& bare = m.workloads.at("Kubernetes//Pod/default/sleep-2");
    CHECK(bare.naming->workload_name.empty());
    CHECK(bare.placement->cluster_id.empty());
    CHECK(problems("workloads:\n- uid: a\n  addresses: [\"10.0.0.1\"]\n  canonical_name: [x]\n")
              .find("canonical_name") != std::string::npos);
}
