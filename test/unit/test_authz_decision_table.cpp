// Replays test/authz/decision_table.json (hand-written verdicts from Istio's semantics) through the
// reference evaluator. Each case's config goes through the standalone file parser, so the table's
// policy shape is the file source's.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <fstream>
#include <sstream>

#include "agent/src/policy/evaluate.hpp"
#include "agent/src/sources/file/config_file.hpp"

using namespace kmesh;

namespace {

rapidjson::Document load_table() {
    std::ifstream in(KMESH_TEST_DATA_DIR "/authz/decision_table.json");
    REQUIRE(in.good());
    std::stringstream ss;
    ss << in.rdbuf();
    rapidjson::Document d;
    d.Parse(ss.str().c_str());
    REQUIRE_FALSE(d.HasParseError());
    return d;
}

std::string json_of(const rapidjson::Value& v) {
    rapidjson::StringBuffer b;
    rapidjson::Writer<rapidjson::StringBuffer> w(b);
    v.Accept(w);
    return b.GetString();
}

// The case's model: the table's workloads (the case's replace those of the same uid), its policies.
Model case_model(const rapidjson::Document& table, const rapidjson::Value& c) {
    std::map<std::string, std::string> workloads;  // uid -> JSON
    for (const auto& w : table["workloads"].GetArray()) workloads[w["uid"].GetString()] = json_of(w);
    if (c.HasMember("workloads"))
        for (const auto& w : c["workloads"].GetArray()) workloads[w["uid"].GetString()] = json_of(w);
    std::string doc = "{\"workloads\": [";
    bool first = true;
    for (const auto& [uid, j] : workloads) {
        doc += (first ? "" : ",") + j;
        first = false;
    }
    doc += "], \"policies\": " + json_of(c["policies"]) + "}";
    auto parsed = parse_config_yaml(doc);
    if (auto* e = std::get_if<ConfigError>(&parsed)) FAIL(c["name"].GetString(), ": ", e->summary());
    return std::get<Model>(parsed);
}

}  // namespace

TEST_CASE("authz decision table: every hand-written verdict, through the reference evaluator") {
    rapidjson::Document table = load_table();
    CHECK(std::string(table["format"].GetString()) == "kmesh-authz-decision-table/1");
    size_t checks = 0;
    for (const auto& c : table["cases"].GetArray()) {
        const std::string name = c["name"].GetString();
        Model m = case_model(table, c);
        CHECK_MESSAGE(m.policies.size() == c["policies"].GetArray().Size(), name);
        for (const auto& ck : c["checks"].GetArray()) {
            auto src = IpAddr::parse(ck["src"].GetString());
            auto dst = IpAddr::parse(ck["dst"].GetString());
            REQUIRE(src);
            REQUIRE(dst);
            policy::Connection conn{*src, *dst, static_cast<uint16_t>(ck["port"].GetUint())};
            const Workload* target = policy::workload_at(m, conn.dst);
            std::string where = fmt::format("case {}: {} -> {}:{}", name, ck["src"].GetString(),
                                            ck["dst"].GetString(), conn.dst_port);
            REQUIRE_MESSAGE(target != nullptr, where);
            policy::Decision d = policy::decide(m, *target, conn);
            std::string want_verdict = ck["verdict"].GetString();
            std::string want_policy = ck["policy"].IsNull() ? "" : ck["policy"].GetString();
            std::vector<std::string> want_dry;
            if (ck.HasMember("dry_run"))
                for (const auto& k : ck["dry_run"].GetArray()) want_dry.push_back(k.GetString());
            CHECK_MESSAGE((d.allow ? "allow" : "deny") == want_verdict, where, " (", d.reason, ")");
            CHECK_MESSAGE(d.policy == want_policy, where, " (", d.reason, ")");
            CHECK_MESSAGE(d.dry_run == want_dry, where);
            checks++;
        }
    }
    // The table is not silently shorter than it was written.
    CHECK(checks >= 150);
}

TEST_CASE("authz evaluator: CIDR containment by family and prefix") {
    auto cidr = [](const char* a, uint8_t len) { return Cidr{*IpAddr::parse(a), len}; };
    auto ip = [](const char* a) { return *IpAddr::parse(a); };
    CHECK(policy::cidr_contains(cidr("10.1.2.0", 23), ip("10.1.3.255")));
    CHECK_FALSE(policy::cidr_contains(cidr("10.1.2.0", 24), ip("10.1.3.0")));
    CHECK(policy::cidr_contains(cidr("0.0.0.0", 0), ip("192.168.1.1")));
    CHECK_FALSE(policy::cidr_contains(cidr("::", 0), ip("192.168.1.1")));  // family differs
    CHECK(policy::cidr_contains(cidr("fd00::", 7), ip("fcff::1")));
    CHECK_FALSE(policy::cidr_contains(cidr("fd00::", 8), ip("fcff::1")));
    CHECK(policy::cidr_contains(cidr("10.0.0.1", 32), ip("::ffff:10.0.0.1")));
}
