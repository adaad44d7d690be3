#include <doctest/doctest.h>

#include "agent/src/config_file.hpp"

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
    CHECK(s.ports[1].target_port == 0);
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
    CHECK(problems("services:\n- namespace: x\n").find("hostname is required") != std::string::npos);
    CHECK(problems("workloads:\n- name: x\n").find("uid is required") != std::string::npos);
    CHECK(problems("workloads:\n- uid: x\n  status: SLEEPY\n").find("unknown status") != std::string::npos);
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

TEST_CASE("a per-workload target port that differs from the service's is refused, not ignored") {
    std::string yaml = R"(
services:
- {hostname: a, namespace: x, addresses: [10.96.0.1], ports: [{service_port: 80, target_port: 8080}]}
workloads:
- {uid: u, addresses: [10.0.0.1], services: {x/a: {ports: [{service_port: 80, target_port: 9090}]}}}
)";
    CHECK(problems(yaml).find("per-workload target ports are not supported yet") != std::string::npos);
}
