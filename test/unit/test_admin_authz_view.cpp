// The authorization part of the config dump: policies in words with the hit counts the authz
// writer's HitsReader reports (the admin server never reads BPF maps itself).
#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include "agent/src/admin/authz_view.hpp"
#include "agent/src/sources/file/config_file.hpp"

using namespace kmesh;

namespace {

Model model() {
    auto r = parse_config_yaml(R"(
policies:
- name: deny-foo
  namespace: default
  scope: NAMESPACE
  action: DENY
  rules:
  - clauses:
    - matches:
      - {namespaces: [{exact: foo}], not_destination_ports: [22]}
      - {source_ips: ["10.0.0.0/8"], not_principals: [{presence: true}]}
    - matches: [{principals: [{suffix: /sa/sleep}, {prefix: cluster.local/}]}]
  - {}
- {name: allow-nothing, namespace: default, dry_run: true}
- {name: sa, namespace: x, rules: [{clauses: [{matches: [{}, {not_service_accounts: [{namespace: a, service_account: b}]}]}]}]}
)");
    REQUIRE(std::holds_alternative<Model>(r));
    return std::get<Model>(r);
}

rapidjson::Document render(const Model& m, const policy::AuthzReport& report) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    admin::write_authz_policies(w, m, report);
    w.EndObject();
    rapidjson::Document d;
    d.Parse(buf.GetString());
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

}  // namespace

TEST_CASE("admin: policies in words, with the hit counts the reader reports") {
    policy::AuthzReport report;
    report.policies["default/deny-foo"] = {7, 0, 2};
    report.policies["default/allow-nothing"] = {0, 5, 0};
    report.policies["gone/old"] = {1, 1, 1};  // a policy the model no longer has: not shown
    report.totals = {100, 7, 3, 2, 50};
    auto d = render(model(), report);
    const auto& p = d["policies"];
    REQUIRE(p.Size() == 3);
    // By key: default/allow-nothing, default/deny-foo, x/sa.
    CHECK(std::string(p[0]["name"].GetString()) == "allow-nothing");
    CHECK(p[0]["dry_run"].GetBool());
    CHECK(std::string(p[0]["scope"].GetString()) == "GLOBAL");
    CHECK(std::string(p[0]["action"].GetString()) == "ALLOW");
    CHECK(p[0]["rules"].Size() == 0);
    CHECK(p[0]["hits"]["dry_run_matched"].GetUint64() == 5);
    CHECK(std::string(p[1]["name"].GetString()) == "deny-foo");
    CHECK(std::string(p[1]["action"].GetString()) == "DENY");
    CHECK(std::string(p[1]["scope"].GetString()) == "NAMESPACE");
    CHECK(p[1]["hits"]["matched"].GetUint64() == 7);
    CHECK(p[1]["hits"]["closed"].GetUint64() == 2);
    REQUIRE(p[1]["rules"].Size() == 2);
    CHECK(std::string(p[1]["rules"][0].GetString()) ==
          "(namespace in [\"foo\"] and port not in [22] OR principal not in [present] and source ip in "
          "[10.0.0.0/8]) AND (principal in [\"*/sa/sleep\", \"cluster.local/*\"])");
    CHECK(std::string(p[1]["rules"][1].GetString()) == "any connection");
    CHECK(std::string(p[2]["rules"][0].GetString()) ==
          "((empty group: skipped) OR service account not in [a/b])");
    CHECK(p[2]["hits"]["matched"].GetUint64() == 0);  // the report does not name it
    CHECK(d["authz_totals"]["allowed"].GetUint64() == 100);
    CHECK(d["authz_totals"]["denied_by_policy"].GetUint64() == 7);
    CHECK(d["authz_totals"]["denied_no_allow"].GetUint64() == 3);
    CHECK(d["authz_totals"]["closed_existing"].GetUint64() == 2);
    CHECK(d["authz_totals"]["cache_hits"].GetUint64() == 50);
}

TEST_CASE("admin: without a reader every count is zero") {
    auto d = render(model(), {});
    for (const auto& p : d["policies"].GetArray()) {
        CHECK(p["hits"]["matched"].GetUint64() == 0);
        CHECK(p["hits"]["dry_run_matched"].GetUint64() == 0);
        CHECK(p["hits"]["closed"].GetUint64() == 0);
    }
    CHECK(d["authz_totals"]["allowed"].GetUint64() == 0);
}
